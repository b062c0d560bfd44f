"""Superpixel pooling: average a feature grid within each superpixel.

This is the tokeniser of CAST (Ke et al., "Learning Hierarchical Image Segmentation
For Recognition and By Recognition", ICLR 2024): the convolutional stem gives a
(B, H, W, C) feature grid, the superpixel ids of the image are resized to that grid
by nearest neighbour, and the features (and position embeddings) of the grid cells
that share an id are averaged into one token per superpixel. The numbers equal those
of ``segment_mean_nd`` in CAST's ``cast_models/utils.py`` (sum per id divided by the
number of cells, zero for ids with no cell).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from hcast.ops import _triton
from hcast import _validation as V

__all__ = ["superpixel_pool", "resize_segments"]


def resize_segments(segments: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize superpixel ids to ``size`` by nearest neighbour, exactly as CAST does.

    CAST calls ``F.interpolate(ids[:, None].float(), size, mode="nearest")`` and casts
    back to ``long``; this function does the same, so the grid cells pick the same ids.
    Ids are exact through the float32 round trip up to 2**24.

    Args:
        segments (Tensor[B, h, w], int64): superpixel ids.
        size: the target ``(H, W)``.

    Returns:
        Tensor[B, H, W], int64: the resized ids (``segments`` itself if the size matches).

    Raises:
        TypeError: ``segments`` not an integer tensor, or ``size`` not two ints.
        ValueError: ``segments`` not 3-D, or ``size`` not positive.
    """
    V.check_tensor("segments", segments)
    V.check_rank("segments", segments, 3, "(B, h, w)")
    V.check_integer("segments", segments)
    size = (V.check_int("size[0]", size[0], 1), V.check_int("size[1]", size[1], 1))
    if tuple(segments.shape[-2:]) == size:
        return segments.long()
    resized = F.interpolate(segments[:, None].float(), size=size, mode="nearest")
    return resized[:, 0].long()


def _check_inputs(features: torch.Tensor, segments: torch.Tensor) -> None:
    V.check_tensor("features", features)
    V.check_tensor("segments", segments)
    V.check_rank("features", features, 4, "(B, H, W, C)")
    V.check_rank("segments", segments, 3, "(B, h, w)")
    V.check_floating("features", features)
    V.check_integer("segments", segments)
    V.check_non_empty("features", features, "(B, H, W, C)")
    V.check_non_empty("segments", segments, "(B, h, w)")
    V.check_same_batch("features", features, "segments", segments)
    V.check_same_device("features", features, "segments", segments)


def superpixel_pool(
    features: torch.Tensor,
    segments: torch.Tensor,
    num_segments: int | None = None,
    *,
    validate_args: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Average ``features`` within each superpixel id, as CAST's tokeniser does.

    Args:
        features (Tensor[B, H, W, C], float): a feature grid, channels last.
        segments (Tensor[B, h, w], int64): superpixel ids >= 0, at the grid's size or
            at image resolution; they are resized to ``(H, W)`` by nearest neighbour
            first (see :func:`resize_segments`).
        num_segments: the number of tokens ``S`` to return. ``None`` (the default, as
            CAST) uses the largest resized id over the whole batch plus one.
        validate_args: check that the ids are >= 0 and, with ``num_segments``, below it
            (a host sync); shape, dtype, batch and device checks always run. With False
            (and ``num_segments`` given) there is no host sync and no data-dependent
            shape; out-of-range ids are then undefined behaviour of the scatter.

    Returns:
        A tuple ``(tokens, padding_mask)``:

        - tokens (Tensor[B, S, C], dtype of ``features``): the mean feature of each id;
          zeros for an id with no grid cell.
        - padding_mask (Tensor[B, S], bool): True where an id has no grid cell (after
          resizing), as CAST's ``x_padding_mask``.

    Differentiable in ``features``. On CUDA tensors a Triton kernel computes the sums
    and counts in one launch; elsewhere (and as the reference) one ``scatter_add`` of
    the features and one of the counts over each image's grid cells.

    Raises:
        TypeError: if an input is not a tensor, ``features`` is not floating point,
            ``segments`` not integer, or ``num_segments`` not an int.
        ValueError: if ``features`` is not 4-D or ``segments`` not 3-D, either is
            empty, their batch sizes or devices differ, an id is negative, or an id is
            ``>= num_segments``.
    """
    _check_inputs(features, segments)
    if validate_args:
        V.check_non_negative("segments", segments)
    segments = resize_segments(segments, features.shape[1:3])
    if num_segments is None:
        num_segments = int(segments.max()) + 1
    else:
        num_segments = V.check_int("num_segments", num_segments, 1)
        max_id = int(segments.max()) if validate_args else -1
        if max_id >= num_segments:
            raise ValueError(
                f"segments must hold ids < num_segments={num_segments} (after resizing to "
                f"the feature grid), got id {max_id}; pass num_segments={max_id + 1} or "
                f"None, or relabel the ids."
            )
    # Inside torch.compile / torch.export the scatter path is traced (the compiler
    # generates its own kernel); eagerly, CUDA tensors take the Triton kernel.
    if features.is_cuda and _triton.available() and not torch.compiler.is_compiling():
        return _triton.superpixel_pool(features, segments, num_segments)
    return _superpixel_pool_torch(features, segments, num_segments)


def _superpixel_pool_torch(
    features: torch.Tensor, segments: torch.Tensor, num_segments: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference path: two batched ``scatter_add`` along the cells (the features and the
    counts), each image's H*W cells into its S bins.

    With ``num_segments`` given the output shapes do not depend on the ids (``bincount``'s
    would), so torch.compile, torch.export and ONNX (``ScatterElements`` with
    ``reduction="add"``) take it as it is.
    """
    batch, height, width, channels = features.shape
    flat = features.reshape(batch, height * width, channels)
    ids = segments.reshape(batch, height * width, 1)
    sums = flat.new_zeros(batch, num_segments, channels).scatter_add(
        1, ids.expand(-1, -1, channels), flat)
    counts = flat.new_zeros(batch, num_segments, 1).scatter_add(
        1, ids, torch.ones_like(ids, dtype=flat.dtype))
    tokens = sums / counts.clamp(min=1)
    padding_mask = counts[..., 0] == 0
    return tokens, padding_mask
