"""Superpixel quality: how well a superpixel map follows the image.

* :func:`explained_variation` (Moore et al., "Superpixel Lattices", CVPR 2008): the
  share of each image's colour variance that the per-superpixel mean colours explain,
  the measure ``benchmarks/`` reports for SEEDS, SLIC and :func:`hcast.ops.torch_slic`.

Class-label metrics of a segmentation (IoU, mIoU) are in
:mod:`hcast.ops.segmentation_metrics`.
"""
from __future__ import annotations

import torch

from hcast import _validation as V

__all__ = ["explained_variation"]


def explained_variation(images: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """Explained variation of a superpixel segmentation (Moore et al., CVPR 2008).

    The share of each image's colour variance that the per-segment mean colours explain:
    ``1 - sum_p |x_p - mean_seg(p)|^2 / sum_p |x_p - mean|^2``. 1 means every segment is
    flat-coloured; a single segment scores 0.

    Args:
        images (Tensor[B, C, H, W], float): any colour space (benchmarks use RGB in [0, 1]).
        segments (Tensor[B, H, W], integer): superpixel ids >= 0.

    Returns:
        Tensor[B], float64.

    Raises:
        TypeError: an input that is not a tensor, ``images`` not floating point,
            ``segments`` not integer.
        ValueError: ``images`` not 4-D or empty, ``segments`` not of shape (B, H, W)
            matching ``images``, a negative id, or inputs on different devices.
    """
    V.check_tensor("images", images)
    V.check_tensor("segments", segments)
    V.check_rank("images", images, 4, "(B, C, H, W)")
    V.check_floating("images", images)
    V.check_integer("segments", segments)
    V.check_non_empty("images", images, "(B, C, H, W)")
    expected = (images.shape[0],) + tuple(images.shape[2:])
    if tuple(segments.shape) != expected:
        raise ValueError(f"segments must have shape (B, H, W) = {expected} matching images (B, C, H, W), "
                         f"got shape {tuple(segments.shape)}.")
    V.check_same_device("images", images, "segments", segments)
    V.check_non_negative("segments", segments)
    b, c = images.shape[:2]
    x = images.double().flatten(2).transpose(1, 2)  # (B,N,C)
    seg = segments.long().flatten(1)
    s = int(seg.max()) + 1
    idx = seg + torch.arange(b, device=seg.device).view(b, 1) * s
    sums = torch.zeros(b * s, c, dtype=x.dtype, device=x.device).index_add_(0, idx.view(-1), x.reshape(-1, c))
    cnt = torch.bincount(idx.view(-1), minlength=b * s).clamp_min(1).to(x.dtype)
    means = (sums / cnt[:, None])[idx.view(-1)].view(b, -1, c)
    resid = ((x - means) ** 2).sum((1, 2))
    total = ((x - x.mean(1, keepdim=True)) ** 2).sum((1, 2))
    return 1 - resid / total.clamp_min(1e-12)
