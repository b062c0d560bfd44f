"""Connectivity of superpixel ids: every id one 4-connected region, batched in torch.

SLIC's k-means clusters are not guaranteed to be connected; scikit-image's SLIC then
relabels connected components and merges small ones (``enforce_connectivity=True``).
:func:`enforce_connectivity` does the same for a batch on any device with no Python loop
over pixels or images: connected components by min-label propagation along runs of equal
ids with pointer jumping, small components merged into their largest neighbour, and,
when asked, the smallest regions merged until an image has at most ``max_segments`` ids
(a model's token budget relies on the count asked for). :func:`hcast.ops.torch_slic`
calls it.
"""
from __future__ import annotations

from typing import Optional, Union

import torch

from hcast import _validation as V

__all__ = ["enforce_connectivity"]


def enforce_connectivity(segments: torch.Tensor, min_size: int = 1,
                         max_segments: Optional[int] = None) -> torch.Tensor:
    """Split ids into 4-connected regions, merge regions under ``min_size`` pixels.

    Args:
        segments (Tensor[B, H, W], integer): ids (any values; equal ids that do not touch
            become separate regions).
        min_size: regions with fewer pixels join their largest neighbouring region (0 or
            1: none is merged).
        max_segments: if given, the smallest regions of an image then join their largest
            neighbours until it has at most this many ids.

    Returns:
        Tensor[B, H, W], int64: ids contiguous per image (every id in ``[0, S_b)``
        occurs), numbered in raster order of each region's first pixel, each id one
        4-connected region.

    Raises:
        TypeError: ``segments`` is not an integer tensor, ``min_size`` or
            ``max_segments`` not an int.
        ValueError: ``segments`` is not 3-D, ``min_size`` < 0 or ``max_segments`` < 1.
    """
    V.check_tensor("segments", segments)
    V.check_rank("segments", segments, 3, "(B, H, W)")
    V.check_integer("segments", segments)
    min_size = V.check_int("min_size", min_size, 0)
    if max_segments is not None:
        max_segments = V.check_int("max_segments", max_segments, 1)
    b, h, w = segments.shape
    if segments.numel() == 0:
        return segments.long()
    comp = _connected_components(segments.long())
    comp = _merge_small_components(comp, h, w, min_size)
    labels = _relabel_contiguous(comp).view(b, h, w)
    if max_segments is not None:
        labels = _limit_segments(labels, max_segments)
    return labels


def _run_starts(segments: torch.Tensor, dim: int) -> torch.Tensor:
    """Flat index of the first pixel of each pixel's run of equal ids along ``dim``."""
    b, h, w = segments.shape
    idx = torch.arange(h * w, device=segments.device).view(1, h, w).expand(b, h, w)
    start = torch.ones_like(segments, dtype=torch.bool)
    if dim == 2:
        start[:, :, 1:] = segments[:, :, 1:] != segments[:, :, :-1]
    else:
        start[:, 1:, :] = segments[:, 1:, :] != segments[:, :-1, :]
    return torch.where(start, idx, 0).cummax(dim).values.reshape(b, h * w)


def _connected_components(segments: torch.Tensor) -> torch.Tensor:
    """4-connected components of equal ids, batched.

    Args:
        segments: (B,H,W) int64 ids.
    Returns:
        (B,H*W) int64: for each pixel, the smallest flat pixel index of its component
        (the component's root). Each round takes the minimum label over every
        horizontal run of equal ids, then over every vertical run (segmented min by
        ``scatter_reduce``), then follows labels by pointer jumping; it converges in a
        few rounds for compact regions.
    """
    b, h, w = segments.shape
    n = h * w
    runs = [_run_starts(segments, 2), _run_starts(segments, 1)]
    comp = torch.arange(n, device=segments.device).expand(b, n).contiguous()
    while True:
        prev = comp
        for run in runs:
            run_min = torch.full_like(comp, n).scatter_reduce_(1, run, comp, "amin")
            comp = run_min.gather(1, run)
        # pointer jumping: a pixel's label is a pixel of the same component, follow it
        comp = comp.gather(1, comp)
        if torch.equal(comp, prev):
            return comp


