"""Argument checks and small helpers shared by the taxonomy losses of :mod:`hcast.hierarchy.losses`.

Private. Messages name the argument users pass (``logits``, ``targets[1]``). The
per-level sequence checks shared with decoding and metrics are in
:mod:`hcast.hierarchy._validation`.
"""
from __future__ import annotations

import torch
from torch import Tensor

from hcast.hierarchy._validation import check_taxonomy as _check_taxonomy
from hcast.hierarchy.taxonomy import Taxonomy

__all__: list[str] = []  # private helpers; _check_taxonomy is re-exported for the loss modules

_REDUCTIONS = ("mean", "sum", "none")


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
