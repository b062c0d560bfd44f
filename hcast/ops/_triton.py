"""Triton kernels for superpixel pooling and farthest point sampling.

Used by :func:`hcast.ops.superpixel_pool` and :func:`hcast.ops.farthest_point_sampling`
for CUDA tensors when Triton is installed; the torch code in those modules is the
fallback and the reference. The launchers here take already validated inputs. They
also run on CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1`` set before
``import triton``), which is how the tests compare them with the torch path.

- ``superpixel_pool``: one launch accumulates the per-id sums and cell counts with
  atomic adds (float32 accumulation, float64 for float64 features); the division and
  the padding mask are elementwise torch ops. The backward pass is a gather in torch.
- ``farthest_point_sampling``: one launch for the whole call, one program per point
  cloud looping over the samples; each program keeps its points' float64 minimum
  distances in registers, so the N points of a cloud must fit one block
  (``N <= MAX_FPS_POINTS``; :func:`hcast.ops.farthest_point_sampling` sends larger
  clouds to the torch path). Squared distances are
  summed channel after channel like DGL's CPU and CUDA kernels; compiled for a GPU the
  multiply-add is fused (FMA), as nvcc compiles DGL's CUDA kernel by default, while the
  interpreter and the torch path round the product first, as DGL's CPU kernel does.
  The two can differ in the last bit, which only matters for near-exact ties.
"""
from __future__ import annotations

import functools

import torch

__all__ = ["available", "superpixel_pool", "farthest_point_sampling", "MAX_FPS_POINTS"]

MAX_FPS_POINTS = 8192

try:  # Triton is optional: CPU-only installs and macOS do without it.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where triton is missing
    triton = None
    tl = None


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """True if Triton can be imported (the ops still pick it only for CUDA tensors)."""
    return triton is not None


if triton is not None:

    @triton.jit
    def _segment_sum_kernel(
        features_ptr,  # (P, C) contiguous, P = B*H*W grid cells
        ids_ptr,  # (P,) int64, already offset by batch * S
        sums_ptr,  # (B*S, C) accumulation dtype, zero-initialised
        counts_ptr,  # (B*S,) int32, zero-initialised
        num_cells,
        channels,
        BLOCK_P: tl.constexpr,
        BLOCK_C: tl.constexpr,
    ):
        pid_p = tl.program_id(0)
        pid_c = tl.program_id(1)
        cells = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        chans = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        cell_ok = cells < num_cells
        ok = cell_ok[:, None] & (chans < channels)[None, :]
        ids = tl.load(ids_ptr + cells, mask=cell_ok, other=0)
        x = tl.load(features_ptr + cells[:, None].to(tl.int64) * channels + chans[None, :],
                    mask=ok, other=0.0)
        x = x.to(sums_ptr.dtype.element_ty)
        tl.atomic_add(sums_ptr + ids[:, None] * channels + chans[None, :], x, mask=ok)
        # The first channel block also counts the cells of each id.
        ones = tl.full([BLOCK_P], 1, tl.int32)
        tl.atomic_add(counts_ptr + ids, ones, mask=cell_ok & (pid_c == 0))

    @triton.jit
    def _fps_kernel(
        points_ptr,  # (B, N, C), any float dtype, arbitrary strides
        out_ptr,  # (B, K) int64
        num_points,
        channels,
        num_samples,
        start_idx,
        stride_b,
        stride_n,
        stride_c,
        BLOCK_N: tl.constexpr,
    ):
        b = tl.program_id(0).to(tl.int64)
        rows = tl.arange(0, BLOCK_N)
        row_ok = rows < num_points
        cloud = points_ptr + b * stride_b
        out = out_ptr + b * num_samples
        # DGL sets the distances at the first step and takes minima later; starting
        # from +inf and always taking the minimum is the same for finite points.
        min_dist = tl.full([BLOCK_N], float("inf"), tl.float64)
        current = tl.zeros([], tl.int64) + start_idx
        tl.store(out, current)
        for i in range(1, num_samples):
            dist = tl.zeros([BLOCK_N], tl.float64)
            # Channel after channel, as DGL's kernels sum (one thread per point there,
            # one lane per point here); on GPUs the multiply-add fuses as nvcc fuses it.
            for d in range(0, channels):
                x = tl.load(cloud + rows * stride_n + d * stride_c, mask=row_ok, other=0.0)
                s = tl.load(cloud + current * stride_n + d * stride_c)
                diff = x.to(tl.float64) - s.to(tl.float64)
                dist += diff * diff
            min_dist = tl.minimum(min_dist, dist)
            # Padding rows get -1 so they never win; argmax keeps the first maximum.
            current = tl.argmax(tl.where(row_ok, min_dist, -1.0), axis=0, tie_break_left=True)
            current = current.to(tl.int64)
            tl.store(out + i, current)


