"""Hierarchical classification metrics, functional and as torchmetrics ``Metric`` classes.

All functions take **per-level sequences, finest first**: ``preds[l]`` is either a
(N,) integer tensor of predicted class ids or a (N, C_l) float tensor of logits
(or probabilities; the argmax is taken), ``targets[l]`` a (N,) integer tensor.

* :func:`level_accuracy`: top-k accuracy of every level.
* :func:`full_path_accuracy` (FPA): share of samples with *every* level right
  (H-CAST, ``deit/engine_hier_eval.py`` of github:ngocquanai/HiOT b1a222b).
* :func:`tree_inconsistency_error` (TICE): share of predicted paths that do not
  exist in the taxonomy (same source; the authors count the argmax paths that are
  not in their ``trees`` list).
* :func:`mistake_severity`: mean lowest-common-ancestor height between the top-1
  fine prediction and the target over the *mistakes* only, and
  :func:`average_hierarchical_distance`: mean LCA height of the top-k fine
  predictions over all samples ("avg. hier. distance @k"); both as in
  "Making Better Mistakes" (Bertinetto et al., CVPR 2020,
  github:fiveai/making-better-mistakes ``run_xent.py``).
* :func:`hierarchical_precision_recall_f1`: set-based hierarchical precision,
  recall and F1 (Kiritchenko et al., 2005), micro-averaged over samples.

The functional metrics return 0-d float64 tensors on the inputs' device (no host
sync per call; ``float(x)`` or ``x.item()`` when a Python number is needed).
The ``Metric`` classes (:class:`HierarchicalMetrics`, :class:`FullPathAccuracy`,
:class:`TreeInconsistencyError`, :class:`MistakeSeverity`) keep only summed
counts (``dist_reduce_fx="sum"``), so they are exact under DDP. Both forms share
one definition of every metric: per-batch ``_*_update`` helpers that return
counts and ``_*_compute`` helpers that turn summed counts into values, as
torchmetrics' functional and modular metrics do. They need
``torchmetrics`` (``pip install hcast[train]``); the functional metrics do not.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional, Union

import torch

from hcast import _validation as V
from hcast.hierarchy.taxonomy import Taxonomy

__all__ = [
    "level_accuracy",
    "full_path_accuracy",
    "tree_inconsistency_error",
    "mistake_severity",
    "average_hierarchical_distance",
    "hierarchical_precision_recall_f1",
    "HierarchicalMetrics",
    "FullPathAccuracy",
    "TreeInconsistencyError",
    "MistakeSeverity",
]

LevelTensors = Sequence[torch.Tensor]

# ---------------------------------------------------------------------------- input handling


def _labels(x: torch.Tensor, name: str, validate_args: bool = True) -> torch.Tensor:
    """(N,) int64 labels from (N,) ids or (N, C) scores (NaN scores rejected when ``validate_args``)."""
    if x.dim() == 2:
        if validate_args:
            V.check_scores(name, x)
        return x.argmax(dim=1)
    if x.dim() == 1:
        return V.check_labels(name, x).long()
    raise ValueError(f"{name} must be (N,) integer class ids or (N, C) logits, got shape {tuple(x.shape)}.")


def _check_targets(targets: list[torch.Tensor], n: int) -> list[torch.Tensor]:
    """Per-level (N,) integer targets as int64, N = ``n`` (the predictions' batch size)."""
    return [V.check_labels(f"targets[{l}]", t, n, "preds").long() for l, t in enumerate(targets)]


def _pair(
    preds: LevelTensors, targets: LevelTensors, validate_args: bool = True
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    p = V.as_levels(preds, "preds")
    t = V.as_levels(targets, "targets")
    V.check_level_count("preds", len(p), len(t), of="targets")
    labels = [_labels(x, f"preds[{l}]", validate_args) for l, x in enumerate(p)]
    n = labels[0].shape[0]
    for l, x in enumerate(labels):
        if x.shape[0] != n:
            raise ValueError(f"preds[{l}] has {x.shape[0]} samples but preds[0] has {n}.")
    return labels, _check_targets(t, n)


def _fine(x: Union[torch.Tensor, LevelTensors], name: str) -> torch.Tensor:
    """The finest level of ``x`` (a tensor is taken as the fine level itself)."""
    return x if torch.is_tensor(x) else V.as_levels(x, name)[0]


def _check_level_preds(raw: list[torch.Tensor], taxonomy: Taxonomy, validate_args: bool = True) -> None:
    """Per-level preds against the taxonomy: one per level; logits need C_l columns; ids
    (if ``validate_args``) in ``[0, C_l)``."""
    V.check_instance("taxonomy", taxonomy, Taxonomy)
    V.check_level_count("preds", len(raw), taxonomy.num_levels)
    for l, (x, c) in enumerate(zip(raw, taxonomy.num_classes)):
        if x.dim() == 2 and x.shape[1] != c:
            raise ValueError(
                f"preds[{l}] has {x.shape[1]} classes but level {l} of the taxonomy has {c}; give one (N, C_l) "
                f"tensor per level, finest first, with the taxonomy's class counts."
            )
        if x.dim() == 1 and validate_args and not x.is_floating_point():
            V.check_class_ids(f"preds[{l}]", x, c, f" at level {l} of the taxonomy")


def _check_level_targets(targets: list[torch.Tensor], taxonomy: Taxonomy) -> None:
    """ValueError naming the level and sample of the first target outside ``[0, C_l)``."""
    for l, (y, c) in enumerate(zip(targets, taxonomy.num_classes)):
        V.check_class_ids(f"targets[{l}]", y, c, f" at level {l} of the taxonomy")


def _check_fine_range(x: torch.Tensor, taxonomy: Taxonomy, name: str) -> None:
    V.check_class_ids(name, x, taxonomy.num_fine, " (the taxonomy's fine classes)")


# ---------------------------------------------------------------------------- _update / _compute helpers
# Each metric is defined once: an ``_update`` helper returns summed counts of one batch (tensors on the
# input's device, no host sync), a ``_compute`` helper turns summed counts into the value. The functional
# metrics call both on one batch; the ``Metric`` classes add the counts to their states (summed across
# processes under DDP) and call the same ``_compute`` helpers.


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den`` as float64, 0 where ``den == 0``."""
    return num.double() / den.double().clamp(min=1)


def _topk_correct(scores: torch.Tensor, target: torch.Tensor, ks: Sequence[int], name: str) -> torch.Tensor:
    """(len(ks),) int64 number of samples whose target is among the top-k."""
    if scores.dim() == 1:
        if any(k > 1 for k in ks):
            raise ValueError(f"{name} holds class ids; top-k accuracy with k > 1 needs (N, C) logits.")
        hit = (scores.long() == target).sum()
        return hit.repeat(len(ks))
    kmax = min(max(ks), scores.shape[1])
    top = scores.topk(kmax, dim=1).indices
    hits = top == target[:, None]
    return torch.stack([hits[:, : min(k, kmax)].any(dim=1).sum() for k in ks])


def _full_path_update(labels: list[torch.Tensor], targets: list[torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(number of samples right at every level, number of samples)."""
    right = torch.stack([x == y for x, y in zip(labels, targets)]).all(dim=0)
    return right.sum(), right.numel()


def _tree_inconsistency_update(labels: list[torch.Tensor], taxonomy: Taxonomy) -> tuple[torch.Tensor, int]:
    """(number of predicted paths not in the taxonomy, number of samples)."""
    valid = taxonomy.valid_paths_mask(labels)
    return (~valid).sum(), valid.numel()


def _lca_heights(a: torch.Tensor, b: torch.Tensor, paths: torch.Tensor) -> torch.Tensor:
    """LCA height for fine ids ``a`` (..., ) vs ``b`` (broadcastable), via the (F, L) paths; 0 where equal."""
    eq = paths[a] == paths[b]  # (..., L)
    # First level where the two paths meet; num_levels (only the root shared) when none.
    ext = torch.cat([eq, torch.ones_like(eq[..., :1])], dim=-1)
    return ext.to(torch.int8).argmax(dim=-1).long()


def _mistake_severity_update(
    fine_preds: torch.Tensor, fine_targets: torch.Tensor, paths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed LCA height over the mistakes, number of mistakes); a right prediction has height 0."""
    return _lca_heights(fine_preds, fine_targets, paths).sum(), (fine_preds != fine_targets).sum()


def _top_fine(fine: torch.Tensor, k: int, name: str) -> torch.Tensor:
    """(N, k') int64 top-k fine ids (``k' = min(k, C_0)``) from (N, C_0) logits, or (N, 1) from (N,) ids."""
    if fine.dim() == 1:
        if k != 1:
            raise ValueError(f"{name} holds class ids; average_hierarchical_distance with k > 1 needs (N, C) logits.")
        return fine.long()[:, None]
    return fine.topk(min(k, fine.shape[1]), dim=1).indices


def _hierarchical_distance_update(top: torch.Tensor, fine_targets: torch.Tensor, paths: torch.Tensor) -> torch.Tensor:
    """float64 sum over samples of the mean LCA height of the (N, k) top fine ids to the target."""
    return _lca_heights(top, fine_targets[:, None], paths).double().mean(dim=1).sum()


def _hierarchical_set_counts(preds: list[torch.Tensor], targets: list[torch.Tensor], taxonomy: Taxonomy) -> torch.Tensor:
    """(3,) int64: |P & T|, |P|, |T| summed over samples, for the upward closures P, T of the given ids."""
    device = preds[0].device
    parent_maps = [taxonomy.parent_map(l).to(device) for l in range(taxonomy.num_levels - 1)]

    def closure(ids: list[torch.Tensor]) -> list[torch.Tensor]:
        # per level m: (N, m + 1) ids = the level-m ancestors of ids[0..m]
        per_level: list[list[torch.Tensor]] = [[] for _ in ids]
        for l, x in enumerate(ids):
            a = x.clamp(0, taxonomy.num_classes[l] - 1)
            per_level[l].append(a)
            for m in range(l + 1, len(ids)):
                a = parent_maps[m - 1][a]
                per_level[m].append(a)
        return [torch.stack(v, dim=1) for v in per_level]

    pc, tc = closure(preds), closure(targets)
    inter = torch.zeros((), dtype=torch.int64, device=device)
    n_p = torch.zeros((), dtype=torch.int64, device=device)
    n_t = torch.zeros((), dtype=torch.int64, device=device)
    for p, t in zip(pc, tc):
        ps = p.sort(dim=1).values
        ts = t.sort(dim=1).values
        p_first = torch.ones_like(ps, dtype=torch.bool)
        p_first[:, 1:] = ps[:, 1:] != ps[:, :-1]
        t_first = torch.ones_like(ts, dtype=torch.bool)
        t_first[:, 1:] = ts[:, 1:] != ts[:, :-1]
        in_t = (ps[:, :, None] == ts[:, None, :]).any(dim=2)
        inter += (p_first & in_t).sum()
        n_p += p_first.sum()
        n_t += t_first.sum()
    return torch.stack([inter, n_p, n_t])


def _precision_recall_f1_compute(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(hP, hR, hF) float64 from the summed (3,) counts |P & T|, |P|, |T| (0 where undefined)."""
    inter, n_p, n_t = counts.unbind(0)
    hp = _ratio(inter, n_p)
    hr = _ratio(inter, n_t)
    hf = 2 * hp * hr / (hp + hr).clamp(min=torch.finfo(torch.float64).tiny)  # 0 when hP = hR = 0
    return hp, hr, hf


# ---------------------------------------------------------------------------- functional metrics


def level_accuracy(
    preds: LevelTensors, targets: LevelTensors, top_k: int = 1, validate_args: bool = True
) -> list[torch.Tensor]:
    """Top-k accuracy of every level, finest first.

    Args:
        preds: per-level (N, C_l) logits, or (N,) ids when ``top_k == 1``.
        targets: per-level (N,) int64 labels.
        top_k: k (clipped to C_l for levels with fewer classes).
        validate_args: check the scores for NaN (a host sync); False skips it.

    Returns:
        list of 0-d float64 tensors in [0, 1], one per level (0 for an empty batch).

    Raises:
        TypeError: ``preds`` / ``targets`` not sequences of tensors.
        ValueError: level counts or batch sizes that differ, ``top_k < 1``,
            ``top_k > 1`` with class ids, or NaN scores.
    """
    p = V.as_levels(preds, "preds")
    t = V.as_levels(targets, "targets")
    V.check_level_count("preds", len(p), len(t), of="targets")
    top_k = V.check_int("top_k", top_k, 1)
    out = []
    for l, (x, y) in enumerate(zip(p, t)):
        y = V.check_labels(f"targets[{l}]", y, x.shape[0], f"preds[{l}]").long()
        if x.dim() == 1:
            V.check_labels(f"preds[{l}]", x)
        elif validate_args:
            V.check_scores(f"preds[{l}]", x)
        correct = _topk_correct(x, y, [top_k], f"preds[{l}]")[0]
        out.append(_ratio(correct, torch.tensor(y.shape[0])))
    return out


def full_path_accuracy(preds: LevelTensors, targets: LevelTensors, validate_args: bool = True) -> torch.Tensor:
    """Full-path accuracy (FPA): share of samples whose prediction is right at every level.

    Args:
        preds: per-level (N,) ids or (N, C_l) logits (argmax per level), finest first.
        targets: per-level (N,) int64 labels, finest first.
        validate_args: check the scores for NaN (a host sync); False skips it.

    Returns:
        0-d float64 tensor in [0, 1] (0 for an empty batch).

    Raises:
        TypeError: ``preds`` / ``targets`` not sequences of tensors.
        ValueError: level counts or batch sizes that differ, NaN scores.
    """
    p, t = _pair(preds, targets, validate_args)
    correct, total = _full_path_update(p, t)
    return _ratio(correct, torch.tensor(total))


def tree_inconsistency_error(preds: LevelTensors, taxonomy: Taxonomy, validate_args: bool = True) -> torch.Tensor:
    """Tree-based inconsistency error (TICE): share of predicted paths not in the taxonomy.

    Args:
        preds: per-level (N,) ids or (N, C_l) logits (argmax per level), finest first.
        taxonomy: the class tree.
        validate_args: check ids against ``[0, C_l)`` and scores for NaN (a host
            sync); False skips both.

    Returns:
        0-d float64 tensor in [0, 1] (0 for an empty batch). Consistent decoding
        (:func:`hcast.hierarchy.decoding.consistent_decode`) gives 0.

    Raises:
        TypeError: ``preds`` not a sequence of tensors, ``taxonomy`` not a Taxonomy.
        ValueError: a level count or a level's class count that does not match the
            taxonomy, ids outside it, NaN scores.
    """
    raw = V.as_levels(preds, "preds")
    _check_level_preds(raw, taxonomy, validate_args)
    p = [_labels(x, f"preds[{l}]", validate_args) for l, x in enumerate(raw)]
    inconsistent, total = _tree_inconsistency_update(p, taxonomy)
    return _ratio(inconsistent, torch.tensor(total))


def mistake_severity(
    preds: Union[torch.Tensor, LevelTensors],
    targets: Union[torch.Tensor, LevelTensors],
    taxonomy: Taxonomy,
    validate_args: bool = True,
) -> torch.Tensor:
    """Mean LCA height between top-1 fine prediction and target over the mistakes.

    Only the finest level is used: ``preds`` / ``targets`` may be per-level
    sequences (their first entry is taken) or the fine-level tensor itself
    ((N,) ids or (N, C_0) logits). Heights are those of
    :meth:`Taxonomy.lca_height` (1 .. num_levels for a mistake). ``validate_args=False``
    skips the NaN and id-range checks (host syncs).

    Returns:
        0-d float64 tensor in [1, num_levels], or 0 when there is no mistake.

    Raises:
        TypeError: ``taxonomy`` not a Taxonomy; float ids, non-integer targets.
        ValueError: ids outside the taxonomy's fine classes, batch sizes that differ.
    """
    V.check_instance("taxonomy", taxonomy, Taxonomy)
    p = _labels(_fine(preds, "preds"), "preds", validate_args)
    t = _check_targets([_fine(targets, "targets")], p.shape[0])[0]
    if validate_args:
        _check_fine_range(p, taxonomy, "preds")
        _check_fine_range(t, taxonomy, "targets")
    height_sum, mistakes = _mistake_severity_update(p, t, taxonomy.paths().to(p.device))
    return _ratio(height_sum, mistakes)


def average_hierarchical_distance(
    logits: Union[torch.Tensor, LevelTensors],
    targets: Union[torch.Tensor, LevelTensors],
    taxonomy: Taxonomy,
    k: int = 1,
    validate_args: bool = True,
) -> torch.Tensor:
    """Average hierarchical distance @k ("Making Better Mistakes"): mean LCA height
    between the target and each of the top-k fine predictions, over all samples.

    Args:
        logits: (N, C_0) fine-level logits, or a per-level sequence (first entry
            used). (N,) ids are accepted for ``k == 1``.
        targets: (N,) fine labels, or a per-level sequence.
        k: number of top predictions per sample (``k <= C_0``).
        validate_args: check scores for NaN and ids against the taxonomy (host
            syncs); False skips them.

    Returns:
        0-d float64 tensor in [0, num_levels] (0 for an empty batch).

    Raises:
        TypeError: ``taxonomy`` not a Taxonomy, ``k`` not an int, float ids, non-integer
            targets.
        ValueError: ``k`` outside ``[1, C_0]``, ``k > 1`` with class ids, ids
            outside the taxonomy's fine classes.
    """
    V.check_instance("taxonomy", taxonomy, Taxonomy)
    x = _fine(logits, "logits")
    t = _check_targets([_fine(targets, "targets")], x.shape[0])[0]
    if x.dim() == 1:
        V.check_labels("logits", x)
    if validate_args:
        _check_fine_range(t, taxonomy, "targets")
        if x.dim() == 2:
            V.check_scores("logits", x)
    k = V.check_int("k", k, 1, x.shape[1] if x.dim() == 2 else None)
    top = _top_fine(x, k, "logits")
    if validate_args:
        _check_fine_range(top.flatten(), taxonomy, "logits")
    total = _hierarchical_distance_update(top, t, taxonomy.paths().to(t.device))
    return _ratio(total, torch.tensor(t.numel()))


def hierarchical_precision_recall_f1(
    preds: LevelTensors, targets: LevelTensors, taxonomy: Taxonomy, validate_args: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Set-based hierarchical precision, recall and F1 (Kiritchenko et al., 2005).

    Each sample's predicted set ``P`` is the union, over levels, of the predicted
    class and its ancestors (the implicit root excluded); ``T`` likewise for the
    targets. ``hP = sum|P & T| / sum|P|``, ``hR = sum|P & T| / sum|T|``,
    ``hF = 2 hP hR / (hP + hR)``, sums over samples (micro average). For a
    consistent prediction ``|P| = |T| = num_levels`` and hP = hR = hF = the share
    of correct levels; an inconsistent prediction adds nodes to ``P`` and so
    lowers hP.

    Args:
        preds: per-level (N,) ids or (N, C_l) logits, finest first.
        targets: per-level (N,) int64 labels, finest first.
        taxonomy: the class tree.
        validate_args: check ids against the taxonomy and scores for NaN (host
            syncs); False skips them.

    Returns:
        ``(hP, hR, hF)``, 0-d float64 tensors in [0, 1].

    Raises:
        TypeError: ``preds`` / ``targets`` not sequences of tensors.
        ValueError: level or class counts that differ from each other or from the
            taxonomy, ids outside it, NaN scores.
    """
    raw = V.as_levels(preds, "preds")
    _check_level_preds(raw, taxonomy, validate_args)
    p, t = _pair(raw, targets, validate_args)
    if validate_args:
        _check_level_targets(t, taxonomy)
    return _precision_recall_f1_compute(_hierarchical_set_counts(p, t, taxonomy))


# ---------------------------------------------------------------------------- torchmetrics classes

try:  # torchmetrics is an optional dependency (extra "train")
    from torchmetrics import Metric as _Metric

    _TORCHMETRICS_AVAILABLE = True
except ImportError:  # pragma: no cover - exercised only without torchmetrics
    _Metric = object
    _TORCHMETRICS_AVAILABLE = False


def _require_torchmetrics(cls_name: str) -> None:
    if not _TORCHMETRICS_AVAILABLE:
        raise ImportError(
            f"{cls_name} needs torchmetrics; install it with `pip install hcast[train]` (or `pip install "
            f"torchmetrics`). The functional metrics in hcast.hierarchy.metrics work without it."
        )


def _zeros(*shape: int) -> torch.Tensor:
    return torch.zeros(shape, dtype=torch.int64) if shape else torch.zeros((), dtype=torch.int64)


class _HierarchyMetric(_Metric):
    """What every hcast torchmetrics class starts with: torchmetrics present, the taxonomy
    checked (when the metric needs one), ``validate_args`` stored."""

    def __init__(self, taxonomy: Optional[Taxonomy], validate_args: bool, **kwargs: Any) -> None:
        _require_torchmetrics(type(self).__name__)
        super().__init__(**kwargs)
        if taxonomy is not None:
            V.check_instance("taxonomy", taxonomy, Taxonomy)
        self.taxonomy = taxonomy
        self.validate_args = bool(validate_args)


class HierarchicalMetrics(_HierarchyMetric):
    """All hierarchical metrics in one torchmetrics ``Metric`` (counts summed across processes).

    Args:
        taxonomy: the class tree.
        top_k: ks for per-level top-k accuracy and the average hierarchical
            distance @k (k > 1 needs logits in ``update``).
        validate_args: check, in ``update``, scores for NaN and ids against the
            taxonomy (host syncs, as torchmetrics' ``validate_args``); False skips them.
        **kwargs: passed to ``torchmetrics.Metric`` (e.g. ``sync_on_compute``).

    ``update(preds, targets)``: per-level sequences, finest first, of (N,) ids or
    (N, C_l) logits, and of (N,) int64 labels.

    ``compute()`` returns a dict of float tensors:
    ``"{level_name}_acc@{k}"`` for every level and k, ``"fpa"``, ``"tice"``,
    ``"mistake_severity"``, ``"hdist@{k}"``, ``"hprecision"``, ``"hrecall"``, ``"hf1"``.

    Example:
        >>> metric = HierarchicalMetrics(taxonomy, top_k=(1, 5))           # doctest: +SKIP
        >>> for images, *targets in loader:
        ...     metric.update(model(images), targets)
        >>> metric.compute()["fpa"]
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(
        self, taxonomy: Taxonomy, top_k: Sequence[int] = (1,), validate_args: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(taxonomy, validate_args, **kwargs)
        top_k = V.check_sequence("top_k", top_k, "one k >= 1 per accuracy")
        top_k = tuple(V.check_int(f"top_k[{i}]", k, 1) for i, k in enumerate(top_k))
        self.top_k = top_k
        self.register_buffer("_paths", taxonomy.paths(), persistent=False)
        L = taxonomy.num_levels
        self.add_state("total", default=_zeros(), dist_reduce_fx="sum")
        self.add_state("level_correct", default=_zeros(L, len(top_k)), dist_reduce_fx="sum")
        self.add_state("path_correct", default=_zeros(), dist_reduce_fx="sum")
        self.add_state("inconsistent", default=_zeros(), dist_reduce_fx="sum")
        self.add_state("mistakes", default=_zeros(), dist_reduce_fx="sum")
        self.add_state("mistake_height_sum", default=_zeros(), dist_reduce_fx="sum")
        self.add_state("hdist_sum", default=torch.zeros(len(top_k), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("hier_counts", default=_zeros(3), dist_reduce_fx="sum")

    def update(self, preds: LevelTensors, targets: LevelTensors) -> None:
        # Validate everything before touching the states, so a bad batch leaves them as they were.
        raw = V.as_levels(preds, "preds")
        _check_level_preds(raw, self.taxonomy, self.validate_args)
        labels, t = _pair(raw, targets, self.validate_args)
        if self.validate_args:
            _check_level_targets(t, self.taxonomy)
        for l, x in enumerate(raw):
            if x.dim() == 1 and max(self.top_k) > 1:
                raise ValueError(
                    f"preds[{l}] holds class ids; top_k={self.top_k} needs (N, C_{l}) logits (or use top_k=(1,))."
                )
        paths = self._paths.to(t[0].device)
        self.total += t[0].shape[0]
        for l, x in enumerate(raw):
            self.level_correct[l] += _topk_correct(x, t[l], self.top_k, f"preds[{l}]").to(self.level_correct.device)
        self.path_correct += _full_path_update(labels, t)[0]
        self.inconsistent += _tree_inconsistency_update(labels, self.taxonomy)[0]
        height_sum, mistakes = _mistake_severity_update(labels[0], t[0], paths)
        self.mistake_height_sum += height_sum
        self.mistakes += mistakes
        for i, k in enumerate(self.top_k):
            self.hdist_sum[i] += _hierarchical_distance_update(_top_fine(raw[0], k, "preds[0]"), t[0], paths)
        self.hier_counts += _hierarchical_set_counts(labels, t, self.taxonomy)

    def compute(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for l, name in enumerate(self.taxonomy.level_names):
            for i, k in enumerate(self.top_k):
                out[f"{name}_acc@{k}"] = _ratio(self.level_correct[l, i], self.total)
        out["fpa"] = _ratio(self.path_correct, self.total)
        out["tice"] = _ratio(self.inconsistent, self.total)
        out["mistake_severity"] = _ratio(self.mistake_height_sum, self.mistakes)
        for i, k in enumerate(self.top_k):
            out[f"hdist@{k}"] = _ratio(self.hdist_sum[i], self.total)
        out["hprecision"], out["hrecall"], out["hf1"] = _precision_recall_f1_compute(self.hier_counts)
        return out


class FullPathAccuracy(_HierarchyMetric):
    """Full-path accuracy (FPA) as a torchmetrics ``Metric``; ``update(preds, targets)`` per level.

    ``validate_args=False`` skips the NaN check of logits (a host sync per ``update``).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, validate_args: bool = True, **kwargs: Any) -> None:
        super().__init__(None, validate_args, **kwargs)
        self.add_state("correct", default=_zeros(), dist_reduce_fx="sum")
        self.add_state("total", default=_zeros(), dist_reduce_fx="sum")

    def update(self, preds: LevelTensors, targets: LevelTensors) -> None:
        p, t = _pair(preds, targets, self.validate_args)
        correct, total = _full_path_update(p, t)
        self.correct += correct
        self.total += total

    def compute(self) -> torch.Tensor:
        return _ratio(self.correct, self.total)


class TreeInconsistencyError(_HierarchyMetric):
    """Tree-based inconsistency error (TICE) as a torchmetrics ``Metric``; ``update(preds)`` per level.

    Logits must have the taxonomy's class count at every level (``ValueError``
    otherwise); ``validate_args=False`` skips the id-range and NaN checks (host syncs).
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, taxonomy: Taxonomy, validate_args: bool = True, **kwargs: Any) -> None:
        super().__init__(taxonomy, validate_args, **kwargs)
        self.add_state("inconsistent", default=_zeros(), dist_reduce_fx="sum")
        self.add_state("total", default=_zeros(), dist_reduce_fx="sum")

    def update(self, preds: LevelTensors, targets: Optional[LevelTensors] = None) -> None:
        """``targets`` is accepted (and ignored) so the metric fits a MetricCollection."""
        raw = V.as_levels(preds, "preds")
        _check_level_preds(raw, self.taxonomy, self.validate_args)
        p = [_labels(x, f"preds[{l}]", self.validate_args) for l, x in enumerate(raw)]
        inconsistent, total = _tree_inconsistency_update(p, self.taxonomy)
        self.inconsistent += inconsistent
        self.total += total

    def compute(self) -> torch.Tensor:
        return _ratio(self.inconsistent, self.total)


class MistakeSeverity(_HierarchyMetric):
    """Mean LCA height of top-1 fine mistakes as a torchmetrics ``Metric`` (0 when there is no mistake).

    ``validate_args=False`` skips the id-range and NaN checks (host syncs).
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, taxonomy: Taxonomy, validate_args: bool = True, **kwargs: Any) -> None:
        super().__init__(taxonomy, validate_args, **kwargs)
        self.register_buffer("_paths", taxonomy.paths(), persistent=False)
        self.add_state("height_sum", default=_zeros(), dist_reduce_fx="sum")
        self.add_state("mistakes", default=_zeros(), dist_reduce_fx="sum")

    def update(self, preds: Union[torch.Tensor, LevelTensors], targets: Union[torch.Tensor, LevelTensors]) -> None:
        p = _labels(_fine(preds, "preds"), "preds", self.validate_args)
        t = _check_targets([_fine(targets, "targets")], p.shape[0])[0]
        if self.validate_args:
            _check_fine_range(p, self.taxonomy, "preds")
            _check_fine_range(t, self.taxonomy, "targets")
        height_sum, mistakes = _mistake_severity_update(p, t, self._paths.to(p.device))
        self.height_sum += height_sum
        self.mistakes += mistakes

    def compute(self) -> torch.Tensor:
        return _ratio(self.height_sum, self.mistakes)
