"""Accuracy of every inference path on a trained H-CAST: FPA and per-level accuracy beside fp32 eager.

Evaluates one model folder (e.g. the main job's ``runs/main_job/model``) on a dataset's
split through each path ``hcast evaluate`` / ``optimize_for_inference`` can take, on the
same precomputed images and superpixels, with :func:`hcast.train.evaluate`:

* fp32 eager (the reference), bf16 autocast eager,
* ``optimize_for_inference`` with ``fp32``, ``bf16`` and ``auto`` (what ``auto`` picks
  here is printed), optionally compiled (``--compile``: minutes),
* ONNX Runtime fp32 on the exported fixed-budget graph (``--no-onnx`` skips it).

A path whose plain FPA is more than 0.5 points below fp32 eager's must not be what
``auto`` picks (issue 24); the script prints that verdict. It also prints each path's
finest-level top-1 agreement with fp32 eager and its images/s in this run (a loaded
machine makes those slower; the accuracies do not depend on the load).

    python benchmarks/fast_paths_accuracy.py runs/main_job/model --data fashion-mnist --split test
"""
import argparse
import os
import tempfile
import time
import warnings

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import hcast  # noqa: F401  (registers the models)
from hcast.cli import _superpixel_transform, load_model_for_inference
from hcast.data import WithSuperpixels, create_dataset, create_eval_transform
from hcast.inference import optimize_for_inference
from hcast.precision import choose_precision, describe_cpu
from hcast.train import evaluate

MAX_FPA_DROP = 0.5  # points: the most a path may lose against fp32 eager and still be offered by `auto`


class OnnxRuntimeLevels(nn.Module):
    """An ONNX Runtime session as a module returning the per-level logits tuple."""

    def __init__(self, path: str, threads: int) -> None:
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def forward(self, images: torch.Tensor, segments: torch.Tensor):
        outputs = self.session.run(None, {"images": images.numpy(), "segments": segments.numpy()})
        return tuple(torch.from_numpy(o) for o in outputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a model folder, file or tag (as hcast evaluate takes it)")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--split", default="test")
    parser.add_argument("--num-samples", type=int, default=None, help="default: the whole split")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="add optimize_for_inference(compile=True) rows")
    parser.add_argument("--no-onnx", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, taxonomy, _, weights = load_model_for_inference(args.model, "cpu", None, True)
    transform = WithSuperpixels(create_eval_transform(model), _superpixel_transform(model, argparse.Namespace(
        superpixels=None, num_segments=None, superpixel_method=None)))
    dataset = create_dataset(args.data, args.data_root, split=args.split, transform=transform, taxonomy=taxonomy,
                             num_samples=args.num_samples)
    start = time.perf_counter()
    loader = DataLoader(dataset, batch_size=512, num_workers=0)
    images, segments, labels = [], [], []
    for (x, s), y in loader:
        images.append(x), segments.append(s), labels.append(y)
    images, segments, labels = torch.cat(images), torch.cat(segments), torch.cat(labels)
    print(f"{args.model} ({weights}) on {args.data} {args.split}: {len(labels)} images {tuple(images.shape[-2:])}, "
          f"superpixels up to {int(segments.max()) + 1} ids, computed in {time.perf_counter() - start:.0f} s")

    data = DataLoader(TensorDataset(images, segments, labels), batch_size=args.batch_size,
                      collate_fn=lambda b: ((torch.stack([x[0] for x in b]), torch.stack([x[1] for x in b])),
                                            torch.stack([x[2] for x in b])))
    model.eval()
    auto_dtype, auto_reason = choose_precision("auto", "cpu")
    paths = [("fp32 eager", model, None), ("bf16 autocast eager", model, torch.bfloat16)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for precision in ("fp32", "bf16", "auto"):
            module = optimize_for_inference(model, precision, compile=False)
            paths.append((f"optimize_for_inference({precision}) -> {module.path}", module, None))
        if args.compile:
            example = (images[:args.batch_size], segments[:args.batch_size])
            for precision in ("fp32", "bf16"):
                module = optimize_for_inference(model, precision, example, compile=True)
                paths.append((f"optimize_for_inference({precision}, compile=True) -> {module.path}", module, None))
    for w in caught:
        print(f"warning: {w.message}")
    tmp = tempfile.TemporaryDirectory()
    if not args.no_onnx:
        from hcast.export import export_onnx

        budget = int(segments.max()) + 1
        start = time.perf_counter()
        path = export_onnx(model, os.path.join(tmp.name, "model.onnx"), max_tokens=budget)
        print(f"ONNX export (max_tokens={budget}): {time.perf_counter() - start:.0f} s")
        paths.append((f"ONNX Runtime fp32 (fixed budget {budget})", OnnxRuntimeLevels(path, args.threads), None))

    rows, reference = [], None
    for name, module, amp in paths:
        start = time.perf_counter()
        with torch.inference_mode():
            metrics = evaluate(module, data, taxonomy, torch.device("cpu"), amp_dtype=amp)
            fine = torch.cat([_fine_predictions(module, x, s, amp) for (x, s), _ in data])
        seconds = time.perf_counter() - start
        reference = fine if reference is None else reference
        rows.append((name, metrics, (fine == reference).float().mean().item(), len(labels) / seconds))

    print(describe_cpu())
    print(f"load average (1, 5, 15 min): {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"auto picks {auto_dtype or 'float32'} here ({auto_reason})")
    levels = metrics["level_names"]
    print("| path | FPA (plain) | " + " | ".join(f"{n} acc." for n in levels) +
          " | FPA (consistent) | TICE | top-1 agreement with fp32 eager | images/s (this run) |")
    print("|---|---:|" + "---:|" * len(levels) + "---:|---:|---:|---:|")
    base = rows[0][1]["plain"]["fpa"]
    for name, m, agree, speed in rows:
        p, c = m["plain"], m["consistent"]
        accs = " | ".join(f"{100 * a:.2f}" for a in p["level_accuracy"])
        print(f"| {name} | {100 * p['fpa']:.2f} | {accs} | {100 * c['fpa']:.2f} | {100 * p['tice']:.2f} | "
              f"{100 * agree:.2f}% | {speed:.0f} |")
    for name, m, _, _ in rows[1:]:
        drop = 100 * (base - m["plain"]["fpa"])
        verdict = "within" if drop <= MAX_FPA_DROP else "OUTSIDE"
        print(f"{name}: FPA {drop:+.2f} points below fp32 eager ({verdict} the {MAX_FPA_DROP}-point bound)")


def _fine_predictions(module: nn.Module, images: torch.Tensor, segments: torch.Tensor, amp) -> torch.Tensor:
    from hcast.train.loop import level_logits

    with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
        return level_logits(module, images, segments)[0].float().argmax(-1)


if __name__ == "__main__":
    main()