def _merge_small_components(comp: torch.Tensor, h: int, w: int, min_size: Union[int, torch.Tensor],
                            max_passes: int = 8) -> torch.Tensor:
    """Merge components smaller than ``min_size`` pixels (an int, or a (B, 1) tensor: one
    size per image) into a neighbouring component.

    A small component joins its largest 4-neighbour when that neighbour is larger (ties
    broken by root index), so the merges form chains towards larger components and never
    cycles; chains are resolved by pointer jumping. Every merged region stays connected.
    ``comp`` (B,H*W) holds root pixel indices; the result does too.
    """
    b, n = comp.shape
    if n == 1 or (isinstance(min_size, int) and min_size <= 1):
        return comp
    offs = (torch.arange(b, device=comp.device) * n).view(b, 1)
    for _ in range(max_passes):
        size = torch.bincount((comp + offs).view(-1), minlength=b * n).view(b, n)
        key = size * n + torch.arange(n, device=comp.device)  # (size, root) order
        small = (size > 0) & (size < min_size)
        if not bool(small.any()):
            break
        pix_key = key.gather(1, comp).view(b, h, w)
        c = comp.view(b, h, w)
        best = torch.full((b, n), -1, dtype=torch.int64, device=comp.device)
        pairs = []
        if w > 1:
            pairs += [(c[:, :, :-1], pix_key[:, :, 1:]), (c[:, :, 1:], pix_key[:, :, :-1])]
        if h > 1:
            pairs += [(c[:, :-1, :], pix_key[:, 1:, :]), (c[:, 1:, :], pix_key[:, :-1, :])]
        for own, other_key in pairs:
            best.scatter_reduce_(1, own.reshape(b, -1), other_key.reshape(b, -1), "amax")
        # neighbours of the own component have the own key: they never win (not larger)
        target = torch.where(small & (best > key), best % n, torch.arange(n, device=comp.device))
        while True:
            nxt = target.gather(1, target)
            if torch.equal(nxt, target):
                break
            target = nxt
        new = target.gather(1, comp)
        if torch.equal(new, comp):
            break
        comp = new
    return comp


def _relabel_contiguous(comp: torch.Tensor) -> torch.Tensor:
    """(B,N) root indices -> (B,N) ids 0..S_b-1, numbered in raster order of the roots."""
    present = torch.zeros_like(comp, dtype=torch.bool).scatter_(1, comp, True)
    new_id = present.long().cumsum(1) - 1
    return new_id.gather(1, comp)


def _limit_segments(labels: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Merge each image's smallest regions into their largest neighbours until it has at
    most ``num_segments`` ids: connectivity enforcement can split a SLIC cluster into
    several regions, and a model's token budget relies on the count asked for.

    Args:
        labels: (B,H,W) int64 ids, contiguous per image, each id one 4-connected region.
        num_segments: the most ids an image may have (>= 1).
    Returns:
        (B,H,W) int64 ids, contiguous per image, at most ``num_segments`` per image.
    """
    b, h, w = labels.shape
    for _ in range(64):
        flat = labels.reshape(b, -1)
        count = flat.amax(1) + 1
        excess = count - num_segments
        if not bool((excess > 0).any()):
            return labels
        n = int(count.max())
        offs = (torch.arange(b, device=labels.device) * n).view(b, 1)
        sizes = torch.bincount((flat + offs).view(-1), minlength=b * n).view(b, n).float()
        sizes = torch.where(torch.arange(n, device=labels.device) < count[:, None], sizes, float("inf"))
        ordered = sizes.sort(1).values
        # merge every region at most as large as the excess-th smallest (more on ties: fewer ids)
        pick = ordered.gather(1, (excess.clamp_min(1) - 1).view(b, 1))
        min_size = torch.where(excess.view(b, 1) > 0, pick + 1, torch.zeros_like(pick)).long()
        comp = _merge_small_components(_connected_components(labels), h, w, min_size)
        labels = _relabel_contiguous(comp).view(b, h, w)
    raise RuntimeError(f"could not reduce the superpixels to num_segments={num_segments}; please report this.")
