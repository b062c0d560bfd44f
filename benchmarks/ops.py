"""Benchmark of hcast.ops: superpixel methods side by side, then pooling and FPS.

Superpixels on 224x224 real photos (scikit-image's sample images, flipped and cropped
to fill the batch): images/s and ms/img of

* ``torch_slic``, one batch of ``--batch`` images with ``torch.set_num_threads(threads)``;
* OpenCV SEEDS with H-CAST's settings, ``threads`` worker processes (multiprocessing);
* scikit-image SLIC, ``threads`` worker processes;

with each method's explained variation (EV, RGB), mean segment count, share of the
request, whether every id is one 4-connected region, and the id resolution. Then the
rows of ``benchmarks/_pool_fps.py`` (superpixel_pool, farthest_point_sampling).

Usage: python benchmarks/ops.py [--threads 2] [--batch 64] [--images 64]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from multiprocessing import get_context

import numpy as np
import torch
from skimage import data as skdata
from skimage.measure import label as cc_label
from skimage.transform import resize

from hcast.ops import explained_variation, superpixels

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina", "cat",
          "hubble_deep_field", "motorcycle_left" if hasattr(skdata, "motorcycle_left") else "coffee")


def photo_batch(n: int, size: int = 224) -> torch.Tensor:
    """(n,H,W,3) uint8: sample photos, then their flips and crops, resized to size."""
    base = []
    for name in dict.fromkeys(PHOTOS):
        try:
            img = getattr(skdata, name)()
        except Exception:  # a sample that needs a download (pooch) is skipped
            continue
        base.append(img[..., :3] if img.ndim == 3 else np.repeat(img[..., None], 3, -1))
    out = []
    k = 0
    while len(out) < n:
        img = base[k % len(base)]
        variant = k // len(base)
        if variant % 2:
            img = img[:, ::-1]
        if variant >= 2:  # central crops of decreasing size
            f = 1 - 0.1 * (variant // 2)
            h, w = img.shape[:2]
            ch, cw = int(h * max(f, 0.5)), int(w * max(f, 0.5))
            img = img[(h - ch) // 2:(h - ch) // 2 + ch, (w - cw) // 2:(w - cw) // 2 + cw]
        out.append((resize(img, (size, size), anti_aliasing=True) * 255).astype(np.uint8))
        k += 1
    return torch.from_numpy(np.stack(out))


def _worker(args):
    method, chunk, num_segments = args
    torch.set_num_threads(1)
    return superpixels(torch.from_numpy(chunk), num_segments, method=method).numpy()


def run_pool(method: str, images: torch.Tensor, num_segments: int, procs: int):
    chunks = np.array_split(images.numpy(), procs * 4)
    with get_context("fork").Pool(procs) as pool:
        pool.map(_worker, [(method, c[:1], num_segments) for c in chunks[:procs]])  # warm up
        t = time.perf_counter()
        parts = pool.map(_worker, [(method, c, num_segments) for c in chunks])
        dt = time.perf_counter() - t
    return torch.from_numpy(np.concatenate(parts)), dt


def run_torch_slic(images: torch.Tensor, num_segments: int, threads: int, batch: int):
    torch.set_num_threads(threads)
    superpixels(images[:2], num_segments, method="torch_slic")  # warm up
    outs, dt = [], 0.0
    for i in range(0, len(images), batch):
        t = time.perf_counter()
        outs.append(superpixels(images[i:i + batch], num_segments, method="torch_slic"))
        dt += time.perf_counter() - t
    return torch.cat(outs), dt


def all_connected(ids: torch.Tensor) -> bool:
    for seg in ids.numpy():
        for i in np.unique(seg):
            if cc_label(seg == i, connectivity=1).max() != 1:
                return False
    return True


def superpixel_rows(images: torch.Tensor, num_segments: int, threads: int, batch: int):
    rgb = images.permute(0, 3, 1, 2).float() / 255
    runs = [
        (f"torch_slic (batch {batch}, {threads} threads)",
         lambda: run_torch_slic(images, num_segments, threads, batch)),
        # the same with one thread: torch's OpenMP threads stall each other when other
        # processes compete for the cores, which shows up as a gap between these rows
        (f"torch_slic (batch {batch}, 1 thread)",
         lambda: run_torch_slic(images, num_segments, 1, batch)),
        (f"torch_slic ({threads} processes x 1 thread, batch {max(1, len(images) // (4 * threads))})",
         lambda: run_pool("torch_slic", images, num_segments, threads)),
        (f"SEEDS, H-CAST settings ({threads} processes)",
         lambda: run_pool("seeds", images, num_segments, threads)),
        (f"skimage SLIC ({threads} processes)",
         lambda: run_pool("slic", images, num_segments, threads)),
    ]
    rows = []
    for name, fn in runs:
        ids, dt = fn()
        n = len(images)
        counts = (ids.flatten(1).max(1).values + 1).double()
        rows.append({
            "method": name,
            "images/s": n / dt,
            "ms/img": 1000 * dt / n,
            "EV": explained_variation(rgb, ids).mean().item(),
            "segments": counts.mean().item(),
            "% requested": 100 * counts.mean().item() / num_segments,
            "connected": "yes" if all_connected(ids) else "no",
            "resolution": "x".join(map(str, ids.shape[1:])),
        })
    return rows


def format_table(rows, columns, floats="{:.2f}") -> str:
    def cell(r, c):
        v = r.get(c, "")
        return floats.format(v) if isinstance(v, float) else str(v)

    cells = [[cell(r, c) for c in columns] for r in rows]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(c) + " |" for c in cells]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2, help="torch threads / worker processes")
    p.add_argument("--batch", type=int, default=64, help="torch_slic batch size")
    p.add_argument("--images", type=int, default=64, help="number of 224x224 images")
    p.add_argument("--num-segments", type=int, default=196)
    args = p.parse_args(argv)

    images = photo_batch(args.images)
    rows = superpixel_rows(images, args.num_segments, args.threads, args.batch)
    for r in rows:
        r["op"] = "superpixels"
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    try:
        from _pool_fps import bench_pool_fps
    except ImportError:
        bench_pool_fps = None
    if bench_pool_fps is not None:
        torch.set_num_threads(args.threads)
        for r in bench_pool_fps(args.threads):
            r = dict(r)
            r["method"] = r.pop("impl", "")
            rows.append(r)
    columns = list(dict.fromkeys(["op", "method"] + [k for r in rows for k in r]))
    print(f"hcast.ops on 224x224 sample photos ({args.images} images, "
          f"{args.num_segments} segments requested), {args.threads} threads/processes, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(format_table(rows, columns))


if __name__ == "__main__":
    main()
