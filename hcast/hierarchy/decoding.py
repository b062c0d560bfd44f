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
from typing import Union

import torch
import torch.nn.functional as F

from hcast import _validation as V
from hcast.hierarchy.taxonomy import Taxonomy

__all__ = ["argmax_decode", "consistent_decode", "path_log_probs"]


def argmax_decode(logits: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Per-level argmax: a list of (N,) int64 tensors, finest first.

    Args:
        logits: per-level (N, C_l) logits (or probabilities), finest first.

    Raises:
        TypeError: ``logits`` is one tensor, or holds non-tensors.
        ValueError: an entry that is not 2-D, or batch sizes that differ.
    """
    return [x.argmax(dim=-1) for x in V.check_level_logits(logits, floating=False)]


def path_log_probs(logits: Sequence[torch.Tensor], taxonomy: Taxonomy) -> torch.Tensor:
    """(N, num_fine) float: ``sum_l log_softmax(logits_l)[:, paths[f, l]]`` for every fine class ``f``.

    Computed in float32 at least (float64 stays float64). This is the score
    :func:`consistent_decode` maximises; ``hcast predict`` reports it per path.

    Args:
        logits: per-level (N, C_l) logits, finest first.
        taxonomy: the class tree (its level and class counts must match the logits).

    Raises:
        TypeError: ``logits`` is one tensor or holds non-tensors; ``taxonomy`` is
            not a :class:`Taxonomy`.
        ValueError: level or class counts that do not match the taxonomy, batch
            sizes that differ.
    """
    V.check_instance("taxonomy", taxonomy, Taxonomy)
    logits = V.check_level_logits(logits, num_classes=taxonomy.num_classes, floating=False)
    paths = taxonomy.paths().to(logits[0].device)
    score = None
    for l, x in enumerate(logits):
        dtype = torch.promote_types(x.dtype, torch.float32)
        lp = F.log_softmax(x.to(dtype), dim=-1).index_select(1, paths[:, l])
        score = lp if score is None else score + lp
    return score


def consistent_decode(
    logits: Sequence[torch.Tensor], taxonomy: Taxonomy, return_scores: bool = False, validate_args: bool = True
) -> Union[list[torch.Tensor], tuple[list[torch.Tensor], torch.Tensor]]:
    """The taxonomy path with the highest summed per-level log-probability.

    Vectorised over the batch and the ``num_fine`` paths of
    :meth:`Taxonomy.paths` (memory ``N * num_fine`` floats).

    Args:
        logits: per-level (N, C_l) logits, finest first.
        taxonomy: the class tree (its class counts must match the logits).
        return_scores: also return the (N,) summed log-probability of the chosen path.
        validate_args: reject NaN and +inf logits (a host sync); False skips the check.

    Returns:
        list of (N,) int64 tensors, finest first, each row a valid path
        (and the (N,) scores if ``return_scores``).

    Raises:
        TypeError: as :func:`path_log_probs`.
        ValueError: level or class counts that do not match the taxonomy; NaN or
            +inf logits (when ``validate_args``).
    """
    V.check_instance("taxonomy", taxonomy, Taxonomy)
    checked = V.check_level_logits(logits, num_classes=taxonomy.num_classes, floating=False)
    if validate_args:  # NaN or +inf logits make log_softmax NaN: the decoded path would be arbitrary
        for level, x in enumerate(checked):
            V.check_scores(f"logits[{level}]", x, posinf=True)
    scores = path_log_probs(checked, taxonomy)
    best_score, fine = scores.max(dim=1)
    paths = taxonomy.paths().to(fine.device)[fine]
    preds = list(paths.unbind(1))
    if return_scores:
        return preds, best_score
    return preds
