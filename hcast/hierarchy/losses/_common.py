"""Small helpers shared by the taxonomy losses of :mod:`hcast.hierarchy.losses`.

Private. The losses check their arguments with :mod:`hcast._validation`, the checks of
the whole package; what is here is the losses' own arithmetic.
"""
from __future__ import annotations

from torch import Tensor

from hcast.hierarchy.taxonomy import Taxonomy

__all__: list[str] = []

#: the ``reduction`` values every loss takes, as torch's losses
REDUCTIONS = ("mean", "sum", "none")
#: what fine targets index, for messages
FINE_CLASSES = " (the taxonomy's fine classes)"


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _level_maps(taxonomy: Taxonomy) -> Tensor:
    """(num_levels, num_fine) int64: row l maps fine ids to their level-l ancestor."""
    return taxonomy.paths().t().contiguous()
