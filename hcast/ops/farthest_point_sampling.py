"""Farthest point sampling (FPS) with the exact semantics of DGL's sampler.

CAST's graph pooling picks its cluster centroids with
``dgl.geometry.farthest_point_sampler(points.to(torch.float64), K, 0)``. DGL no longer
builds against recent torch releases, so hcast re-implements the same algorithm; the
indices are the ones DGL returns, which pretrained CAST / H-CAST checkpoints depend on.

DGL's CPU kernel (``src/geometry/cpu/geometry_op_impl.cc``, ``FarthestPointSampler``),
per point cloud of the batch:

1. ``result[0] = start_idx``; the first index is part of the output.
2. For each of the remaining ``num_samples - 1`` samples, every point's squared
   Euclidean distance to the last selected point is summed over the channels in
   channel order (``one_dist += (x_d - s_d) ** 2``); at the first step it *initialises*
   the point's distance (no large sentinel value), later steps keep the minimum, so
   each point holds its squared distance to the nearest selected point.
3. The next sample is the point with the largest distance, scanning ``j = 0..N-1`` with
   a strict ``>`` against a running maximum that starts at ``-1``: the *first* maximum
   wins ties. Already selected points have distance 0, so they are never picked while
   some point is farther; if every distance is 0 (fewer distinct points than samples)
   the first point with distance 0 is picked, i.e. index 0 or another already selected
   point, and indices repeat. hcast keeps that behaviour.
4. Indices are local to each point cloud, in ``[0, N)``.
"""
from __future__ import annotations

import torch

from hcast.ops import _triton
from hcast import _validation as V

__all__ = ["farthest_point_sampling"]


def _check_inputs(
    points: torch.Tensor, num_samples: int, start_idx: int, validate_args: bool = True
) -> tuple[int, int]:
    V.check_tensor("points", points)
    V.check_rank("points", points, 3, "(B, N, C)")
    V.check_floating("points", points)
    V.check_non_empty("points", points, "(B, N, C)")
    num_points = points.shape[1]
    num_samples = V.check_int("num_samples", num_samples, 1)
    if num_samples > num_points:
        raise ValueError(
            f"num_samples must be <= the number of points N={num_points} of points with "
            f"shape (B, N, C)={tuple(points.shape)}, got num_samples={num_samples}."
        )
    start_idx = V.check_int("start_idx", start_idx, 0)
    if start_idx >= num_points:
        raise ValueError(
            f"start_idx must be in [0, N-1] = [0, {num_points - 1}] for points of shape "
            f"{tuple(points.shape)}, got start_idx={start_idx}."
        )
    if validate_args:
        V.check_finite("points", points)
    return num_samples, start_idx


def _rescale_huge(points: torch.Tensor) -> torch.Tensor:
    """Scale float64 clouds whose squared distances could overflow by a power of two.

    A squared distance sums C terms of at most ``(2 M)^2`` for coordinates up to ``M``
    in magnitude; above ``M ~ 1e150`` that overflows float64 to infinity (and the
    Gram-matrix path to NaN), and every index would come out 0. Such clouds are
    multiplied by ``2**-e`` with ``2**e > M``: scaling by a power of two is exact, so
    the distances keep their order and ties (DGL's kernel itself would return
    overflowed, meaningless indices there). Clouds below the bound, every float32 or
    float16 cloud included, are left exactly as they are, so DGL's indices are kept.
    Runs without a host sync (one ``amax`` and a multiply by 1 where nothing is huge).
    """
    if points.dtype != torch.float64:
        return points  # float32's largest value squared is ~1e77: no overflow
    channels = points.shape[2]
    # (2 M)^2 * C stays below 2**1020 for M below 2**bound_exponent.
    bound_exponent = (1020 - 2 - max(channels - 1, 1).bit_length()) // 2
    peak = points.detach().abs().amax(dim=(1, 2), keepdim=True)  # (B, 1, 1)
    log2_peak = torch.log2(peak)
    # 2**-(floor(log2 peak) + 1): a power of two (exp2 of a whole number is exact), so the
    # scaling is exact; log2 / exp2 rather than frexp, which ONNX has no op for. The bound is
    # compared as an exponent: 2**505 as a constant would overflow the float32 scalars the
    # ONNX exporter writes (and the rescaling would silently never happen in ONNX Runtime).
    exponent = torch.floor(log2_peak) + 1.0
    scale = torch.where(log2_peak > bound_exponent, torch.exp2(-exponent), torch.ones_like(peak))
    return points * scale


