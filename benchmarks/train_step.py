"""The main job's fine-tuning step, this checkout against an older commit, side by side.

Times ``hcast.train.train_one_epoch`` on the main job's setting (the ``fashion-mnist``
recipe: ``hcast_tiny`` from scratch, 64x64 Fashion-MNIST images, 49 SEEDS superpixels
computed once, batch 64, AdamW through ``create_optimizer_and_scheduler``, the recipe's
``HCASTLoss`` and the training precision each version resolves for this CPU), with each
version's own code, in fresh processes that alternate (old, new, old, new, ...). The new
side also gets what ``finetune`` gives its loop (``AttentionBackendChooser`` under
``attention='auto'``); the first steps (warm-up, and the chooser's measuring) are not
timed. Prints one table with the CPU's capability flags and the load average.

    git worktree add /tmp/hcast_old e5d703e        # the code before issue 24
    python benchmarks/train_step.py --old /tmp/hcast_old [--rounds 3] [--steps 40]

The old tree must hold an ``hcast`` package with the same ``train_one_epoch`` /
``create_optimizer_and_scheduler`` / ``get_recipe`` API (true since 2026-11-22).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _child(code: str, data_path: str, steps: int, warmup: int, threads: int) -> None:
    sys.path.insert(0, code)
    import torch

    torch.set_num_threads(threads)
    import timm

    import hcast
    from hcast.hierarchy.losses import HCASTLoss
    from hcast.hierarchy.taxonomies import fashion_mnist_taxonomy
    from hcast.train import create_optimizer_and_scheduler, get_recipe, train_one_epoch
    try:  # before issue 22
        from hcast.train.distributed import resolve_training_precision
    except ImportError:  # the one precision rule, hcast.precision
        from hcast.precision import resolve_precision

        def resolve_training_precision(device, precision, verbose):
            return resolve_precision(precision, device, verbose, training=True)

    assert Path(hcast.__file__).resolve().is_relative_to(Path(code).resolve()), hcast.__file__
    data = torch.load(data_path)
    config = get_recipe("fashion-mnist").config
    taxonomy = fashion_mnist_taxonomy()
    torch.manual_seed(0)
    model = timm.create_model("hcast_tiny", level_classes=list(taxonomy.num_classes), img_size=64)
    if hasattr(model, "set_level_outputs"):
        model.set_level_outputs(True)
    model.train()
    optimizer, scheduler = create_optimizer_and_scheduler(model, config, steps + warmup, config.lr)[:2]
    criterion = HCASTLoss(kl_weight=config.kl_weight, label_smoothing=config.label_smoothing)
    device = torch.device("cpu")
    amp_dtype = resolve_training_precision(device, config.precision, verbose=False)
    batch = config.batch_size
    images, segments, labels = data["images"], data["segments"], data["labels"]
    batches = [((images[i:i + batch], segments[i:i + batch]), labels[i:i + batch])
               for i in range(0, len(labels) - batch + 1, batch)]
    extra = {}
    try:
        from hcast.train import AttentionBackendChooser
        extra["attention"] = AttentionBackendChooser()
    except ImportError:
        pass

    def run(n: int, num_updates: int) -> float:
        loader = [batches[(num_updates + k) % len(batches)] for k in range(n)]
        start = time.perf_counter()
        train_one_epoch(model, loader, criterion, optimizer, taxonomy, device, scheduler=scheduler,
                        num_updates=num_updates, amp_dtype=amp_dtype, progress=False, **extra)
        return time.perf_counter() - start

    run(warmup, 0)
    seconds = run(steps, warmup)
    chosen = getattr(extra.get("attention"), "chosen", None)
    print(json.dumps(dict(images_per_s=steps * batch / seconds, amp=str(amp_dtype), attention=chosen)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="a checkout of the older commit (git worktree add ...)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating processes per side")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per process")
    parser.add_argument("--warmup", type=int, default=12, help="untimed steps first (the chooser measures in them)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", nargs=2, metavar=("CODE", "DATA"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], args.child[1], args.steps, args.warmup, args.threads)
        return

    sys.path.insert(0, str(ROOT))
    import subprocess as sp

    import torch

    from hcast.data.fashion_mnist import read_idx
    from hcast.ops import superpixels
    from hcast.precision import describe_cpu

    root = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
    raw_images = torch.from_numpy(read_idx(root / "train-images-idx3-ubyte.gz"))
    raw_labels = torch.from_numpy(read_idx(root / "train-labels-idx1-ubyte.gz"))
    count = 64 * 16
    gray = raw_images[:count].float().div(255)[:, None]
    images = torch.nn.functional.interpolate(gray, size=(64, 64), mode="bilinear", align_corners=False)
    images = ((images - 0.5) / 0.5).expand(-1, 3, -1, -1).contiguous()
    segments = superpixels((images * 0.5 + 0.5).clamp(0, 1), 49, method="seeds")
    with tempfile.TemporaryDirectory() as tmp:
        data_path = os.path.join(tmp, "data.pt")
        torch.save(dict(images=images, segments=segments, labels=raw_labels[:count].long()), data_path)
        results = {"old": [], "new": []}
        info = {}
        load_before = os.getloadavg()
        for _ in range(args.rounds):
            for side, code in (("old", os.path.abspath(args.old)), ("new", str(ROOT))):
                out = sp.run([sys.executable, __file__, "--old", args.old, "--child", code, data_path,
                              "--steps", str(args.steps), "--warmup", str(args.warmup),
                              "--threads", str(args.threads)], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": code})
                if out.returncode:
                    sys.exit(f"{side} ({code}) failed:\n{out.stderr[-3000:]}")
                row = json.loads(out.stdout.strip().splitlines()[-1])
                results[side].append(row["images_per_s"])
                info[side] = row
        load_after = os.getloadavg()
    old_rev = sp.run(["git", "-C", args.old, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    new_rev = sp.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"main job's training step (hcast_tiny, 64x64, 49 SEEDS superpixels, batch 64, {args.threads} threads), "
          f"{args.rounds} alternating processes per side, {args.steps} timed steps after {args.warmup} untimed")
    print(describe_cpu())
    print(f"load average (1, 5, 15 min): {' '.join(f'{x:.2f}' for x in load_before)} (before), "
          f"{' '.join(f'{x:.2f}' for x in load_after)} (after)")
    print("| code | images/s (best) | images/s (median) | vs old (best) | precision | attention backend |")
    print("|---|---:|---:|---:|---|---|")
    base = max(results["old"])
    for side, rev in (("old", old_rev), ("new", new_rev)):
        vals = results[side]
        print(f"| {side} ({rev}) | {max(vals):.1f} | {statistics.median(vals):.1f} | {max(vals) / base:.2f}x | "
              f"{info[side]['amp']} | {info[side]['attention'] or 'PyTorch default'} |")


if __name__ == "__main__":
    main()
