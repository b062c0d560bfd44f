"""Hierarchical segmentation: compose CAST's per-stage cluster assignments into
per-pixel label maps.

Each graph pooling stage of CAST assigns each of its ``S_l`` input tokens to one of
``K_l`` centroids; the centroids are the next stage's tokens (``S_{l+1} = K_l``). The
stage-1 tokens are superpixels, so following a pixel's superpixel through the hard
(argmax) assignments of stages 1..l gives its segment at level l: "segmentation for
free" (Ke et al., ICLR 2024, Sec. 3; the visualisation code of ``github:twke18/CAST``
does the same composition). Levels are finest first.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from hcast import _validation as V

__all__ = ["hierarchical_segmentation"]


def _stage_labels(name: str, assignment: torch.Tensor, batch: int,
                  validate_args: bool = True) -> torch.Tensor:
    """(B, S, K) logits -> (B, S) argmax labels; (B, S) integer labels pass through."""
    V.check_tensor(name, assignment)
    if assignment.dim() == 3:
        if not assignment.is_floating_point():
            raise TypeError(
                f"{name} of shape (B, S_l, K_l) must be float logits, got dtype {assignment.dtype}; "
                f"pass the logits as float, or hard labels of shape (B, S_l)."
            )
        V.check_non_empty(name, assignment, "(B, S_l, K_l)")
        if validate_args:
            # argmax over NaN scores picks the NaN's index: a label built from nothing.
            V.check_finite(name, assignment)
        labels = assignment.argmax(dim=-1)
    elif assignment.dim() == 2:
        V.check_integer(name, assignment)
        V.check_non_empty(name, assignment, "(B, S_l)")
        if validate_args:
            V.check_non_negative(name, assignment)
        labels = assignment.long()
    else:
        raise ValueError(
            f"{name} must be float logits of shape (B, S_l, K_l) or integer labels of "
            f"shape (B, S_l), got shape {tuple(assignment.shape)}."
        )
    if labels.shape[0] != batch:
        raise ValueError(
            f"{name} must have the batch size B={batch} of segments, got shape "
            f"{tuple(assignment.shape)}."
        )
    return labels


def hierarchical_segmentation(
    assignments: Sequence[torch.Tensor], segments: torch.Tensor, *, validate_args: bool = True
) -> list[torch.Tensor]:
    """Compose per-stage token-to-centroid assignments into per-pixel label maps.

    Args:
        assignments: one entry per pooling stage, first stage first. Entry ``l`` is
            either logits (Tensor[B, S_l, K_l], float; the argmax over ``K_l`` is taken),
            e.g. CAST's graph pooling ``pool_logit``, or hard labels
            (Tensor[B, S_l], int64, values in ``[0, K_l)``). ``S_1`` must exceed every id
            in ``segments`` and ``S_{l+1}`` must equal ``K_l`` (for labels: exceed every
            stage-``l`` label).
        segments (Tensor[B, H, W], int64): the superpixel id of every pixel, the
            stage-1 tokens (at any resolution; the maps have the same ``(H, W)``).
        validate_args: check the values: logits finite, ids and labels >= 0 and within
            the next stage (host syncs); rank, dtype and batch checks always run. With
            False, out-of-range ids are undefined behaviour of ``gather``.

    Returns:
        list of Tensor[B, H, W], int64, one per stage, finest first: map ``l`` holds
        the stage-``l`` cluster (in ``[0, K_l)``) of each pixel.

    Raises:
        TypeError: if ``assignments`` is not a list or tuple of tensors, ``segments``
            or a label tensor is not integer, or (B, S_l, K_l) logits are not float.
        ValueError: on wrong ranks, an empty tensor, batch mismatch, NaN or infinite
            logits, negative ids, or ids / labels that do not index the next stage.
    """
    V.check_sequence("assignments", assignments)
    V.check_tensor("segments", segments)
    V.check_rank("segments", segments, 3, "(B, H, W)")
    V.check_integer("segments", segments)
    V.check_non_empty("segments", segments, "(B, H, W)")
    if validate_args:
        V.check_non_negative("segments", segments)
    batch = segments.shape[0]
    flat_segments = segments.reshape(batch, -1).long()

    # token_labels[b, s] = cluster of stage-1 token s at the current stage.
    token_labels = None
    maps = []
    for level, assignment in enumerate(assignments):
        name = f"assignments[{level}]"
        labels = _stage_labels(name, assignment, batch, validate_args).to(segments.device)
        num_inputs = labels.shape[1]
        index = flat_segments if token_labels is None else token_labels
        top = int(index.max()) if validate_args else -1
        if top >= num_inputs:
            rows, source = (
                ("superpixel id", "segments holds ids")
                if token_labels is None
                else (f"stage-{level} cluster", f"assignments[{level - 1}] assigns clusters")
            )
            raise ValueError(
                f"{name} must have one row per {rows}: expected shape (B, S_{level + 1} > "
                f"{top}, K_{level + 1}) or (B, S_{level + 1} > {top}) since {source} up to "
                f"{top}, got shape {tuple(assignment.shape)}."
            )
        if token_labels is None:
            token_labels = labels
        else:
            token_labels = torch.gather(labels, 1, token_labels)
        maps.append(torch.gather(token_labels, 1, flat_segments).view_as(segments))
    return maps
