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

* ``hcast optimize_for_inference(...)``: :func:`hcast.optimize_for_inference` with
  ``precision='auto'`` (bfloat16 weights cast once where the CPU has native bfloat16) and
  the other precision beside it, eager, and (unless ``--no-compile``) ``auto`` compiled
  by inductor with frozen weights.

Also, side by side: bfloat16 autocast of the reference and of hcast, ``torch.compile``
(hcast's default mode, and the fixed-budget mode ``max_tokens`` as one graph), the
fixed-budget mode eager, ONNX Runtime on the exported fixed-budget graph, and
end-to-end ``model(images)`` with SEEDS and ``torch_slic`` computed inside. The CPU's
capability flags (AVX2 / AVX-512 / AVX-512 BF16 / AMX / VNNI, torch's capability) and
the load average are printed with every table: rows measured on a loaded machine or with
emulated bfloat16 are no speed claims.

Models are timed round-robin so that background load hits all of them alike; the table
reports the best and the median of ``--repeats`` timed passes after one warm-up (first-call
compile and export times separately), each row's best against the original's fastest
path (with ``--original``; else the first row), the largest relative difference of each CAST output from
hcast's fp32 eager, and top-1 agreement with it.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import timm  # noqa: E402

import hcast  # noqa: E402,F401
from hcast.inference import optimize_for_inference  # noqa: E402
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


def _cpu_line() -> str:
    from hcast.precision import cpu_has_native_bf16, describe_cpu

    return (f"{describe_cpu()}; native bf16 (AVX-512 BF16 / AMX): "
            f"{'yes' if cpu_has_native_bf16() else 'NO: bf16 rows are emulated, not a speed claim'}")


def _load_line() -> str:
    try:
        return "load average (1, 5, 15 min): " + " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "load average: unknown"


def _autocast(fn):
    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return fn()
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--original", type=str, default=None, help="path to a github.com/twke18/CAST checkout")
    parser.add_argument("--max-tokens", type=int, default=256, help="token budget of the fixed-budget rows")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows (minutes to compile)")
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime row")
    parser.add_argument("--no-vit", action="store_true", help="skip timm's ViT rows")
    parser.add_argument("--no-reference", action="store_true", help="skip the reference (original structure) rows")
    parser.add_argument("--no-end-to-end", action="store_true", help="skip the rows with superpixels inside")
    parser.add_argument("--no-budget", action="store_true", help="skip the fixed-budget eager and compile rows")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(_cpu_line())
    print(_load_line() + " (before)")

    images = photos(args.batch, args.size)
    segments = superpixels(images, num_segments=196, method="seeds")
    cast = timm.create_model("cast_small").eval()
    budget = timm.create_model("cast_small", max_tokens=args.max_tokens, validate_args=False).eval()
    budget.load_state_dict(cast.state_dict())
    fast = timm.create_model("cast_small", validate_args=False).eval()
    fast.load_state_dict(cast.state_dict())
    ref = reference_model(cast)
    runs = {}
    if args.original:
        orig = original_model(args.original, cast)
        runs["original, fp32 eager"] = lambda: orig(images, segments)
        runs["original, bf16 autocast"] = _autocast(lambda: orig(images, segments))
    if not args.no_reference:
        runs["reference (original structure), fp32 eager"] = lambda: ref(images, segments)
        runs["reference (original structure), bf16 autocast"] = _autocast(lambda: ref(images, segments))
    runs["hcast, fp32 eager"] = lambda: cast(images, segments)
    runs["hcast, bf16 autocast"] = _autocast(lambda: cast(images, segments))
    # hcast.optimize_for_inference: auto (bf16 weights where native), and bf16 / fp32 beside it
    optimized = {"auto": optimize_for_inference(cast, "auto", compile=False)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bf16 on a CPU without it: measured on purpose
        other = "fp32" if optimized["auto"].dtype == torch.bfloat16 else "bf16"
        optimized[other] = optimize_for_inference(cast, other, compile=False)
    for key, module in optimized.items():
        runs[f"hcast optimize_for_inference({key}), eager"] = (lambda m: lambda: m(images, segments))(module)
    if not args.no_budget:
        runs[f"hcast fixed budget ({args.max_tokens}), fp32 eager"] = lambda: budget(images, segments)
    compile_seconds = {}
    if not args.no_compile:
        compiled_auto = optimize_for_inference(cast, "auto", compile=True)
        start = time.perf_counter()
        compiled_auto(images, segments)
        compile_seconds["hcast optimize_for_inference(auto), compiled"] = time.perf_counter() - start
        runs["hcast optimize_for_inference(auto), compiled (inductor, frozen weights)"] = (
            lambda: compiled_auto(images, segments))
        compiles = [("hcast, compile", fast, False)]
        if not args.no_budget:
            compiles.append((f"hcast fixed budget ({args.max_tokens}), compile fullgraph", budget, True))
        for label, model, fullgraph in compiles:
            compiled = torch.compile(model, fullgraph=fullgraph)
            for suffix, fn in (("fp32", (lambda c: lambda: c(images, segments))(compiled)),
                               ("bf16 autocast", _autocast((lambda c: lambda: c(images, segments))(compiled)))):
                start = time.perf_counter()
                with torch.inference_mode():
                    fn()
                compile_seconds[f"{label}, {suffix}"] = time.perf_counter() - start
                runs[f"{label}, {suffix}"] = fn
    if not args.no_onnx:
        import onnxruntime as ort

        from hcast.export import export_onnx

        path = Path(tempfile.mkdtemp()) / "cast_small.onnx"
        start = time.perf_counter()
        export_onnx(cast, path, max_tokens=args.max_tokens, img_size=(args.size, args.size))
        compile_seconds["ONNX Runtime (fixed budget), fp32"] = time.perf_counter() - start
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {"images": images.numpy(), "segments": segments.numpy()}
        runs["ONNX Runtime (fixed budget), fp32"] = lambda: torch.from_numpy(session.run(None, feed)[0])
    if not args.no_end_to_end:
        cast_seeds = timm.create_model("cast_small").eval()
        cast_seeds.load_state_dict(cast.state_dict())
        cast_slic = timm.create_model("cast_small", pretrained_cfg_overlay=dict(superpixel_method="torch_slic")).eval()
        cast_slic.load_state_dict(cast.state_dict())
        runs["hcast end to end model(images), SEEDS inside, fp32"] = lambda: cast_seeds(images)
        runs["hcast end to end model(images), torch_slic inside, fp32"] = lambda: cast_slic(images)
    if not args.no_vit:
        for name in ("deit_small_patch16_224", "vit_small_patch8_224"):
            vit_model = timm.create_model(name, img_size=args.size).eval()
            runs[name] = (lambda m: lambda: m(images))(vit_model)

    times = {name: [] for name in runs}
    with torch.inference_mode():
        expected = cast(images, segments)
        diffs, agree = {}, {}
        for name, fn in runs.items():
            out = fn()  # warm-up
            if not name.startswith(("deit", "vit")) and "end to end" not in name:
                out = out.float()
                diffs[name] = float((out - expected).abs().max() / expected.abs().max())
                agree[name] = float((out.argmax(1) == expected.argmax(1)).float().mean())
        flops = {name: flops_per_image(fn, args.batch) for name, fn in runs.items()
                 if not any(k in name for k in ("compile", "ONNX", "end to end", "bf16", "optimize"))}
        for _ in range(args.repeats):
            for name, fn in runs.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)

    # the original's fastest path (best pass) is what the optimized paths are held against
    originals = [name for name in runs if name.startswith("original")] or [next(iter(runs))]
    base = max(originals, key=lambda name: -min(times[name]))
    base_ips = args.batch / min(times[base])
    print(f"batch {args.batch}, {args.size}x{args.size}, {args.threads} threads, torch {torch.__version__}, "
          f"timm {timm.__version__}, {args.repeats} round-robin passes (best and median); SEEDS superpixels "
          f"precomputed except the end-to-end rows; random weights (outputs compared with hcast fp32 eager)")
    print(_cpu_line())
    print(_load_line() + " (after)")
    print(f"| path | images/s (best) | images/s (median) | vs {base} (best) | GFLOP/image "
          f"| max rel. diff vs hcast fp32 | top-1 agreement |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in runs:
        best = args.batch / min(times[name])
        median = args.batch / statistics.median(times[name])
        gflop = f"{flops[name] / 1e9:.2f}" if name in flops else "-"
        diff = f"{diffs[name]:.1e}" if name in diffs else "-"
        top1 = f"{100 * agree[name]:.0f}%" if name in agree else "-"
        print(f"| {name} | {best:.1f} | {median:.1f} | {best / base_ips:.2f}x | {gflop} | {diff} | {top1} |")
    for name, seconds in compile_seconds.items():
        print(f"first call (compile / export) of {name}: {seconds:.0f} s")


if __name__ == "__main__":
    main()
