"""Superpixel pooling and farthest point sampling at CAST's sizes, hcast vs a
straightforward reference.

- superpixel_pool: B=64 feature grids of 28x28 cells, C=384 (cast_small's stem output
  for 224x224 images), 196 superpixel ids given at 224x224 and resized by nearest
  neighbour. Reference: a per-image loop building a one-hot (S, H*W) matrix and
  multiplying it with the features.
- farthest_point_sampling: 65 samples from 197 points (64 centroids + CAST's mean token
  from 196 superpixel tokens), C=384, B=64. Reference: a per-image numpy loop over the
  samples (vectorised over points), i.e. DGL's algorithm without batching.

Run ``python benchmarks/_pool_fps.py``; ``benchmarks/ops.py`` includes these rows.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from hcast.ops import farthest_point_sampling, superpixel_pool

BATCH, GRID, CHANNELS, IMAGE, SEGMENTS = 64, 28, 384, 224, 196
FPS_POINTS, FPS_SAMPLES = 197, 65


def _time_ms(fn, min_time: float = 0.5, min_runs: int = 3) -> float:
    """Median wall time of ``fn()`` in milliseconds after one warm-up call."""
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000.0 * float(np.median(times))


def _superpixel_ids(generator: torch.Generator) -> torch.Tensor:
    """(B, 224, 224) ids: a 14x14 grid of 16x16 blocks with jittered borders and
    shuffled labels, 196 ids per image."""
    side = IMAGE // 14
    rows = torch.arange(IMAGE)[:, None] // side
    cols = torch.arange(IMAGE)[None, :] // side
    jitter = torch.randint(-1, 2, (BATCH, IMAGE, IMAGE), generator=generator)
    grid = (rows * 14 + cols)[None] + jitter
    grid = grid.clamp_(0, SEGMENTS - 1)
    perm = torch.stack([torch.randperm(SEGMENTS, generator=generator) for _ in range(BATCH)])
    return torch.gather(perm, 1, grid.view(BATCH, -1)).view(BATCH, IMAGE, IMAGE)


def reference_superpixel_pool(features: torch.Tensor, segments: torch.Tensor):
    """One image at a time: nearest-resize, one-hot matrix, matmul, divide."""
    batch, h, w, c = features.shape
    ids = F.interpolate(segments[:, None].float(), size=(h, w), mode="nearest")[:, 0].long()
    num = int(ids.max()) + 1
    tokens, masks = [], []
    for b in range(batch):
        one_hot = F.one_hot(ids[b].reshape(-1), num).T.to(features.dtype)  # (S, HW)
        counts = one_hot.sum(1)
        tokens.append(one_hot @ features[b].reshape(-1, c) / counts.clamp(min=1)[:, None])
        masks.append(counts == 0)
    return torch.stack(tokens), torch.stack(masks)


def reference_fps(points: np.ndarray, num_samples: int, start_idx: int = 0) -> np.ndarray:
    """One cloud at a time, one sample at a time, numpy over the points."""
    out = np.empty((points.shape[0], num_samples), dtype=np.int64)
    for b, cloud in enumerate(points.astype(np.float64)):
        current = start_idx
        out[b, 0] = current
        min_dist = np.full(cloud.shape[0], np.inf)
        for i in range(1, num_samples):
            min_dist = np.minimum(min_dist, ((cloud - cloud[current]) ** 2).sum(1))
            current = int(np.argmax(min_dist))
            out[b, i] = current
    return out


def bench_pool_fps(threads: int = 2) -> list[dict]:
    """Time both ops at CAST's sizes on this machine's CPU with ``threads`` threads.

    Returns:
        rows ``{"op", "impl", "ms_per_call", "speedup"}``; ``speedup`` is the
        reference's time over the row's (1.0 for the reference).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        features = torch.randn(BATCH, GRID, GRID, CHANNELS, generator=g)
        segments = _superpixel_ids(g)
        got, got_mask = superpixel_pool(features, segments)
        want, want_mask = reference_superpixel_pool(features, segments)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        assert torch.equal(got_mask, want_mask)
        pool_ref = _time_ms(lambda: reference_superpixel_pool(features, segments))
        pool_ours = _time_ms(lambda: superpixel_pool(features, segments))

        points = torch.randn(BATCH, FPS_POINTS, CHANNELS, generator=g)
        points_np = points.numpy()
        assert np.array_equal(farthest_point_sampling(points, FPS_SAMPLES).numpy(),
                              reference_fps(points_np, FPS_SAMPLES))
        fps_ref = _time_ms(lambda: reference_fps(points_np, FPS_SAMPLES))
        fps_ours = _time_ms(lambda: farthest_point_sampling(points, FPS_SAMPLES))
    finally:
        torch.set_num_threads(previous)

    pool_size = f"B={BATCH}, {GRID}x{GRID}x{CHANNELS}, {SEGMENTS} ids at {IMAGE}x{IMAGE}"
    fps_size = f"B={BATCH}, {FPS_SAMPLES} of {FPS_POINTS} points, C={CHANNELS}"
    return [
        dict(op=f"superpixel_pool ({pool_size})", impl="reference: per-image one-hot matmul",
             ms_per_call=round(pool_ref, 2), speedup=1.0),
        dict(op=f"superpixel_pool ({pool_size})", impl="hcast (torch index_add, CPU)",
             ms_per_call=round(pool_ours, 2), speedup=round(pool_ref / pool_ours, 2)),
        dict(op=f"farthest_point_sampling ({fps_size})", impl="reference: per-image numpy loop",
             ms_per_call=round(fps_ref, 2), speedup=1.0),
        dict(op=f"farthest_point_sampling ({fps_size})", impl="hcast (torch, batched, CPU)",
             ms_per_call=round(fps_ours, 2), speedup=round(fps_ref / fps_ours, 2)),
    ]


if __name__ == "__main__":
    rows = bench_pool_fps()
    print(f"{'op':<70} {'impl':<38} {'ms/call':>9} {'speedup':>8}")
    for row in rows:
        print(f"{row['op']:<70} {row['impl']:<38} {row['ms_per_call']:>9.2f} {row['speedup']:>7.2f}x")
