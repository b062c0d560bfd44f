"""Losses from "Making Better Mistakes" and its CIFAR-100 follow-up.

* :class:`HierarchicalCrossEntropyLoss` (HXE, :func:`hierarchical_cross_entropy`):
  the fine-class probability factorised along the taxonomy, one weighted
  conditional log-probability per edge.
* :func:`soft_labels` and :class:`SoftLabelCrossEntropyLoss`: targets that put
  mass on classes close to the true class in the taxonomy.
* :class:`LevelWeightedCrossEntropy`: one cross-entropy per level with per-level
  weights, start epochs and linear ramp-in (the ``SimpleHierarchyLoss`` schedule).

Sources (read, not copied): Bertinetto, Mueller, Tertikas, Samangooei and Lord,
"Making Better Mistakes: Leveraging Class Hierarchies with Deep Networks", CVPR 2020,
code ``github:fiveai/making-better-mistakes`` (``better_mistakes/model/losses.py``
``HierarchicalLLLoss``/``HierarchicalCrossEntropyLoss``, ``better_mistakes/trees.py``
``get_exponential_weighting``, ``better_mistakes/model/labels.py``
``make_all_soft_labels``); the CIFAR-100 follow-up
``github:Akhyate-Brahim/making-better-mistakes`` (``custom_loss.py``
``SimpleHierarchyLoss``).

All losses take a :class:`~hcast.hierarchy.Taxonomy` (levels finest first, implicit
root above the coarsest level). Integer targets outside the taxonomy raise
``ValueError`` naming the argument and the bad class id (checked when
``validate_args=True``, the default; switch it off to avoid the host sync on GPU).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hcast.hierarchy.taxonomy import Taxonomy

__all__ = [
    "hxe_edge_weights",
    "hierarchical_cross_entropy",
    "HierarchicalCrossEntropyLoss",
    "soft_labels",
    "soft_label_cross_entropy",
    "SoftLabelCrossEntropyLoss",
    "ramp_weight",
    "LevelWeightedCrossEntropy",
]

_REDUCTIONS = ("mean", "sum", "none")


# ---------------------------------------------------------------------------- checks
def _check_taxonomy(taxonomy: Taxonomy) -> None:
    if not isinstance(taxonomy, Taxonomy):
        raise TypeError(
            f"taxonomy must be an hcast.hierarchy.Taxonomy, got {type(taxonomy).__name__}; build one with "
            f"Taxonomy(parents) or Taxonomy.from_paths(paths)."
        )


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}.")


def _check_logits(logits: Tensor, num_classes: int, arg: str = "logits") -> None:
    if not torch.is_tensor(logits) or not logits.is_floating_point():
        raise TypeError(f"{arg} must be a floating-point tensor of shape (N, {num_classes}), got {_describe(logits)}.")
    if logits.dim() != 2 or logits.shape[1] != num_classes:
        raise ValueError(
            f"{arg} must have shape (N, {num_classes}) (one column per class of the taxonomy level), "
            f"got {tuple(logits.shape)}."
        )


def _check_class_targets(targets: Tensor, num_classes: int, batch: int, arg: str = "targets") -> None:
    """Raise unless ``targets`` is an (N,) integer tensor of ids in [0, num_classes)."""
    if not torch.is_tensor(targets) or targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise TypeError(f"{arg} must be an int64 tensor of shape ({batch},) with class ids, got {_describe(targets)}.")
    if targets.dim() != 1 or targets.shape[0] != batch:
        raise ValueError(f"{arg} must have shape ({batch},) to match the logits, got {tuple(targets.shape)}.")
    bad = (targets < 0) | (targets >= num_classes)
    if bool(bad.any()):
        bad_id = int(targets[bad][0])
        raise ValueError(
            f"{arg} holds class id {bad_id}, outside the taxonomy's [0, {num_classes}); targets must be "
            f"class ids of the taxonomy level (fine ids for fine targets)."
        )


def _describe(x: object) -> str:
    if torch.is_tensor(x):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _level_maps(taxonomy: Taxonomy) -> Tensor:
    """(num_levels, num_fine) int64: row l maps fine ids to their level-l ancestor."""
    return taxonomy.paths().t().contiguous()


# ---------------------------------------------------------------------------- HXE
def hxe_edge_weights(taxonomy: Taxonomy, alpha: float = 0.1, normalize: bool = True) -> Tensor:
    r"""Weights of the HXE edges, one per level: the edge from a level-``l`` class to its parent.

    The weight of a node :math:`C` is :math:`\lambda(C) = \exp(-\alpha\, h(C))` where,
    as in the reference code (``get_exponential_weighting``), :math:`h(C)` is the
    node's *depth*: its number of edges from the root. A class at level ``l`` of a
    taxonomy with ``L`` levels has depth ``L - l`` (coarsest classes depth 1, fine
    classes depth ``L``). The paper writes :math:`h(C)` and calls it the height; its
    text ("errors related to nodes further away from the root receive a lower loss")
    and the code agree on the depth reading, which this function follows. With
    ``normalize=True`` (the reference's default) the weights are divided by the sum
    of :math:`\lambda` over *all* nodes of the tree, root included
    (:math:`1 + \sum_l n_l e^{-\alpha (L-l)}`).

    Args:
        taxonomy: the class tree.
        alpha: decay :math:`\alpha \ge 0`; larger values favour coarse information.
        normalize: divide by the total weight of the tree, as the reference does.

    Returns:
        (num_levels,) float64 tensor, finest level first.
    """
    _check_taxonomy(taxonomy)
    if not math.isfinite(alpha):
        raise ValueError(f"alpha must be a finite number, got {alpha!r}.")
    L = taxonomy.num_levels
    depth = torch.arange(L, 0, -1, dtype=torch.float64)  # level l -> depth L - l
    weights = torch.exp(-alpha * depth)
    if normalize:
        counts = torch.tensor(taxonomy.num_classes, dtype=torch.float64)
        weights = weights / (1.0 + (counts * weights).sum())
    return weights


def _hxe(logits: Tensor, targets: Tensor, level_maps: Tensor, edge_weights: Tensor) -> Tensor:
    # log P(class at level l) = logsumexp of the fine log-probabilities under it; in log
    # space the conditional log-probabilities stay finite where the reference's
    # probability ratios would underflow.
    logp = F.log_softmax(logits, dim=1)
    ancestors = level_maps[:, targets]  # (L, N) ids of the target's ancestors
    log_marginals = []
    for l in range(level_maps.shape[0]):
        under = level_maps[l][None, :] == ancestors[l][:, None]  # (N, num_fine)
        log_marginals.append(torch.logsumexp(logp.masked_fill(~under, float("-inf")), dim=1))
    log_marginals.append(torch.zeros_like(log_marginals[0]))  # the root has probability one
    w = edge_weights.to(logits.dtype)
    loss = torch.zeros_like(log_marginals[0])
    for l in range(level_maps.shape[0]):
        loss = loss - w[l] * (log_marginals[l] - log_marginals[l + 1])
    return loss


def hierarchical_cross_entropy(
    logits: Tensor,
    targets: Tensor,
    taxonomy: Taxonomy,
    alpha: float = 0.1,
    normalize: bool = True,
    reduction: str = "mean",
    validate_args: bool = True,
) -> Tensor:
    r"""Hierarchical cross-entropy (HXE) of Bertinetto et al., CVPR 2020, Eq. 5.

    The softmax of the fine logits gives :math:`p(y)`; the probability of a class
    :math:`C` at a coarser level is the sum over the fine classes under it. With
    :math:`C^{(0)}` the target fine class and :math:`C^{(l)}` its ancestor at level
    :math:`l` (:math:`C^{(L)}` the root)

    .. math::
        \mathcal{L}_{HXE} = -\sum_{l=0}^{L-1} \lambda(C^{(l)})
            \log \frac{p(C^{(l)})}{p(C^{(l+1)})},

    the weighted sum of the conditional log-probabilities of the path's edges, with
    :math:`\lambda` from :func:`hxe_edge_weights` (``exp(-alpha * depth)``, divided
    by the tree's total weight when ``normalize``). ``alpha=0, normalize=False`` is
    the flat cross-entropy (the sum telescopes). Values equal the reference
    ``HierarchicalCrossEntropyLoss(hierarchy, classes, get_weighting(hierarchy,
    "exponential", value=alpha))`` on the same tree, except where a probability
    underflows to 0 in float32: the reference then drops that edge's term, this
    function (computing in log space) keeps its true value.

    Args:
        logits: (N, num_fine) float fine-class logits (not probabilities).
        targets: (N,) int64 fine class ids.
        taxonomy: the class tree (levels finest first).
        alpha: decay of the edge weights; the paper uses 0.1 to 0.9.
        normalize: normalise the weights by the tree's total weight (reference default).
        reduction: ``"mean"`` (reference), ``"sum"`` or ``"none"`` ((N,) per sample).
        validate_args: check shapes and that targets lie in the taxonomy.

    Returns:
        Scalar loss, or (N,) with ``reduction="none"``.

    Raises:
        ValueError: ``logits`` not (N, num_fine); ``targets`` not (N,) or holding a
            class id outside ``[0, num_fine)`` (the message names the id).
        TypeError: non-float logits, non-integer targets, or no Taxonomy.
    """
    _check_taxonomy(taxonomy)
    _check_reduction(reduction)
    if validate_args:
        _check_logits(logits, taxonomy.num_fine)
        _check_class_targets(targets, taxonomy.num_fine, logits.shape[0])
    maps = _level_maps(taxonomy).to(logits.device)
    loss = _hxe(logits, targets.long(), maps, hxe_edge_weights(taxonomy, alpha, normalize).to(logits.device))
    return _reduce(loss, reduction)


class HierarchicalCrossEntropyLoss(nn.Module):
    """Module form of :func:`hierarchical_cross_entropy` (HXE), with the tree kept as buffers.

    Args:
        taxonomy: the class tree (levels finest first).
        alpha: decay of the edge weights ``exp(-alpha * depth)``.
        normalize: divide the weights by the tree's total weight (reference default).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        validate_args: check shapes and target ids on every call.

    Shape:
        ``forward(logits (N, num_fine) float, targets (N,) int64) -> scalar`` (or (N,)).

    Example:
        >>> tax = Taxonomy([[0, 0, 1]])
        >>> loss = HierarchicalCrossEntropyLoss(tax, alpha=0.5)(torch.zeros(2, 3), torch.tensor([0, 2]))
    """

    def __init__(
        self,
        taxonomy: Taxonomy,
        alpha: float = 0.1,
        normalize: bool = True,
        reduction: str = "mean",
        validate_args: bool = True,
    ) -> None:
        super().__init__()
        _check_taxonomy(taxonomy)
        _check_reduction(reduction)
        self.num_fine = taxonomy.num_fine
        self.alpha = float(alpha)
        self.normalize = normalize
        self.reduction = reduction
        self.validate_args = validate_args
        self.register_buffer("level_maps", _level_maps(taxonomy), persistent=False)
        self.register_buffer("edge_weights", hxe_edge_weights(taxonomy, alpha, normalize), persistent=False)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        if self.validate_args:
            _check_logits(logits, self.num_fine)
            _check_class_targets(targets, self.num_fine, logits.shape[0])
        return _reduce(_hxe(logits, targets.long(), self.level_maps, self.edge_weights), self.reduction)

    def extra_repr(self) -> str:
        return f"num_fine={self.num_fine}, alpha={self.alpha}, normalize={self.normalize}, reduction={self.reduction!r}"


# ---------------------------------------------------------------------------- soft labels
def soft_labels(taxonomy: Taxonomy, beta: float = 10.0) -> Tensor:
    r"""Soft-label matrix of Bertinetto et al. (CVPR 2020, Eq. 6): row ``t`` is the target for class ``t``.

    .. math::
        y_t(c) = \frac{\exp(-\beta\, d(t, c) / d_{max})}{\sum_{c'} \exp(-\beta\, d(t, c') / d_{max})}

    with :math:`d` the height of the lowest common ancestor
    (:meth:`Taxonomy.lca_height_matrix`, the paper's mistake severity) and
    :math:`d_{max}` its maximum over all pairs, the normalisation of the reference
    ``make_all_soft_labels``. (The reference stores the transposed matrix and reads
    column ``t``; the matrix is symmetric in :math:`d`, so row ``t`` here equals
    their column ``t``.) Larger ``beta`` is closer to one-hot; the paper uses 4 to 30.

    Args:
        taxonomy: the class tree.
        beta: hardness :math:`\beta` (finite).

    Returns:
        (num_fine, num_fine) float32 tensor whose rows sum to one.
    """
    _check_taxonomy(taxonomy)
    if not math.isfinite(beta):
        raise ValueError(f"beta must be a finite number, got {beta!r}.")
    dist = taxonomy.lca_height_matrix().to(torch.float64)
    d_max = dist.max()
    if d_max > 0:  # a one-class taxonomy has only zero distances
        dist = dist / d_max
    return torch.softmax(-beta * dist, dim=1).to(torch.float32)


def _soft_ce(logits: Tensor, targets: Tensor, matrix: Tensor) -> Tensor:
    return -(matrix.to(logits.dtype)[targets] * F.log_softmax(logits, dim=1)).sum(dim=1)


def soft_label_cross_entropy(
    logits: Tensor,
    targets: Tensor,
    taxonomy: Taxonomy,
    beta: float = 10.0,
    reduction: str = "mean",
    validate_args: bool = True,
) -> Tensor:
    r"""Cross-entropy against the soft labels :func:`soft_labels` of the targets.

    :math:`\mathcal{L} = -\sum_c y_t(c) \log \operatorname{softmax}(z)_c`. The
    reference trains with ``nn.KLDivLoss()`` (``reduction="mean"``, i.e. divided by
    ``N * num_fine``) on the log-softmax; that equals ``(this - H(y_t)) / num_fine``
    averaged over the batch: the same minimiser and gradients up to the constant
    factor ``num_fine``.

    Args:
        logits: (N, num_fine) float fine-class logits.
        targets: (N,) int64 fine class ids.
        taxonomy: the class tree.
        beta: hardness of the soft labels.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        validate_args: check shapes and that targets lie in the taxonomy.

    Raises:
        ValueError: bad shapes, or a target id outside ``[0, num_fine)`` (named in the message).
    """
    _check_reduction(reduction)
    matrix = soft_labels(taxonomy, beta).to(logits.device)
    if validate_args:
        _check_logits(logits, taxonomy.num_fine)
        _check_class_targets(targets, taxonomy.num_fine, logits.shape[0])
    return _reduce(_soft_ce(logits, targets.long(), matrix), reduction)


class SoftLabelCrossEntropyLoss(nn.Module):
    """Module form of :func:`soft_label_cross_entropy`; the soft-label matrix is a buffer.

    Args:
        taxonomy: the class tree.
        beta: hardness of the soft labels (larger: closer to one-hot).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        validate_args: check shapes and target ids on every call.

    Shape:
        ``forward(logits (N, num_fine) float, targets (N,) int64) -> scalar`` (or (N,)).
        ``soft_targets(targets (N,) int64) -> (N, num_fine)`` float rows of :func:`soft_labels`.
    """

    def __init__(
        self, taxonomy: Taxonomy, beta: float = 10.0, reduction: str = "mean", validate_args: bool = True
    ) -> None:
        super().__init__()
        _check_reduction(reduction)
        self.num_fine = taxonomy.num_fine
        self.beta = float(beta)
        self.reduction = reduction
        self.validate_args = validate_args
        self.register_buffer("soft_labels", soft_labels(taxonomy, beta), persistent=False)

    def soft_targets(self, targets: Tensor) -> Tensor:
        """(N, num_fine) soft targets for (N,) int64 fine class ids."""
        if self.validate_args:
            _check_class_targets(targets, self.num_fine, targets.shape[0] if torch.is_tensor(targets) else -1)
        return self.soft_labels[targets.long()]

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        if self.validate_args:
            _check_logits(logits, self.num_fine)
            _check_class_targets(targets, self.num_fine, logits.shape[0])
        return _reduce(_soft_ce(logits, targets.long(), self.soft_labels), self.reduction)

    def extra_repr(self) -> str:
        return f"num_fine={self.num_fine}, beta={self.beta}, reduction={self.reduction!r}"


# ---------------------------------------------------------------------------- level-weighted CE
def ramp_weight(epoch: float, start_epoch: float = 0, ramp_epochs: float = 0) -> float:
    """Schedule factor of a level's loss: 0 before ``start_epoch``, then a linear ramp to 1.

    ``0`` if ``epoch < start_epoch``; ``(epoch - start_epoch) / ramp_epochs`` while
    ``epoch < start_epoch + ramp_epochs``; ``1`` afterwards (so the factor is 0 *at*
    ``start_epoch`` when ``ramp_epochs > 0``), as ``SimpleHierarchyLoss._calculate_weight``
    of the CIFAR-100 follow-up. Fractional epochs are allowed, for per-iteration ramps.
    """
    if epoch < start_epoch:
        return 0.0
    if epoch < start_epoch + ramp_epochs:
        return float(epoch - start_epoch) / float(ramp_epochs)
    return 1.0


def _per_level(value: Optional[Sequence[float]], num_levels: int, default: float, arg: str) -> tuple[float, ...]:
    if value is None:
        return (float(default),) * num_levels
    if isinstance(value, (int, float)):
        return (float(value),) * num_levels
    value = tuple(float(v) for v in value)
    if len(value) != num_levels:
        raise ValueError(
            f"{arg} has {len(value)} entries but level_weights has {num_levels}; give one value per level, finest first."
        )
    if any(v < 0 or not math.isfinite(v) for v in value):
        raise ValueError(f"{arg} must hold finite non-negative numbers, got {value}.")
    return value


class LevelWeightedCrossEntropy(nn.Module):
    r"""One cross-entropy per taxonomy level, weighted and switched on by a schedule.

    .. math::
        \mathcal{L}(e) = \sum_l w_l\, r_l(e)\, \mathrm{CE}(z_l, y_l),
        \qquad r_l(e) = \mathrm{clip}\Big(\frac{e - s_l}{R_l}, 0, 1\Big)\ (0 \text{ for } e < s_l)

    with per-level weights :math:`w_l` (``level_weights``), start epochs :math:`s_l`
    (``start_epochs``) and ramp lengths :math:`R_l` (``ramp_epochs``), see
    :func:`ramp_weight`. This is the ``SimpleHierarchyLoss`` of the CIFAR-100
    follow-up of "Making Better Mistakes" (``lambda_fine``, ``lambda_coarse``,
    ``*_loss_start_epoch``, ``*_loss_ramp_epochs``) generalised to any number of
    levels; e.g. fine from epoch 0 and coarse switched on at epoch 50, ramped over 20::

        loss_fn = LevelWeightedCrossEntropy((1.0, 0.5), start_epochs=(0, 50), ramp_epochs=(0, 20))
        for epoch in range(epochs):
            loss_fn.set_epoch(epoch)        # or pass epoch=... to forward
            ...
            loss = loss_fn(model(images), level_targets)  # H-CAST: tuple of per-level logits

    Every level's loss is computed even while its factor is 0 (it is multiplied by
    0), so all heads stay in the graph as DistributedDataParallel expects.

    Args:
        level_weights: :math:`w_l`, one per level, finest first (its length sets the
            number of levels).
        start_epochs: :math:`s_l` per level (default all 0), or one number for all.
        ramp_epochs: :math:`R_l` per level (default all 0: full weight at once).
        taxonomy: optional; lets ``targets`` be (N,) fine ids only (ancestors are
            looked up) and ``logits`` be fine logits only (coarser logits derived).
        coarse_logits: how coarser logits are derived from fine ones when only fine
            logits are given: ``"logsumexp"`` (their softmax is the marginal
            probability of each coarse class, the principled choice) or ``"sum"``
            (sum of the children's logits, what ``SimpleHierarchyLoss`` does with
            ``outputs.view(-1, 20, 5).sum(2)``).
        label_smoothing: passed to :func:`torch.nn.functional.cross_entropy`.

    Shape:
        ``forward(logits, targets, epoch=None) -> scalar``:

        * ``logits``: sequence of per-level (N, C_l) float logits, finest first (as
          H-CAST/Hier-ViT models return), or one (N, num_fine) tensor with a taxonomy.
        * ``targets``: sequence of per-level targets, each (N,) int64 class ids or
          (N, C_l) float class probabilities (mixup / soft labels); an (N, num_levels)
          int64 tensor of paths; or one (N,) int64 tensor of fine ids with a taxonomy.
        * ``epoch``: overrides the epoch set by :meth:`set_epoch` for this call.

    Raises:
        ValueError: a level count that does not match ``level_weights``, logits not
            (N, C_l), or an integer target outside ``[0, C_l)`` (message names
            ``targets[l]`` and the id).
    """

    def __init__(
        self,
        level_weights: Sequence[float] = (1.0, 1.0),
        start_epochs: Optional[Union[float, Sequence[float]]] = None,
        ramp_epochs: Optional[Union[float, Sequence[float]]] = None,
        taxonomy: Optional[Taxonomy] = None,
        coarse_logits: str = "logsumexp",
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if isinstance(level_weights, (int, float)) or len(level_weights) == 0:
            raise ValueError(f"level_weights must be a non-empty sequence (one weight per level), got {level_weights!r}.")
        self.level_weights = _per_level(level_weights, len(level_weights), 1.0, "level_weights")
        num_levels = len(self.level_weights)
        self.start_epochs = _per_level(start_epochs, num_levels, 0.0, "start_epochs")
        self.ramp_epochs = _per_level(ramp_epochs, num_levels, 0.0, "ramp_epochs")
        if coarse_logits not in ("logsumexp", "sum"):
            raise ValueError(f"coarse_logits must be 'logsumexp' or 'sum', got {coarse_logits!r}.")
        self.coarse_logits = coarse_logits
        self.label_smoothing = float(label_smoothing)
        self.epoch: float = 0
        self.num_classes: Optional[tuple[int, ...]] = None
        if taxonomy is not None:
            _check_taxonomy(taxonomy)
            if taxonomy.num_levels != num_levels:
                raise ValueError(
                    f"taxonomy has {taxonomy.num_levels} levels but level_weights has {num_levels} entries; "
                    f"give one weight per level, finest first."
                )
            self.num_classes = taxonomy.num_classes
            self.register_buffer("level_maps", _level_maps(taxonomy), persistent=False)
        else:
            self.level_maps = None

    @property
    def num_levels(self) -> int:
        return len(self.level_weights)

    def set_epoch(self, epoch: float) -> None:
        """Set the (possibly fractional) epoch the schedule reads; call once per epoch."""
        self.epoch = epoch

    def weights_at(self, epoch: Optional[float] = None) -> tuple[float, ...]:
        """Effective per-level weights :math:`w_l r_l(e)` at ``epoch`` (default: the set epoch)."""
        e = self.epoch if epoch is None else epoch
        return tuple(
            w * ramp_weight(e, s, r) for w, s, r in zip(self.level_weights, self.start_epochs, self.ramp_epochs)
        )

    def _split_logits(self, logits: Union[Tensor, Sequence[Tensor]]) -> list[Tensor]:
        if torch.is_tensor(logits):
            if self.level_maps is None:
                if self.num_levels != 1:
                    raise ValueError(
                        f"logits is a single tensor but the loss has {self.num_levels} levels; pass a sequence of "
                        f"per-level logits (finest first), or a taxonomy to derive coarser logits from fine ones."
                    )
                return [logits]
            _check_logits(logits, self.num_classes[0])
            out = [logits]
            for l in range(1, self.num_levels):
                index = self.level_maps[l].to(logits.device)[None, :].expand_as(logits)
                shape = (logits.shape[0], self.num_classes[l])
                if self.coarse_logits == "sum":
                    out.append(logits.new_zeros(shape).scatter_add(1, index, logits))
                else:
                    out.append(_scatter_logsumexp(logits, index, shape))
            return out
        logits = list(logits)
        if len(logits) != self.num_levels:
            raise ValueError(
                f"logits has {len(logits)} levels but level_weights has {self.num_levels}; give one (N, C_l) tensor "
                f"per level, finest first."
            )
        for l, z in enumerate(logits):
            n_l = self.num_classes[l] if self.num_classes is not None else (z.shape[1] if torch.is_tensor(z) and z.dim() == 2 else -1)
            _check_logits(z, n_l, f"logits[{l}]")
            if z.shape[0] != logits[0].shape[0]:
                raise ValueError(f"logits[{l}] has {z.shape[0]} rows but logits[0] has {logits[0].shape[0]}.")
        return logits

    def _split_targets(self, targets: Union[Tensor, Sequence[Tensor]], logits: list[Tensor]) -> list[Tensor]:
        n = logits[0].shape[0]
        if torch.is_tensor(targets) and targets.dim() == 1:
            if self.level_maps is None:
                if self.num_levels != 1:
                    raise ValueError(
                        f"targets is a single (N,) tensor but the loss has {self.num_levels} levels; pass per-level "
                        f"targets (finest first), or a taxonomy to look up the ancestors of fine targets."
                    )
                targets = [targets]
            else:
                _check_class_targets(targets, self.num_classes[0], n, "targets")
                maps = self.level_maps.to(targets.device)
                return [maps[l][targets.long()] for l in range(self.num_levels)]
        if torch.is_tensor(targets) and targets.dim() == 2 and not targets.is_floating_point():
            targets = targets.unbind(1)  # (N, num_levels) paths, as Taxonomy.paths()[fine]
        elif torch.is_tensor(targets):
            raise ValueError(
                f"targets must be (N,) fine ids (with a taxonomy), an (N, num_levels) integer tensor of paths, "
                f"or a sequence of per-level targets; got a {targets.dtype} tensor of shape {tuple(targets.shape)}."
            )
        targets = list(targets)
        if len(targets) != self.num_levels:
            raise ValueError(
                f"targets has {len(targets)} levels but level_weights has {self.num_levels}; give one target tensor "
                f"per level, finest first."
            )
        for l, (y, z) in enumerate(zip(targets, logits)):
            if torch.is_tensor(y) and y.is_floating_point():
                if tuple(y.shape) != tuple(z.shape):
                    raise ValueError(
                        f"targets[{l}] holds class probabilities of shape {tuple(y.shape)}; expected "
                        f"{tuple(z.shape)}, the shape of logits[{l}]."
                    )
            else:
                _check_class_targets(y, z.shape[1], n, f"targets[{l}]")
        return targets

    def forward(
        self,
        logits: Union[Tensor, Sequence[Tensor]],
        targets: Union[Tensor, Sequence[Tensor]],
        epoch: Optional[float] = None,
    ) -> Tensor:
        level_logits = self._split_logits(logits)
        level_targets = self._split_targets(targets, level_logits)
        total = level_logits[0].new_zeros(())
        for w, z, y in zip(self.weights_at(epoch), level_logits, level_targets):
            y = y if y.is_floating_point() else y.long()
            total = total + w * F.cross_entropy(z, y, label_smoothing=self.label_smoothing)
        return total

    def extra_repr(self) -> str:
        return (
            f"level_weights={self.level_weights}, start_epochs={self.start_epochs}, "
            f"ramp_epochs={self.ramp_epochs}, epoch={self.epoch}"
        )


def _scatter_logsumexp(logits: Tensor, index: Tensor, shape: tuple[int, int]) -> Tensor:
    """Per-group logsumexp of ``logits`` columns; ``index`` (N, num_fine) gives each column's group."""
    group_max = logits.new_full(shape, float("-inf")).scatter_reduce(1, index, logits, "amax", include_self=True)
    group_max = group_max.detach()  # a constant shift; keeps the gradient exact
    shifted = torch.exp(logits - group_max.gather(1, index))
    sums = logits.new_zeros(shape).scatter_add(1, index, shifted)
    return sums.log() + group_max