def farthest_point_sampling(
    points: torch.Tensor, num_samples: int, start_idx: int = 0, *, validate_args: bool = True
) -> torch.Tensor:
    """Pick ``num_samples`` points per batch element by farthest point sampling.

    Same indices as ``dgl.geometry.farthest_point_sampler(points.double(), num_samples,
    start_idx)`` (DGL's CPU kernel): distances are squared Euclidean in float64, each
    point keeps its distance to the nearest selected point, the next sample is the
    farthest point and the first maximum (lowest index) wins ties. See the module
    docstring for the details, including repeated indices when fewer than
    ``num_samples`` points are distinct.

    Args:
        points (Tensor[B, N, C], float): B point clouds of N points in C dimensions.
        num_samples: the number of indices to return per cloud, in ``[1, N]``.
        start_idx: the first sample of every cloud, in ``[0, N)``. CAST puts the mean
            token at index 0 and starts there.
        validate_args: check that ``points`` is finite (one pass and a host sync);
            shape, dtype and range checks of the arguments always run. With False,
            non-finite points give meaningless indices.

    Returns:
        Tensor[B, num_samples], int64: indices into dimension 1 of ``points``; column 0
        is ``start_idx``.

    Autocast is off inside the op, so the indices under ``torch.autocast`` are the
    float64 ones.

    On CUDA tensors (eager) one Triton launch samples the whole batch. Elsewhere, and
    inside ``torch.compile`` / ``torch.export`` / ONNX export, all squared distances come
    from one batched float64 Gram matrix and the sampling loop runs over the fixed sample
    count with no host sync and no data-dependent shape (three small ops per sample); a
    cloud where, at some step, another point came within the Gram matrix's rounding bound
    of the farthest one is sampled again exactly with DGL's channel-ordered float64 sums
    (eager: one host sync per call, only those clouds; compiled / exported: a
    ``torch.cond`` branch). The indices are DGL's in every case (see
    ``_farthest_point_sampling_batched``).
    Not differentiable (returns indices).

    float64 clouds with coordinates above ~1e150 in magnitude, whose squared distances
    would overflow, are first scaled by a power of two (exact, so the picks are those of
    exact arithmetic); all other inputs are used as given.

    Raises:
        TypeError: if ``points`` is not a float tensor or ``num_samples`` / ``start_idx``
            not ints.
        ValueError: if ``points`` is not 3-D, is empty, holds NaN or infinity
            (with ``validate_args``), or ``num_samples`` / ``start_idx`` are out of range.
    """
    num_samples, start_idx = _check_inputs(points, num_samples, start_idx, validate_args)
    # Autocast would run the Gram matrix in bfloat16/float16 and change the picks: DGL's
    # indices need float64 distances, so autocast is switched off here.
    with torch.autocast(points.device.type, enabled=False):
        points = _rescale_huge(points.detach())
        # The Triton kernel holds a cloud's distances in registers: one block of points.
        if (points.is_cuda and _triton.available() and points.shape[1] <= _triton.MAX_FPS_POINTS
                and not torch.compiler.is_compiling()):
            return _triton.farthest_point_sampling(points, num_samples, start_idx)
        x = points.to(torch.float64)
        samples, unsure = _farthest_point_sampling_gram(x, num_samples, start_idx)
    # Outside the autocast region: a torch.cond inside one does not serialise with
    # torch.export; autocast never casts float64 tensors, so nothing below changes.
    return _resample_unsure(x, samples, unsure, start_idx)


