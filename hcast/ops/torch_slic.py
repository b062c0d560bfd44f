"""Batched SLIC superpixels in torch, on the images' device.

SLIC (Achanta et al., "SLIC Superpixels Compared to State-of-the-Art Superpixel
Methods", TPAMI 2012) as scikit-image implements it, batched so that a GPU computes a
batch of superpixel maps at once: :func:`torch_slic`, the ``method="torch_slic"`` of
:func:`hcast.ops.superpixels`. Connectivity enforcement is :mod:`hcast.ops.connectivity`.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F

from hcast import _validation as V
from hcast.ops.connectivity import enforce_connectivity

__all__ = ["torch_slic", "working_size"]


def working_size(height: int, width: int, downsample: int = 2) -> Tuple[int, int]:
    """The ``(h, w)`` grid :func:`torch_slic` clusters for an H x W image:
    ``(max(1, H // downsample), max(1, W // downsample))``. It places at most one
    superpixel per cell of it (larger requests are clamped to ``h * w``)."""
    return max(1, int(height) // int(downsample)), max(1, int(width) // int(downsample))


def torch_slic(
        images: torch.Tensor,
        num_segments: int = 196,
        compactness: float = 10.0,
        num_iterations: int = 5,
        downsample: int = 2,
        min_size_factor: float = 0.25,
) -> torch.Tensor:
    """Batched SLIC superpixels in torch, on the images' device.

    Follows SLIC (Achanta et al., TPAMI 2012) as scikit-image implements it: CIE LAB
    colour, distance ``d_lab^2 / compactness^2 + d_xy^2 / step^2``, centres on a regular
    grid, each pixel compared with the 2 x 2 centres nearest to it (which covers SLIC's
    2S x 2S search window around every centre), then connectivity enforcement
    (:func:`~hcast.ops.enforce_connectivity`): components under ``min_size_factor *
    h*w / num_segments`` pixels join their largest neighbour. Everything is batched:
    distances are dense broadcast ops on the image layout, centres are updated by
    weighted ``bincount``; no Python loop runs over pixels or images.

    The clustering runs on the image average-pooled by ``downsample`` (CAST reads the ids
    on its 1/8 token grid), and the ids are brought back to full resolution by nearest
    neighbour, which keeps every region 4-connected.

    Args:
        images: (B,3,H,W) float RGB in [0, 1] (not normalised; :func:`superpixels`
            converts normalised images).
        num_segments: requested number of superpixels (>= 1); requests above one per
            pixel of the working resolution (``max(1, H // downsample) * max(1, W //
            downsample)``) are clamped to it.
        compactness: SLIC's m: larger values give more square superpixels.
        num_iterations: k-means iterations.
        downsample: integer factor of the working resolution (1 = full resolution).
        min_size_factor: minimum region size as a share of the mean superpixel size.

    Returns:
        (B,H,W) int64 ids, contiguous per image, each id one 4-connected region, at most
        ``num_segments`` per image (connectivity enforcement can split a cluster: the
        smallest regions then join their largest neighbours until the count fits).

    Raises:
        TypeError: ``images`` not a floating point tensor; ``num_segments``,
            ``downsample`` or ``num_iterations`` not an int.
        ValueError: ``images`` not (B, 3, H, W) or empty; ``num_segments``,
            ``downsample``, ``num_iterations`` or ``compactness`` out of range.
    """
    V.check_tensor("images", images)
    V.check_rank("images", images, 4, "(B, 3, H, W)")
    V.check_floating("images", images)
    if images.shape[1] != 3:
        raise ValueError(f"images must have shape (B, 3, H, W) (RGB in [0, 1]), got shape "
                         f"{tuple(images.shape)}.")
    V.check_non_empty("images", images, "(B, 3, H, W)")
    num_segments = V.check_int("num_segments", num_segments, 1)
    downsample = V.check_int("downsample", downsample, 1)
    num_iterations = V.check_int("num_iterations", num_iterations, 0)
    compactness = V.check_number("compactness", compactness, low=0, low_open=True)
    b, _, H, W = images.shape
    h, w = working_size(H, W, downsample)
    # One superpixel per working pixel at most; the grid below saturates there anyway.
    num_segments = min(num_segments, h * w)
    x = images.float()
    if (h, w) != (H, W):
        if H % downsample == 0 and W % downsample == 0:
            r = downsample
            x = x.view(b, 3, h, r, w, r).sum((3, 5)).div_(r * r)
        else:
            x = F.adaptive_avg_pool2d(x, (h, w))
    lab = _rgb_to_lab(x)
    gy, gx = _grid_shape(h, w, num_segments)
    cy, cx = 2 * -(-h // (2 * gy)), 2 * -(-w // (2 * gx))  # even cell sizes
    step = math.sqrt(h * w / (gy * gx))
    hp, wp = gy * cy, gx * cx
    yy = torch.arange(hp, device=x.device, dtype=x.dtype).view(1, 1, hp, 1).expand(b, 1, hp, wp)
    xx = torch.arange(wp, device=x.device, dtype=x.dtype).view(1, 1, 1, wp).expand(b, 1, hp, wp)
    lab = F.pad(lab, (0, wp - w, 0, hp - h))
    feat = torch.cat((lab / compactness, yy / step, xx / step), 1).contiguous()
    valid = torch.zeros(hp, wp, dtype=torch.bool, device=x.device)
    valid[:h, :w] = True
    labels = _slic_assign(feat, valid, gy, gx, num_iterations)[:, :h, :w]
    min_size = int(min_size_factor * h * w / num_segments)
    labels = enforce_connectivity(labels, min_size, max_segments=num_segments)
    if (h * downsample, w * downsample) == (H, W):
        r = downsample
        labels = labels.view(b, h, 1, w, 1).expand(b, h, r, w, r).reshape(b, H, W)
    elif (h, w) != (H, W):
        rows = torch.arange(H, device=x.device) * h // H
        cols = torch.arange(W, device=x.device) * w // W
        labels = labels[:, rows][:, :, cols]
    return labels


# ----------------------------------------------------------------------------- SLIC steps

def _rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) sRGB in [0,1] -> (B,3,H,W) CIE LAB (D65), as skimage.color.rgb2lab."""
    lin = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055).pow(2.4), rgb / 12.92)
    m = rgb.new_tensor([[0.412453, 0.357580, 0.180423],
                        [0.212671, 0.715160, 0.072169],
                        [0.019334, 0.119193, 0.950227]])
    white = rgb.new_tensor([0.95047, 1.0, 1.08883])
    xyz = torch.einsum("ij,bjhw->bihw", m / white[:, None], lin)
    f = torch.where(xyz > 0.008856, xyz.clamp_min(1e-12).pow(1 / 3),
                    7.787 * xyz + 16 / 116)
    fx, fy, fz = f.unbind(1)
    return torch.stack((116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)), 1)


