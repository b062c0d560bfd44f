"""The CPU's matmul peak at CAST-S's shapes, fp32 and bf16: the roofline for benchmarks/models.py.

Times ``torch.nn.functional.linear`` (what CAST's qkv, projection and MLP layers run) at
batch 16 x 197 tokens with CAST-S's widths, and one large square matmul, in fp32 and
bfloat16, best of 5 runs of 20 calls. A forward of cast_small is ~6.0 GFLOP per image
(benchmarks/models.py counts it), so ``peak / 6.0`` images/s bounds any implementation that
does the same FLOPs at the same precision.

    python benchmarks/matmul_peak.py [--threads 2]
"""
import argparse
import os
import time

import torch

from hcast.precision import describe_cpu

SHAPES = [(16 * 197, 384, 1152), (16 * 197, 384, 1536), (16 * 197, 1536, 384), (4096, 4096, 4096)]


def gflops(dtype: torch.dtype, m: int, k: int, n: int, calls: int = 20) -> float:
    a, w, b = torch.randn(m, k).to(dtype), torch.randn(n, k).to(dtype), torch.randn(n).to(dtype)
    for _ in range(3):
        torch.nn.functional.linear(a, w, b)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            torch.nn.functional.linear(a, w, b)
        best = min(best, (time.perf_counter() - start) / calls)
    return 2 * m * k * n / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(describe_cpu())
    print(f"{args.threads} threads, torch {torch.__version__}, load average {os.getloadavg()[0]:.2f} (1 min)")
    print("| (M, K, N) | fp32 GFLOP/s | bf16 GFLOP/s | bf16 / fp32 |")
    print("|---|---:|---:|---:|")
    for m, k, n in SHAPES:
        fp32, bf16 = gflops(torch.float32, m, k, n), gflops(torch.bfloat16, m, k, n)
        print(f"| ({m}, {k}, {n}) | {fp32:.0f} | {bf16:.0f} | {bf16 / fp32:.1f}x |")


if __name__ == "__main__":
    main()
