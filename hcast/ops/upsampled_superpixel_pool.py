"""Superpixel pooling of an upsampled feature map, without the upsampled map.

CAST's segmentation encoder (github:twke18/CAST ``cast_models/cast_seg.py``,
``model_stage='segmentation'``) upsamples the stride-8 stem features bilinearly and the
position table bicubically to the superpixel map's full resolution, then averages them
per superpixel. For a 512 x 512 image and width 384 that is a 400 MB map per image.
Interpolation is linear, so the mean of the upsampled map over a superpixel is a
weighted sum of the *low-resolution* cells: ``tokens = A @ features / count`` where
``A[s, q]`` sums, over the pixels of superpixel ``s``, the interpolation weight of cell
``q``. ``A`` has a few non-zeros per pixel (2 x 2 taps bilinear, 4 x 4 bicubic) and is
built by one scatter; the product is a sparse-dense matmul. The result equals the
materialised form up to float32 summation order.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from hcast import _validation as V

__all__ = ["interpolation_matrix", "upsampled_superpixel_pool"]

_TAPS = {"bilinear": 2, "bicubic": 4}
#: largest S x h x w per image for which the weights are a dense matrix (16 MB in float32)
_DENSE_LIMIT = 1 << 22


def interpolation_matrix(in_size: int, out_size: int, mode: str = "bilinear",
                         dtype: torch.dtype = torch.float32, device: Optional[torch.device] = None) -> torch.Tensor:
    """The 1D weights of :func:`torch.nn.functional.interpolate` (``align_corners=False``).

    Row ``p`` holds the weight of every input position for output position ``p``; 2D
    ``'bilinear'`` / ``'bicubic'`` interpolation is the outer product of two such
    matrices. Taken from ``F.interpolate`` itself (on an identity), so the weights are
    PyTorch's, border clamping included.

    Args:
        in_size, out_size: lengths (>= 1).
        mode: ``'bilinear'`` or ``'bicubic'``.

    Returns:
        Tensor[out_size, in_size] of ``dtype``.
    """
    V.check_choice("mode", mode, tuple(_TAPS))
    eye = torch.eye(in_size, dtype=dtype, device=device)
    # (1, in, 1, in): channel c is the unit impulse at c; interpolating width in -> out
    # (height 1 -> 1 is the identity for both modes) gives column c of the matrix.
    out = F.interpolate(eye.view(1, in_size, 1, in_size), size=(1, out_size), mode=mode, align_corners=False)
    return out[0, :, 0].t().contiguous()


def _taps(matrix: torch.Tensor, taps: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(values, columns) of the ``taps`` entries of each row that can be non-zero."""
    taps = min(taps, matrix.shape[1])
    cols = matrix.abs().topk(taps, dim=1).indices
    return matrix.gather(1, cols), cols


def upsampled_superpixel_pool(
        features: torch.Tensor,
        segments: torch.Tensor,
        mode: str = "bilinear",
        num_segments: Optional[int] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean of ``F.interpolate(features, segments' size, mode)`` per superpixel.

    Equals ``superpixel_pool(interpolate(features.permute(0, 3, 1, 2), (H, W), mode=mode,
    align_corners=False).permute(0, 2, 3, 1), segments)`` (CAST's ``segment_mean_nd`` of
    the upsampled map) without the (B, H, W, C) map: see the module docstring.
    Differentiable with respect to ``features``.

    Args:
        features (Tensor[B, h, w, C] or Tensor[1, h, w, C], float): low-resolution
            features, channels last; a batch of 1 is shared by every image (a position
            table).
        segments (Tensor[B, H, W], int64): superpixel ids >= 0.
        mode: ``'bilinear'`` (stem features in the original) or ``'bicubic'``
            (position table).
        num_segments: S; default the largest id in the batch plus one (a host sync).

    Returns:
        ``(tokens, counts)``: Tensor[B, S, C] means (zeros for ids no pixel holds) and
        Tensor[B, S] float pixel counts.

    Raises:
        TypeError: an input that is not a tensor, a non-float ``features``, a
            non-integer ``segments``, or a ``num_segments`` that is not an int.
        ValueError: wrong ranks, batch sizes or devices, or an unknown ``mode``.
    """
    V.check_tensor("features", features)
    V.check_tensor("segments", segments)
    V.check_rank("features", features, 4, "(B, h, w, C)")
    V.check_rank("segments", segments, 3, "(B, H, W)")
    V.check_floating("features", features)
    V.check_integer("segments", segments)
    V.check_same_device("features", features, "segments", segments)
    V.check_choice("mode", mode, tuple(_TAPS))
    batch, (height, width) = segments.shape[0], segments.shape[-2:]
    shared, h, w, channels = features.shape[0] == 1, features.shape[1], features.shape[2], features.shape[3]
    if not shared and features.shape[0] != batch:
        raise ValueError(f"features must have batch size 1 or that of segments ({batch}), got {features.shape[0]}.")
    segments = segments.long()
    num = int(segments.max()) + 1 if num_segments is None else V.check_int("num_segments", num_segments, 1)
    wy, ry = _taps(interpolation_matrix(h, height, mode, features.dtype, features.device), _TAPS[mode])  # (H, ty)
    wx, rx = _taps(interpolation_matrix(w, width, mode, features.dtype, features.device), _TAPS[mode])  # (W, tx)
    # Entry (b, s, cell) of A gets wy[i, a] * wx[j, c] for every pixel (i, j) of superpixel s
    # and every tap (a, c) of that pixel.
    row = torch.arange(batch, device=segments.device).view(batch, 1, 1) * num + segments  # (B, H, W)
    cell = ry.view(1, height, 1, -1, 1) * w + rx.view(1, 1, width, 1, -1)  # (1, H, W, ty, tx)
    weight = wy.view(1, height, 1, -1, 1) * wx.view(1, 1, width, 1, -1)
    rows = row.view(batch, height, width, 1, 1).expand_as(weight.expand(batch, -1, -1, -1, -1))
    values = weight.expand(batch, -1, -1, -1, -1).reshape(-1)
    if num * h * w <= _DENSE_LIMIT:  # small: a dense A by one scatter, then a batched matmul
        dense = torch.zeros(batch * num * h * w, dtype=features.dtype, device=features.device)
        dense.index_add_(0, (rows * (h * w) + cell).reshape(-1), values)
        dense = dense.view(batch, num, h * w)
        summed = (dense @ features.reshape(-1 if not shared else 1, h * w, channels)).reshape(-1, channels)
    else:  # large (a 512 x 512 image): sparse A, its duplicates summed by coalesce
        if shared:  # every image reads the one table
            cols = cell.expand_as(rows)
        else:  # block diagonal: image b's rows read image b's cells
            cols = (rows // num) * (h * w) + cell
        size = (batch * num, (1 if shared else batch) * h * w)
        matrix = torch.sparse_coo_tensor(torch.stack([rows.reshape(-1), cols.reshape(-1)]), values, size,
                                         check_invariants=False).coalesce()  # indices in range by construction
        summed = torch.sparse.mm(matrix, features.reshape(-1, channels))
    counts = torch.zeros(batch * num, dtype=features.dtype, device=features.device)
    counts.index_add_(0, row.reshape(-1), torch.ones(row.numel(), dtype=features.dtype, device=features.device))
    tokens = summed / counts.clamp(min=1).unsqueeze(1)
    return tokens.view(batch, num, channels), counts.view(batch, num)
