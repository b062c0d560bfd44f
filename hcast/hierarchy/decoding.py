"""Turning per-level logits into per-level predictions.

* :func:`argmax_decode`: each level's own argmax, as the H-CAST code evaluates
  (its predicted paths may not exist in the taxonomy: that share is the TICE).
* :func:`consistent_decode`: the taxonomy path with the highest summed per-level
  log-probability, ``argmax_f sum_l log_softmax(logits_l)[path_f[l]]``. Every
  prediction is a real path, so its tree-based inconsistency error is 0 by
  construction.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Optional, Union

import torch
import torch.nn.functional as F

from hcast.hierarchy.taxonomy import Taxonomy

__all__ = ["argmax_decode", "consistent_decode", "path_log_probs"]


def _check(logits: Sequence[torch.Tensor], taxonomy: Optional[Taxonomy] = None) -> list[torch.Tensor]:
    if torch.is_tensor(logits):
        raise TypeError("logits must be a sequence of per-level (N, C_l) tensors, finest first, not one tensor.")
    logits = list(logits)
    if not logits:
        raise ValueError("logits is empty; give one (N, C_l) tensor per level, finest first.")
    for l, x in enumerate(logits):
        if not torch.is_tensor(x) or x.dim() != 2:
            raise ValueError(f"logits[{l}] must be a (N, C_{l}) tensor, got {getattr(x, 'shape', type(x))}.")
        if x.shape[0] != logits[0].shape[0]:
            raise ValueError(f"logits[{l}] has batch size {x.shape[0]} but logits[0] has {logits[0].shape[0]}.")
    if taxonomy is not None:
        if len(logits) != taxonomy.num_levels:
            raise ValueError(
                f"logits has {len(logits)} levels but the taxonomy has {taxonomy.num_levels}; give one (N, C_l) "
                f"tensor per level, finest first."
            )
        for l, (x, c) in enumerate(zip(logits, taxonomy.num_classes)):
            if x.shape[1] != c:
                raise ValueError(f"logits[{l}] has {x.shape[1]} classes but level {l} of the taxonomy has {c}.")
    return logits


def argmax_decode(logits: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Per-level argmax: a list of (N,) int64 tensors, finest first."""
    return [x.argmax(dim=-1) for x in _check(logits)]


def path_log_probs(logits: Sequence[torch.Tensor], taxonomy: Taxonomy) -> torch.Tensor:
    """(N, num_fine) float: ``sum_l log_softmax(logits_l)[:, paths[f, l]]`` for every fine class ``f``.

    Computed in float32 at least (float64 stays float64).
    """
    logits = _check(logits, taxonomy)
    paths = taxonomy.paths().to(logits[0].device)
    score = None
    for l, x in enumerate(logits):
        dtype = torch.promote_types(x.dtype, torch.float32)
        lp = F.log_softmax(x.to(dtype), dim=-1).index_select(1, paths[:, l])
        score = lp if score is None else score + lp
    return score


def consistent_decode(
    logits: Sequence[torch.Tensor], taxonomy: Taxonomy, return_scores: bool = False
) -> Union[list[torch.Tensor], tuple[list[torch.Tensor], torch.Tensor]]:
    """The taxonomy path with the highest summed per-level log-probability.

    Vectorised over the batch and the ``num_fine`` paths of
    :meth:`Taxonomy.paths` (memory ``N * num_fine`` floats).

    Args:
        logits: per-level (N, C_l) logits, finest first.
        taxonomy: the class tree (its class counts must match the logits).
        return_scores: also return the (N,) summed log-probability of the chosen path.

    Returns:
        list of (N,) int64 tensors, finest first, each row a valid path
        (and the (N,) scores if ``return_scores``).

    Raises:
        ValueError: level or class counts that do not match the taxonomy.
    """
    scores = path_log_probs(logits, taxonomy)
    best_score, fine = scores.max(dim=1)
    paths = taxonomy.paths().to(fine.device)[fine]
    preds = list(paths.unbind(1))
    if return_scores:
        return preds, best_score
    return preds
