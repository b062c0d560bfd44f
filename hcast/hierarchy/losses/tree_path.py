"""H-CAST's training objective: per-level cross-entropy plus the tree-path KL term.

Follows the H-CAST authors' code (github:ngocquanai/HiOT at b1a222b,
``deit/engine_hier.py`` with ``--globalkl``; Park et al., "Visually Consistent
Hierarchical Image Classification", ICLR 2025):

* one cross-entropy per level, **summed** over levels (the authors' criterion is
  timm's ``SoftTargetCrossEntropy`` on the mixup/cutmix targets, which already
  carry the label smoothing, or ``LabelSmoothingCrossEntropy`` without mixup);
* the tree-path KL term
  ``KLDivLoss(reduction="batchmean")(log_softmax(cat(logits)), normalize(cat(targets), p=1))``:
  the logits of all levels are concatenated and put through *one* softmax, the
  per-level target distributions are concatenated and L1-normalised (so each
  level gets mass ``1 / num_levels``), and the KL divergence
  ``sum_j t_j (log t_j - log p_j)`` is averaged over the batch;
* ``loss = sum_l CE_l + kl_weight * KL`` (``kl_weight`` is the authors'
  ``--gk_weight``; 0.5 as in hcast's design).

Other hierarchical losses (hierarchical cross-entropy, soft labels, level-weighted
cross-entropy) live in their own modules of :mod:`hcast.hierarchy.losses`.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from hcast import _validation as V

__all__ = ["HCASTLoss", "tree_path_kl", "level_targets_to_probs"]


def level_targets_to_probs(
    logits: Sequence[torch.Tensor],
    targets: Sequence[torch.Tensor],
    label_smoothing: float = 0.0,
) -> list[torch.Tensor]:
    """Per-level target distributions (N, C_l) from hard labels or soft targets.

    Hard labels (N,) int64 become one-hot vectors smoothed as timm's
    ``mixup_target`` does (``on = 1 - s + s / C``, ``off = s / C``); soft targets
    (N, C_l) float pass through unchanged (mixup/cutmix already smoothed them).

    Args:
        logits: per-level (N, C_l) float logits, finest first.
        targets: per-level (N,) int64 labels or (N, C_l) float target distributions.
        label_smoothing: smoothing applied to hard labels only.

    Returns:
        list of (N, C_l) tensors of the logits' dtype, finest first.

    Raises:
        TypeError: ``logits`` or ``targets`` is a single tensor or holds non-tensors,
            the logits are not floating point, or 1-D hard labels are not integer.
        ValueError: a level count, batch size or class count that does not match
            the logits, or a hard label outside ``[0, C_l)`` (naming the level and
            the offending label).
    """
    logits = V.check_level_logits(logits)
    targets = V.as_levels(targets, "targets")
    V.check_level_count("targets", len(targets), len(logits), of="logits")
    out = []
    for l, (x, t) in enumerate(zip(logits, targets)):
        n, c = x.shape
        if t.dim() == 1:
            V.check_labels(f"targets[{l}]", t, n, f"logits[{l}]", num_classes=c,
                           where=f" for level {l} (logits[{l}] has {c} classes)")
            off = label_smoothing / c
            probs = torch.full((n, c), off, dtype=x.dtype, device=x.device)
            probs.scatter_(1, t.long().view(-1, 1), 1.0 - label_smoothing + off)
            out.append(probs)
        elif t.dim() == 2:
            if tuple(t.shape) != (n, c):
                raise ValueError(f"targets[{l}] has shape {tuple(t.shape)} but logits[{l}] has shape {(n, c)}.")
            out.append(t.to(x.dtype))
        else:
            raise ValueError(
                f"targets[{l}] must be (N,) int64 labels or (N, C_{l}) soft targets, got shape {tuple(t.shape)}."
            )
    return out


def tree_path_kl(logits: Sequence[torch.Tensor], targets: Sequence[torch.Tensor], label_smoothing: float = 0.0) -> torch.Tensor:
    """H-CAST's tree-path KL term (scalar tensor).

    ``KL(normalize(cat(targets), p=1) || softmax(cat(logits)))`` averaged over the
    batch (``F.kl_div(..., reduction="batchmean")``), exactly as the authors'
    ``--globalkl`` loss. The concatenation order of the levels does not change the
    value.

    Args:
        logits: per-level (N, C_l) float logits, finest first.
        targets: per-level (N,) int64 labels or (N, C_l) soft targets.
        label_smoothing: smoothing applied to hard labels only.
    """
    probs = level_targets_to_probs(logits, targets, label_smoothing)
    log_p = F.log_softmax(torch.cat(list(logits), dim=1), dim=1)
    t = F.normalize(torch.cat(probs, dim=1), p=1, dim=1)
    return F.kl_div(log_p, t, reduction="batchmean")


class HCASTLoss(nn.Module):
    """H-CAST's objective: ``sum_l w_l * CE_l + kl_weight * tree_path_kl``.

    Args:
        kl_weight: weight of the tree-path KL term (the authors' ``--gk_weight``).
            0 gives plain summed per-level cross-entropy.
        label_smoothing: label smoothing for *hard* labels (as timm's
            ``LabelSmoothingCrossEntropy``; the authors' default is 0.1 when
            mixup is off). Soft targets from :class:`~hcast.hierarchy.mixup.HierarchicalMixup`
            already carry their smoothing and are used as they are.
        level_weights: optional per-level weights of the cross-entropies
            (finest first); default 1 for every level, as the authors sum them.

    Shapes:
        ``forward(logits, targets)``: ``logits`` a sequence of (N, C_l) float
        tensors, finest first (the tuple an H-CAST model returns); ``targets`` a
        sequence of (N,) int64 labels or (N, C_l) float target distributions per
        level (both kinds may be mixed). Returns a scalar tensor.

    Raises:
        TypeError: logits or targets given as one tensor, non-tensor entries, integer
            logits, float 1-D labels.
        ValueError: level counts, shapes or labels outside ``[0, C_l)``.

    Example:
        >>> crit = HCASTLoss(kl_weight=0.5)
        >>> loss = crit(model(images), [fine_targets, coarse_targets])  # doctest: +SKIP
    """

    def __init__(
        self,
        kl_weight: float = 0.5,
        label_smoothing: float = 0.0,
        level_weights: Optional[Sequence[float]] = None,
    ) -> None:
        super().__init__()
        self.kl_weight = V.check_number("kl_weight", kl_weight, low=0)
        self.label_smoothing = V.check_number("label_smoothing", label_smoothing, low=0, high=1, high_open=True)
        self.level_weights = None if level_weights is None else tuple(float(w) for w in level_weights)

    def components(
        self, logits: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """The loss and its parts for logging: ``{"loss", "ce", "ce_level0", ..., "kl"}`` (scalars)."""
        logits = V.check_level_logits(logits)
        probs = level_targets_to_probs(logits, targets, self.label_smoothing)
        if self.level_weights is not None and len(self.level_weights) != len(logits):
            raise ValueError(
                f"level_weights has {len(self.level_weights)} entries but logits has {len(logits)} levels."
            )
        out: dict[str, torch.Tensor] = {}
        ce_total = logits[0].new_zeros(())
        for l, (x, t) in enumerate(zip(logits, probs)):
            # Soft-target cross-entropy equals timm's LabelSmoothingCrossEntropy for smoothed one-hots
            # and SoftTargetCrossEntropy for mixup targets: one formula for both.
            ce = torch.sum(-t * F.log_softmax(x, dim=-1), dim=-1).mean()
            out[f"ce_level{l}"] = ce
            w = 1.0 if self.level_weights is None else self.level_weights[l]
            ce_total = ce_total + w * ce
        out["ce"] = ce_total
        if self.kl_weight > 0:
            log_p = F.log_softmax(torch.cat(logits, dim=1), dim=1)
            t = F.normalize(torch.cat(probs, dim=1), p=1, dim=1)
            kl = F.kl_div(log_p, t, reduction="batchmean")
        else:
            kl = ce_total.new_zeros(())
        out["kl"] = kl
        out["loss"] = ce_total + self.kl_weight * kl
        return out

    def forward(self, logits: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.components(logits, targets)["loss"]

    def extra_repr(self) -> str:
        return f"kl_weight={self.kl_weight}, label_smoothing={self.label_smoothing}, level_weights={self.level_weights}"