class _SuperpixelPoolFunction(torch.autograd.Function):
    """Triton forward (sums + counts), torch backward (gather of grad / count)."""

    @staticmethod
    def forward(ctx, features, flat_ids, num_bins):
        tokens, counts = _segment_mean_forward(features, flat_ids, num_bins)
        ctx.save_for_backward(flat_ids, counts)
        ctx.features_shape = features.shape
        ctx.mark_non_differentiable(counts)
        return tokens, counts

    @staticmethod
    def backward(ctx, grad_tokens, _grad_counts):
        flat_ids, counts = ctx.saved_tensors
        scaled = grad_tokens / counts.clamp(min=1).to(grad_tokens.dtype)[:, None]
        grad_features = scaled.index_select(0, flat_ids).view(ctx.features_shape)
        return grad_features, None, None


def _segment_mean_forward(features: torch.Tensor, flat_ids: torch.Tensor, num_bins: int):
    cells = flat_ids.numel()
    channels = features.shape[-1]
    acc_dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
    sums = torch.zeros(num_bins, channels, dtype=acc_dtype, device=features.device)
    counts = torch.zeros(num_bins, dtype=torch.int32, device=features.device)
    block_c = min(triton.next_power_of_2(channels), 128)
    block_p = 32
    grid = (triton.cdiv(cells, block_p), triton.cdiv(channels, block_c))
    _segment_sum_kernel[grid](
        features.reshape(cells, channels).contiguous(), flat_ids.contiguous(), sums, counts,
        cells, channels, BLOCK_P=block_p, BLOCK_C=block_c,
    )
    tokens = (sums / counts.clamp(min=1).to(acc_dtype)[:, None]).to(features.dtype)
    return tokens, counts


def superpixel_pool(
    features: torch.Tensor, segments: torch.Tensor, num_segments: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton superpixel pooling; same contract as :func:`hcast.ops.superpixel_pool`
    with ``segments`` already resized to the feature grid and checked."""
    batch, _, _, channels = features.shape
    offsets = torch.arange(batch, device=segments.device).mul_(num_segments)
    flat_ids = (segments.reshape(batch, -1) + offsets[:, None]).reshape(-1)
    tokens, counts = _SuperpixelPoolFunction.apply(features, flat_ids, batch * num_segments)
    return (tokens.view(batch, num_segments, channels),
            (counts == 0).view(batch, num_segments))


def farthest_point_sampling(
    points: torch.Tensor, num_samples: int, start_idx: int
) -> torch.Tensor:
    """Triton farthest point sampling; same contract as
    :func:`hcast.ops.farthest_point_sampling` for checked inputs of at most
    ``MAX_FPS_POINTS`` points per cloud (the caller picks the torch path above that)."""
    batch, num_points, channels = points.shape
    if num_points > MAX_FPS_POINTS:
        raise ValueError(f"points: the Triton kernel takes at most {MAX_FPS_POINTS} points per "
                         f"cloud, got {num_points}; call hcast.ops.farthest_point_sampling.")
    points = points.detach()
    out = torch.empty(batch, num_samples, dtype=torch.int64, device=points.device)
    block_n = max(triton.next_power_of_2(num_points), 16)
    _fps_kernel[(batch,)](
        points, out, num_points, channels, num_samples, start_idx,
        points.stride(0), points.stride(1), points.stride(2),
        BLOCK_N=block_n, num_warps=8 if block_n >= 1024 else 4,
    )
    return out