def _grid_shape(h: int, w: int, num_segments: int) -> Tuple[int, int]:
    """Rows and columns of a grid of about ``num_segments`` square cells on h x w."""
    step = math.sqrt(h * w / num_segments)
    gy = min(h, max(1, round(h / step)))
    gx = min(w, max(1, round(w / step)))
    while gy * gx > num_segments:  # rounding up both sides can exceed the request
        if gy >= gx:
            gy -= 1
        else:
            gx -= 1
    return gy, gx


def _slic_assign(feat: torch.Tensor, valid: torch.Tensor, gy: int, gx: int,
                 num_iterations: int) -> torch.Tensor:
    """Batched SLIC iterations.

    ``feat`` (B,5,gy*cy,gx*cx) holds scaled (L,a,b,y,x) per pixel, with even cell sizes
    cy, cx; ``valid`` (gy*cy,gx*cx) bool marks pixels inside the image. Each quarter of a
    grid cell is compared with the 2x2 centres nearest to it, which covers SLIC's
    2S x 2S search window around every centre; all distances are dense broadcast ops on
    the image layout. Centres are updated from per-centre sums (one weighted ``bincount``
    per channel) and counts once per iteration.
    Returns (B, gy*cy, gx*cx) int64 centre index in [0, gy*gx).
    """
    b, c, hp, wp = feat.shape
    qy, qx = 2 * gy, 2 * gx  # quarter-cells
    sy, sx = hp // qy, wp // qx
    g = gy * gx
    dev = feat.device
    # layout (5, pixel of quarter, B, qy, qx): centres broadcast over the pixel dim and
    # channels are summed over the outer dim, so every op runs over contiguous rows
    fq = feat.view(b, c, qy, sy, qx, sx).permute(1, 3, 5, 0, 2, 4).reshape(c, sy * sx, b, qy, qx)
    vq = valid.view(qy, sy, qx, sx).permute(1, 3, 0, 2).reshape(sy * sx, 1, qy, qx)
    # initial centres: mean of each cell's valid pixels
    vf = vq.to(feat.dtype)
    cnt0 = vf.sum(0).view(gy, 2, gx, 2).sum((1, 3))
    sum0 = (fq * vf).sum(1).view(c, b, gy, 2, gx, 2).sum((3, 5)).transpose(0, 1)
    centres = sum0 / cnt0.clamp_min(1)  # (B,5,gy,gx)
    # candidate (a, b) of quarter (q, r) is padded centre ((q+1)//2 + a, (r+1)//2 + b),
    # that is element (q + 1 + 2a, r + 1 + 2b) of the padded grid repeated twice per axis
    far = 1e4  # centres outside the grid: never the nearest
    ids = F.pad(torch.arange(g, device=dev).view(gy, gx), (1, 1, 1, 1))
    ids = ids.repeat_interleave(2, 0).repeat_interleave(2, 1)
    shifts = [(1 + 2 * a, 1 + 2 * b_) for a in (0, 1) for b_ in (0, 1)]
    cand_ids = [ids[i:i + qy, j:j + qx] for i, j in shifts]
    flat = fq.reshape(c, -1)
    offs = (torch.arange(b, device=dev) * g).view(1, b, 1, 1)
    for it in range(num_iterations + 1):
        rep = F.pad(centres, (1, 1, 1, 1), value=far).repeat_interleave(2, 2).repeat_interleave(2, 3)
        best_d = best = None
        for (i, j), lab in zip(shifts, cand_ids):
            cen = rep[:, :, i:i + qy, j:j + qx].transpose(0, 1).unsqueeze(1)  # (5,1,B,qy,qx)
            sq = (fq - cen).square_()
            d = sq[0] + sq[1]  # (P,B,qy,qx); explicit adds beat sum(0) on CPU
            for k in range(2, c):
                d += sq[k]
            if best_d is None:
                best_d, best = d, lab.expand_as(d)
            else:
                closer = d < best_d
                best_d = torch.where(closer, d, best_d)
                best = torch.where(closer, lab, best)
        if it == num_iterations:
            break
        idx = torch.where(vq, best + offs, b * g).reshape(-1)  # padding -> spare bin
        sums = torch.stack([torch.bincount(idx, weights=f, minlength=b * g + 1) for f in flat])
        cnts = torch.bincount(idx, minlength=b * g + 1).to(feat.dtype)
        sums = sums[:, :-1].to(feat.dtype).view(c, b, gy, gx).transpose(0, 1)
        cnts = cnts[:-1].view(b, 1, gy, gx)
        centres = torch.where(cnts > 0, sums / cnts.clamp_min(1), centres)
    # back to image layout
    return best.reshape(sy, sx, b, qy, qx).permute(2, 3, 0, 4, 1).reshape(b, hp, wp)