def _gram_sq_dist(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All pairwise squared distances of x (B, N, C) float64 from one Gram matrix, and
    the bound ``tol`` (B, N) on their difference from DGL's channel-ordered sums.

    ``|x|^2 + |s|^2 - 2 x.s`` differs from the channel-ordered sum by at most
    ``64 * C * eps * (|x|^2 + max |s|^2)`` (both are float64 sums of C terms whose
    rounding error is bounded by ``C * eps`` times the magnitudes).
    """
    channels = x.shape[2]
    sq_norm = (x * x).sum(-1)  # (B, N)
    dist = torch.baddbmm(sq_norm[:, :, None] + sq_norm[:, None, :], x, x.transpose(1, 2), alpha=-2.0)
    eps = torch.finfo(torch.float64).eps
    tol = (64.0 * channels * eps) * (sq_norm + sq_norm.amax(dim=1, keepdim=True))
    return dist, tol + torch.finfo(torch.float64).tiny


def _farthest_point_sampling_gram(
    points: torch.Tensor, num_samples: int, start_idx: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """FPS on Gram-matrix distances with no host sync: (B, K) int64 picks and a (B,)
    bool ``unsure`` flag per cloud.

    Where ``unsure`` is False the picks are DGL's for certain: at every step the farthest
    point by Gram-matrix distance was farther than every other point by more than both
    points' rounding bounds, so DGL's channel-ordered distances pick the same point. Where
    it is True (another point came within the bounds at some step: exact ties, duplicated
    tokens, clouds with fewer distinct points than samples) the caller samples the cloud
    again exactly. The loop is three ops per sample (a row gather, a minimum, an argmax)
    on (B, N); the bound check runs once on all steps after the loop.
    """
    x = points.detach().to(torch.float64)
    batch, num_points, _ = x.shape
    current = torch.full((batch,), start_idx, dtype=torch.long, device=x.device)
    if num_samples == 1:
        return current[:, None], torch.zeros(batch, dtype=torch.bool, device=x.device)
    dist, tol = _gram_sq_dist(x)
    rows = dist.reshape(batch * num_points, num_points)
    offsets = torch.arange(batch, device=x.device) * num_points
    picks = [current]
    min_dists = []
    min_dist = None
    for _ in range(1, num_samples):
        row = rows.index_select(0, offsets + current)  # (B, N): distances to the last pick
        min_dist = row if min_dist is None else torch.minimum(min_dist, row)
        current = min_dist.argmax(dim=1)  # torch documents: first maximal index
        picks.append(current)
        min_dists.append(min_dist)
    samples = torch.stack(picks, dim=1)  # (B, K)
    steps = torch.stack(min_dists, dim=1)  # (B, K - 1, N)
    # A point j other than the pick p could be DGL's pick if d_j + tol_j >= d_p - tol_p.
    picked = torch.gather(steps, 2, samples[:, 1:, None])  # (B, K - 1, 1)
    picked_tol = torch.gather(tol, 1, samples[:, 1:])[..., None]
    close = (steps + tol[:, None, :]) >= (picked - picked_tol)  # the pick itself included
    unsure = (close.sum(dim=2) > 1).any(dim=1)
    return samples, unsure


def _resample_unsure(
    x: torch.Tensor, samples: torch.Tensor, unsure: torch.Tensor, start_idx: int
) -> torch.Tensor:
    """DGL's indices: the picks of :func:`_farthest_point_sampling_gram` with its unsure
    clouds sampled again exactly.

    x (B, N, C) float64, samples (B, K) int64, unsure (B,) bool. In eager the unsure
    clouds alone go through :func:`_farthest_point_sampling_torch` (one host sync per
    call to find them); under torch.compile / torch.export a ``torch.cond`` takes
    :func:`_farthest_point_sampling_reference` only when some cloud is unsure, so the
    graph has no host sync and no data-dependent shape.
    """
    num_samples = samples.shape[1]
    if torch.compiler.is_compiling():
        def exact(x, samples, unsure):
            reference = _farthest_point_sampling_reference(x, num_samples, start_idx)
            return torch.where(unsure[:, None], reference, samples)

        def keep(x, samples, unsure):
            return samples.clone()

        return torch.cond(unsure.any(), exact, keep, (x, samples, unsure))
    if bool(unsure.any()):
        rows = unsure.nonzero().squeeze(1)
        samples = samples.clone()
        samples[rows] = _farthest_point_sampling_torch(x[rows], num_samples, start_idx)
    return samples


def _farthest_point_sampling_batched(
    points: torch.Tensor, num_samples: int, start_idx: int
) -> torch.Tensor:
    """DGL's indices for checked, autocast-free inputs without the Triton kernel: the
    sync-free Gram-matrix loop plus an exact pass over its unsure clouds."""
    x = points.detach().to(torch.float64)
    samples, unsure = _farthest_point_sampling_gram(x, num_samples, start_idx)
    return _resample_unsure(x, samples, unsure, start_idx)


# Candidates whose distances the Gram-matrix shortcut cannot separate are resolved
# exactly; a cloud with more of them than this (e.g. a blank image: every token equal)
# is sampled again with the channel-ordered reference loop.
_MAX_EXACT_CANDIDATES = 32


def _farthest_point_sampling_torch(
    points: torch.Tensor, num_samples: int, start_idx: int
) -> torch.Tensor:
    """Fast exact CPU path: Gram-matrix distances plus an exact check of near ties.

    DGL sums the squared channel differences one channel after the other in float64;
    redoing that for every point at every step costs a (B, N, C) pass per sample. Here
    all pairwise squared distances come from one batched matmul,
    ``|x|^2 + |s|^2 - 2 x.s``, which differs from DGL's channel-ordered sum by at most
    ``tol = 64 * C * eps * (|x|^2 + max |s|^2)`` (both are float64 sums of C terms
    whose rounding error is bounded by ``C * eps`` times the magnitudes). At each step
    every point whose distance could, within ``tol``, reach the largest one is a
    candidate; a single candidate is DGL's pick for certain, several are compared with
    their exact channel-ordered distances (first maximum wins), and clouds with very
    many (degenerate clouds) fall back to :func:`_farthest_point_sampling_reference`.
    The result is bit-for-bit DGL's, at a fraction of the cost.
    """
    x = points.detach().to(torch.float64)
    batch, num_points, channels = x.shape
    if num_samples == 1:
        return torch.full((batch, 1), start_idx, dtype=torch.long, device=x.device)
    sq_norm = (x * x).sum(-1)  # (B, N)
    gram = torch.bmm(x, x.transpose(1, 2))  # (B, N, N)
    eps = torch.finfo(torch.float64).eps
    tol = (64.0 * channels * eps) * (sq_norm + sq_norm.amax(dim=1, keepdim=True))
    tol = tol + torch.finfo(torch.float64).tiny

    batch_index = torch.arange(batch, device=x.device)
    samples = torch.empty(batch, num_samples, dtype=torch.long, device=x.device)
    samples[:, 0] = start_idx
    current = samples[:, 0].clone()
    fallback = torch.zeros(batch, dtype=torch.bool, device=x.device)
    min_dist = None
    for i in range(1, num_samples):
        dist = sq_norm + sq_norm[batch_index, current][:, None] - 2.0 * gram[batch_index, current]
        min_dist = dist if min_dist is None else torch.minimum(min_dist, dist)
        current = min_dist.argmax(dim=1)
        lower = (min_dist - tol).amax(dim=1, keepdim=True)
        candidates = (min_dist + tol) >= lower  # (B, N)
        num_candidates = candidates.sum(dim=1)
        unsure = (num_candidates > 1) & ~fallback
        if bool(unsure.any()):
            too_many = unsure & (num_candidates > _MAX_EXACT_CANDIDATES)
            fallback |= too_many
            rows = (unsure & ~too_many).nonzero().squeeze(1)
            if rows.numel():
                current[rows] = _resolve_exactly(x[rows], candidates[rows], samples[rows, :i])
        samples[:, i] = current
    rows = fallback.nonzero().squeeze(1)
    if rows.numel():
        samples[rows] = _farthest_point_sampling_reference(x[rows], num_samples, start_idx)
    return samples


def _channel_ordered_sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared distances summed channel after channel, as DGL's kernel does.

    ``a`` (..., C) and ``b`` (..., C) broadcast; returns (...) float64. ``cumsum`` adds
    the channels in order (a plain ``.sum()`` reduces pairwise and can round differently).
    """
    diff = a - b
    return (diff * diff).cumsum(dim=-1)[..., -1]


def _resolve_exactly(
    x: torch.Tensor, candidates: torch.Tensor, selected: torch.Tensor
) -> torch.Tensor:
    """DGL's pick among near-tied candidates, from exact channel-ordered distances.

    x (R, N, C) float64, candidates (R, N) bool (at most ``_MAX_EXACT_CANDIDATES`` per
    row), selected (R, k) int64 samples so far. Returns (R,) int64.
    """
    rows = x.shape[0]
    width = int(candidates.sum(dim=1).max())
    # Candidate indices in ascending order; rows with fewer candidates are padded with
    # N (out of range), then clamped to N - 1 and masked out through ``valid``.
    order = torch.arange(x.shape[1], device=x.device).expand(rows, -1)
    keyed = torch.where(candidates, order, x.shape[1])
    cand_idx = keyed.sort(dim=1).values[:, :width]
    valid = cand_idx < x.shape[1]
    cand_idx = cand_idx.clamp(max=x.shape[1] - 1)
    cand_pts = torch.gather(x, 1, cand_idx[..., None].expand(-1, -1, x.shape[2]))
    sel_pts = torch.gather(x, 1, selected[..., None].expand(-1, -1, x.shape[2]))
    exact = _channel_ordered_sq_dist(cand_pts[:, :, None, :], sel_pts[:, None, :, :])
    exact = exact.amin(dim=2).masked_fill(~valid, -1.0)  # (R, width)
    return torch.gather(cand_idx, 1, exact.argmax(dim=1, keepdim=True)).squeeze(1)


def _farthest_point_sampling_reference(
    points: torch.Tensor, num_samples: int, start_idx: int
) -> torch.Tensor:
    """Reference path: DGL's loop, vectorised over batch and points, one (B, N, C)
    channel-ordered distance pass per sample."""
    points = points.detach().to(torch.float64)
    batch, num_points, channels = points.shape
    # A loop over the fixed sample count of gathers, minima and argmaxes: no host sync and
    # no data-dependent shape, so torch.compile, torch.export and ONNX take it as it is.
    current = torch.full((batch,), start_idx, dtype=torch.long, device=points.device)
    picks = [current]
    min_dist = None
    for _ in range(1, num_samples):
        selected = torch.gather(points, 1, current.view(batch, 1, 1).expand(batch, 1, channels))
        dist = _channel_ordered_sq_dist(points, selected)
        min_dist = dist if min_dist is None else torch.minimum(min_dist, dist)
        current = min_dist.argmax(dim=1)  # torch documents: first maximal index
        picks.append(current)
    return torch.stack(picks, dim=1)
