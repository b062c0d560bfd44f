"""The one check of per-level tensors (logits, predictions, targets) used across :mod:`hcast.hierarchy`.

Every hierarchical loss, decoder and metric takes a sequence with one tensor per
level, finest first. The same mistake raises the same error everywhere:

* ``TypeError`` for a wrong *type*: one tensor instead of a sequence, an entry that
  is not a tensor, integer logits where floating logits are needed;
* ``ValueError`` for a wrong *shape or value*: no level, a wrong rank, batch sizes
  that differ between levels, level or class counts that do not match the taxonomy.

Messages name the argument (``logits[1]``, ``preds``) and say what was expected.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import torch

from hcast.hierarchy.taxonomy import Taxonomy

__all__: list[str] = []


def as_levels(x: Any, arg: str) -> list[torch.Tensor]:
    """``x`` as a non-empty list of tensors, one per level, finest first.

    Raises:
        TypeError: ``x`` is a single tensor or not a sequence, or an entry is not a tensor.
        ValueError: ``x`` is empty.
    """
    if torch.is_tensor(x):
        raise TypeError(
            f"{arg} must be a sequence of per-level tensors, one tensor per level, finest first (e.g. [fine, "
            f"coarse], the tuple an H-CAST model returns), got a single tensor of shape {tuple(x.shape)}; wrap "
            f"it in a list for one level."
        )
    if not isinstance(x, Sequence) and not hasattr(x, "__iter__"):
        raise TypeError(f"{arg} must be a sequence of per-level tensors, finest first, got {type(x).__name__}.")
    out = list(x)
    if not out:
        raise ValueError(f"{arg} is empty; give one tensor per level, finest first.")
    for l, t in enumerate(out):
        if not torch.is_tensor(t):
            raise TypeError(f"{arg}[{l}] must be a tensor, got {type(t).__name__}.")
    return out


def check_level_logits(
    logits: Any, arg: str = "logits", taxonomy: Optional[Any] = None, floating: bool = True
) -> list[torch.Tensor]:
    """Check per-level (N, C_l) logits, finest first, and return them as a list.

    Args:
        logits: a sequence of (N, C_l) tensors, one per level.
        arg: the argument name used in messages.
        taxonomy: when given, the level count and every C_l must match it.
        floating: require floating-point logits (``TypeError`` otherwise).

    Raises:
        TypeError: see :func:`as_levels`; integer logits when ``floating``.
        ValueError: an entry that is not 2-D, batch sizes that differ from
            ``logits[0]``, or level / class counts that do not match ``taxonomy``.
    """
    out = as_levels(logits, arg)
    n = out[0].shape[0] if out[0].dim() > 0 else None
    for l, x in enumerate(out):
        if x.dim() != 2:
            raise ValueError(f"{arg}[{l}] must be a (N, C_{l}) tensor, got shape {tuple(x.shape)}.")
        if floating and not x.is_floating_point():
            raise TypeError(f"{arg}[{l}] must be a floating (N, C_{l}) tensor, got dtype {x.dtype}.")
        if x.shape[0] != n:
            raise ValueError(f"{arg}[{l}] has batch size {x.shape[0]} but {arg}[0] has {n}.")
    if taxonomy is not None:
        check_level_count(len(out), taxonomy, arg)
        for l, (x, c) in enumerate(zip(out, taxonomy.num_classes)):
            if x.shape[1] != c:
                raise ValueError(f"{arg}[{l}] has {x.shape[1]} classes but level {l} of the taxonomy has {c}.")
    return out


def check_taxonomy(taxonomy: Any) -> None:
    """Raise ``TypeError`` unless ``taxonomy`` is a :class:`~hcast.hierarchy.Taxonomy`."""
    if not isinstance(taxonomy, Taxonomy):
        raise TypeError(
            f"taxonomy must be an hcast.hierarchy.Taxonomy, got {type(taxonomy).__name__}; build one with "
            f"Taxonomy(parents) or Taxonomy.from_paths(paths)."
        )


def check_level_count(n_levels: int, taxonomy: Any, arg: str) -> None:
    """Raise ``ValueError`` unless ``n_levels`` equals the taxonomy's level count (``TypeError`` for a non-taxonomy)."""
    check_taxonomy(taxonomy)
    if n_levels != taxonomy.num_levels:
        raise ValueError(
            f"{arg} has {n_levels} levels but the taxonomy has {taxonomy.num_levels}; give one tensor per level, "
            f"finest first."
        )
