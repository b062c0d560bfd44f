"""Forward throughput of CAST-S next to timm's ViTs, on the CPU.

    python benchmarks/models.py [--batch 16] [--size 224] [--threads 2] [--repeats 5]
                                [--original /path/to/CAST/checkout]

Measures images/s of ``model(images, segments)`` under ``torch.inference_mode`` at batch
16, 224 x 224, with SEEDS superpixels computed beforehand (as a data loader would), and
FLOPs per image (``torch.utils.flop_counter.FlopCounterMode``; a multiply-add counts 2).
Rows:

* ``cast_small (hcast)``: this package.
* ``cast_small (reference)``: ``tests/reference_cast.py``, the original code's structure
  (unfused attention, three segment means, all four poolings), with the same weights and
  hcast's farthest point sampling in place of DGL's.
* ``cast_small (original)``: with ``--original PATH`` (a checkout of
  github.com/twke18/CAST), the authors' ``cast_models/cast_deit.py`` itself, with a
  stand-in ``dgl.geometry`` module whose ``farthest_point_sampler`` calls
  :func:`hcast.ops.farthest_point_sampling`, and the small shims timm >= 1.0 needs.
* ``deit_small_patch16_224`` and ``vit_small_patch8_224`` from timm.

Models are timed round-robin so that background load hits all of them alike; the table
reports the median of ``--repeats`` timed passes after one warm-up, and the largest
relative difference of each CAST output from hcast's.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import timm  # noqa: E402

import hcast  # noqa: E402,F401
from hcast.ops import farthest_point_sampling, superpixels  # noqa: E402

DGL_SHIM = '''
from hcast.ops import farthest_point_sampling


def farthest_point_sampler(pos, npoints, start_idx=None):
    return farthest_point_sampling(pos, npoints, 0 if start_idx is None else start_idx)
'''


def photos(batch: int, size: int) -> torch.Tensor:
    from skimage import data as skdata
    from skimage.transform import resize

    sources = [skdata.astronaut, skdata.coffee, skdata.chelsea, skdata.rocket, skdata.immunohistochemistry]
    imgs = [resize(sources[i % len(sources)](), (size, size), anti_aliasing=True) for i in range(batch)]
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float()
    mean = torch.tensor(timm.data.IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(timm.data.IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def reference_model(model: torch.nn.Module) -> torch.nn.Module:
    import reference_cast
    from test_cast_reference import to_original

    reference_cast.farthest_point_sampler = farthest_point_sampling  # DGL's role, as in the original
    ref = reference_cast.ReferenceCAST(num_classes=model.num_classes).eval()
    ref.load_state_dict(to_original(model), strict=True)
    return ref


def original_model(path: str, model: torch.nn.Module) -> torch.nn.Module:
    """The authors' cast_deit.cast_small, loaded with ``model``'s weights."""
    from test_cast_reference import to_original

    shim = Path(tempfile.mkdtemp()) / "dgl"
    shim.mkdir()
    (shim / "__init__.py").write_text("from . import geometry\n")
    (shim / "geometry.py").write_text(DGL_SHIM)
    sys.path[:0] = [str(shim.parent), path]
    import timm.layers
    import timm.models.registry as registry

    registry.register_model = lambda fn: fn  # keep hcast's registrations of the same names
    sys.modules.setdefault("timm.models.layers.helpers", timm.layers)  # moved in timm 1.0
    import cast_models.cast_deit as cast_deit
    import timm.models.vision_transformer as vit

    class Compat(cast_deit.CAST):
        """timm >= 1.0: no dist_token/head_dist/pre_logits, extra stem kwargs."""

        def __init__(self, **kwargs):
            embed = kwargs.pop("embed_layer")
            names = ("img_size", "patch_size", "in_chans", "embed_dim")
            kwargs["embed_layer"] = lambda **kw: embed(**{k: v for k, v in kw.items() if k in names})
            vit.VisionTransformer.dist_token = None
            vit.VisionTransformer.head_dist = None
            super().__init__(**kwargs)
            del vit.VisionTransformer.dist_token, vit.VisionTransformer.head_dist
            self.pre_logits = torch.nn.Identity()

    cast_deit.CAST = Compat
    orig = cast_deit.cast_small(num_classes=model.num_classes).eval()
    state = to_original(model)
    missing, unexpected = orig.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"original model did not take the weights: missing={missing} unexpected={unexpected}")
    return orig


def flops_per_image(fn, batch: int) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--original", type=str, default=None, help="path to a github.com/twke18/CAST checkout")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    images = photos(args.batch, args.size)
    segments = superpixels(images, num_segments=196, method="seeds")
    cast = timm.create_model("cast_small").eval()
    runs = {"cast_small (hcast)": lambda: cast(images, segments)}
    ref = reference_model(cast)
    runs["cast_small (reference)"] = lambda: ref(images, segments)
    if args.original:
        orig = original_model(args.original, cast)
        runs["cast_small (original)"] = lambda: orig(images, segments)
    for name in ("deit_small_patch16_224", "vit_small_patch8_224"):
        vit_model = timm.create_model(name, img_size=args.size).eval()
        runs[name] = (lambda m: lambda: m(images))(vit_model)

    times = {name: [] for name in runs}
    with torch.inference_mode():
        expected = runs["cast_small (hcast)"]()
        diffs = {}
        for name, fn in runs.items():
            out = fn()  # warm-up
            if name.startswith("cast_small"):
                diffs[name] = float((out - expected).abs().max() / expected.abs().max())
        flops = {name: flops_per_image(fn, args.batch) for name, fn in runs.items()}
        for _ in range(args.repeats):
            for name, fn in runs.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)

    base = "cast_small (original)" if args.original else "cast_small (reference)"
    base_ips = args.batch / statistics.median(times[base])
    print(f"batch {args.batch}, {args.size}x{args.size}, {args.threads} threads, torch {torch.__version__}, "
          f"timm {timm.__version__}, median of {args.repeats}; SEEDS superpixels precomputed")
    print(f"| model | images/s | vs {base} | GFLOP/image | GFLOP/s | max rel. diff vs hcast |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in runs:
        ips = args.batch / statistics.median(times[name])
        gflop = flops[name] / 1e9
        diff = f"{diffs[name]:.1e}" if name in diffs else "-"
        print(f"| {name} | {ips:.1f} | {ips / base_ips:.2f}x | {gflop:.2f} | {gflop * ips:.0f} | {diff} |")


if __name__ == "__main__":
    main()
