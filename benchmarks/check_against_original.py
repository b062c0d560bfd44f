"""Check hcast and the test oracle against the original authors' code, run from their repositories.

    python benchmarks/check_against_original.py --cast /tmp/orig/CAST --hiot /tmp/orig/HiOT \\
        --timm /tmp/orig/timm0412 [--out DIR] [--images 3] [--num-segments 196] [--seed 0]

``--cast``: a checkout (or ``git archive``) of github.com/twke18/CAST, with its
``cast_models/`` (``cast_deit.py``, ``cast.py``, ``graph_pool.py``, ``modules.py``,
``utils.py``) and ``moco-v3/suppix_utils/builder.py``. ``--hiot``: github.com/ngocquanai/HiOT
at commit b1a222b (H-CAST's code), with its ``cast_models/`` (``cast_deit_hier.py`` and the
files it imports). ``--timm``: a folder holding timm 0.4.12, the version both repositories
pin (their code subclasses timm 0.4's ``VisionTransformer``: ``dist_token``, ``pre_logits``
and a four-argument ``embed_layer`` are gone in timm 1.0), made with::

    pip download --no-deps timm==0.4.12 -d /tmp/wheels
    pip install --no-deps --target /tmp/orig/timm0412 /tmp/wheels/timm-0.4.12-py3-none-any.whl

Nothing of the authors' code is in this repository; it is imported from those folders at
run time. The authors' modules are imported with timm 0.4.12 in ``sys.modules['timm']``;
the installed timm (which hcast registers its models with) is put back right after, so
both live in one process, each module bound to its own timm. The only stand-in is DGL,
which cannot be installed beside current torch: ``dgl.geometry.farthest_point_sampler`` is
an in-memory module calling :func:`hcast.ops.farthest_point_sampling` (index-exact against
a port of DGL's kernel, ``tests/test_farthest_point_sampling.py``); each call is also
checked against ``tests/reference_cast.py``'s own float64 loop and the count of calls with
equal indices is printed.

Models, built by the authors' own functions with random weights (every floating-point
tensor of the state dict, BatchNorm running statistics included; the MoCo encoders' fixed
sin-cos ``pos_embed`` is kept, as no checkpoint of that model holds anything else):

* ``CAST-S DeiT``: ``cast_models/cast_deit.py`` ``cast_small(num_classes=1000)``, saved as
  DeiT's ``main_suppix.py`` saves (``{'model': state_dict, 'epoch', 'args'}``).
* ``CAST-S MoCo v3``: ``moco-v3/suppix_utils/builder.MoCo_SupPix`` around
  ``cast_models/cast.py`` ``cast_small`` (sin-cos position embedding, ``pe_token``), saved
  as ``main_moco_suppix.py`` saves under DistributedDataParallel
  (``{'state_dict': {'module.base_encoder.' ...}, 'epoch', 'arch', 'optimizer'}``); the
  compared output is the base encoder's normalised class token (``out4``), i.e. the
  features before the projection MLP, which hcast drops.
* ``H-CAST 2-level`` (34/17 classes) and ``H-CAST 3-level`` (200/38/13): HiOT's
  ``cast_deit_hier.py`` ``cast_small(num_classes=n[0], nb_classes=n)``, saved as
  ``main_suppix_hier.py`` saves (``{'model': ...}``; heads ``head``, ``family_head``,
  ``manufacturer_head``).

Each file is then loaded (i) into ``tests/reference_cast.py``'s ``ReferenceCAST`` with
``strict=True`` and (ii) into hcast with the documented call
``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=path))``, and
the three are run in eval mode on scikit-image's astronaut, coffee and chelsea (224 x 224,
ImageNet-normalised) with SEEDS superpixels (``hcast.ops.superpixels(x, 196,
method="seeds")``; on these photos every superpixel owns a cell of the 28 x 28 token grid at 196; at
``--num-segments 400`` a few do not, which exercises the original's padding tokens).
hcast's extra arguments: ``num_classes=0, pos_embed="sincos"`` for the MoCo file (features,
fixed embedding); H-CAST's per-level logits come from ``forward_levels``.

Printed per output (each taxonomy level for H-CAST; also the four
stages' assignment logits): the largest relative difference ``max|a - o| / max|o|`` with
``o`` the authors' output, and whether the four stages' farthest-point-sampling indices
are identical. Exit status 1 if any difference exceeds ``--tolerance`` (default 1e-4), a
strict load fails, hcast replaces a head or builds other level class counts, or an authors'
output is non-finite or the same for every image (a comparison that could not fail).
"""
from __future__ import annotations

import argparse
import contextlib
import re
import sys
import tempfile
import types
import warnings
from functools import partial
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import timm  # noqa: E402

import hcast  # noqa: E402,F401  (registers the models with timm)
import reference_cast  # noqa: E402
from hcast.ops import farthest_point_sampling, superpixels  # noqa: E402
from hcast.weights import atomic_write  # noqa: E402
from reference_cast import ReferenceCAST  # noqa: E402

H_CAST_LEVELS = {"H-CAST 2-level": (34, 17), "H-CAST 3-level": (200, 38, 13)}
MOCO_PREFIX = "module.base_encoder."


# ---------------------------------------------------------------------------------------
# The authors' code, imported from their folders with their timm
# ---------------------------------------------------------------------------------------

class DGLStandIn:
    """``dgl`` / ``dgl.geometry`` as in-memory modules: ``farthest_point_sampler`` runs
    hcast's FPS and counts the calls whose indices equal the reference's plain loop."""

    def __init__(self) -> None:
        self.calls = 0
        self.equal_to_reference = 0

    def farthest_point_sampler(self, pos: torch.Tensor, npoints: int, start_idx: Optional[int] = 0) -> torch.Tensor:
        if start_idx is None:  # DGL would pick a random start; the authors always pass 0
            raise ValueError("farthest_point_sampler: start_idx=None (random start) is not supported by the stand-in")
        inds = farthest_point_sampling(pos, npoints, start_idx)
        expected = reference_cast.farthest_point_sampler(pos.detach().double().cpu(), npoints, start_idx)
        self.calls += 1
        self.equal_to_reference += int(torch.equal(inds.cpu(), expected))
        return inds

    def modules(self) -> Dict[str, types.ModuleType]:
        dgl = types.ModuleType("dgl", "stand-in for DGL: only geometry.farthest_point_sampler")
        geometry = types.ModuleType("dgl.geometry", "stand-in: farthest_point_sampler -> hcast.ops")
        geometry.farthest_point_sampler = self.farthest_point_sampler
        dgl.geometry = geometry
        return {"dgl": dgl, "dgl.geometry": geometry}


def _pop_modules(*roots: str) -> Dict[str, types.ModuleType]:
    names = [n for n in sys.modules if any(n == r or n.startswith(r + ".") for r in roots)]
    return {n: sys.modules.pop(n) for n in names}


@contextlib.contextmanager
def _imports_from(paths: Sequence[Path], packages: Sequence[str]) -> Iterator[None]:
    """``paths`` first on sys.path; ``packages`` imported inside are forgotten afterwards
    (the module objects stay alive where they were bound), so that two repositories'
    ``cast_models`` packages do not meet."""
    saved_path = list(sys.path)
    sys.path[:0] = [str(p) for p in paths]
    try:
        yield
    finally:
        sys.path[:] = saved_path
        _pop_modules(*packages)


@contextlib.contextmanager
def authors_timm(timm_dir: Path, dgl: DGLStandIn) -> Iterator[None]:
    """timm 0.4.12 and the DGL stand-in in ``sys.modules`` for the block; the installed
    timm is restored after it."""
    installed = _pop_modules("timm")
    saved_dgl = _pop_modules("dgl")
    sys.modules.update(dgl.modules())
    try:
        with _imports_from([timm_dir], ["timm"]), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # timm 0.4's torch.jit.script and moved-module warnings
            yield
    finally:
        _pop_modules("dgl")
        sys.modules.update(saved_dgl)
        sys.modules.update(installed)


def load_authors_code(cast_dir: Path, hiot_dir: Path, timm_dir: Path, dgl: DGLStandIn, moco: bool = True
                      ) -> Dict[str, types.ModuleType]:
    """The authors' modules: ``cast_deit`` and ``cast`` (CAST), ``moco_builder`` (CAST's
    moco-v3 ``suppix_utils.builder``), ``cast_deit_hier`` (HiOT @ b1a222b)."""
    import importlib

    mods = {}
    with authors_timm(timm_dir, dgl):
        with _imports_from([cast_dir], ["cast_models"]):
            mods["cast_deit"] = importlib.import_module("cast_models.cast_deit")
            mods["cast"] = importlib.import_module("cast_models.cast")
        if moco:
            with _imports_from([cast_dir / "moco-v3"], ["suppix_utils"]):
                mods["moco_builder"] = importlib.import_module("suppix_utils.builder")
        with _imports_from([hiot_dir], ["cast_models"]):
            mods["cast_deit_hier"] = importlib.import_module("cast_models.cast_deit_hier")
    return mods


# ---------------------------------------------------------------------------------------
# Weights, files, inputs
# ---------------------------------------------------------------------------------------

def randomise_(model: torch.nn.Module, gen: torch.Generator, keep: Callable[[str], bool] = lambda name: False
               ) -> None:
    """Random values in every floating-point tensor of the state dict (norm weights around
    1, running variances in [0.5, 1.5)); tensors shared under two names get the last draw."""
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point() or keep(name):
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
            else:
                is_norm_weight = name.endswith(".weight") and tensor.dim() == 1 and "norm" in name
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.1 + float(is_norm_weight))


def save(path: Path, checkpoint: dict) -> Path:
    with atomic_write(path, description="checkpoint") as tmp:
        torch.save(checkpoint, tmp)
    return path


def photos(count: int, size: int = 224) -> torch.Tensor:
    """scikit-image's astronaut, coffee, chelsea: (count, 3, size, size) float32, ImageNet-normalised."""
    from skimage import data as skdata
    from skimage.transform import resize

    sources = (skdata.astronaut, skdata.coffee, skdata.chelsea)[:count]
    imgs = [resize(f(), (size, size), anti_aliasing=True) for f in sources]
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float()
    mean = torch.tensor(timm.data.IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(timm.data.IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)
    return (x - mean) / std


# ---------------------------------------------------------------------------------------
# Comparison
# ---------------------------------------------------------------------------------------

def rel_diff(got: torch.Tensor, authors: torch.Tensor) -> float:
    if got.shape != authors.shape:
        return float("inf")
    return float((got - authors).abs().max() / authors.abs().max().clamp(min=1e-12))


class Report:
    def __init__(self, tolerance: float) -> None:
        self.tolerance = tolerance
        self.rows: List[Tuple[str, str, str, str]] = []
        self.failed = False

    def diff(self, model: str, output: str, authors: torch.Tensor, reference: Optional[torch.Tensor],
             hcast_out: Optional[torch.Tensor]) -> None:
        if not torch.isfinite(authors).all() or (len(authors) > 1 and torch.equal(authors[0], authors[-1])):
            self.note(model, output, "the authors' output is not finite or the same for every image: "
                      "no comparison", ok=False)
            return
        cells = []
        for got in (reference, hcast_out):
            if got is None:
                cells.append("-")
                continue
            d = rel_diff(got, authors)
            self.failed |= not d <= self.tolerance
            cells.append(f"{d:.1e}" if got.shape == authors.shape
                         else f"shape {tuple(got.shape)} != {tuple(authors.shape)}")
        self.rows.append((model, output, *cells))

    def same(self, model: str, output: str, authors: Sequence[torch.Tensor],
             reference: Optional[Sequence[torch.Tensor]], hcast_out: Optional[Sequence[torch.Tensor]]) -> None:
        cells = []
        for got in (reference, hcast_out):
            if got is None:
                cells.append("-")
                continue
            equal = [torch.equal(g.long(), a.long()) for g, a in zip(got, authors)]
            self.failed |= not all(equal)
            cells.append("identical" if all(equal) else "differ at stage " + ", ".join(
                str(i + 1) for i, e in enumerate(equal) if not e))
        self.rows.append((model, output, *cells))

    def note(self, model: str, output: str, text: str, ok: bool = True) -> None:
        self.failed |= not ok
        self.rows.append((model, output, text, ""))

    def print(self) -> None:
        header = ("model", "output", "authors vs reference", "authors vs hcast")
        widths = [max(len(r[i]) for r in self.rows + [header]) for i in range(4)]
        for row in [header, tuple("-" * w for w in widths)] + self.rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def run_with_stages(model: torch.nn.Module, fn: Callable[[], object]
                    ) -> Tuple[object, List[torch.Tensor], List[torch.Tensor]]:
    """``fn()`` and what the model's ``pool1`` .. ``pool4`` returned (the authors' and the
    reference's ``Pooling`` give ``(cls_token, logit, centroid, mask, sampled_inds)``):
    the four assignment logits and FPS indices."""
    captured: Dict[int, tuple] = {}
    hooks = [getattr(model, f"pool{i}").register_forward_hook(
        lambda module, inputs, output, i=i: captured.__setitem__(i, output)) for i in range(1, 5)]
    try:
        with torch.no_grad():
            out = fn()
    finally:
        for h in hooks:
            h.remove()
    return out, [captured[i][1] for i in range(1, 5)], [captured[i][4] for i in range(1, 5)]


def reference_from(state_dict: Dict[str, torch.Tensor], **kwargs) -> ReferenceCAST:
    ref = ReferenceCAST(**kwargs).eval()
    ref.load_state_dict(state_dict, strict=True)  # raises on any missing or unexpected key
    return ref


def hcast_from(name: str, path: Path, **kwargs) -> torch.nn.Module:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)
    for w in caught:
        if issubclass(w.category, UserWarning) and "head" in str(w.message):
            raise RuntimeError(f"hcast did not load every head of {path}: {w.message}")
    return model.eval()


def compare(report: Report, name: str, outputs: Sequence[str], authors: tuple, ref: torch.nn.Module,
            ref_fn: Callable[[], object], model: torch.nn.Module, hcast_fn: Callable[[], object],
            images: torch.Tensor, segments: torch.Tensor) -> None:
    """Rows for one model: each output, each stage's assignment logits, the FPS indices.
    ``authors`` is ``(outputs, stage logits, FPS indices)`` from :func:`run_with_stages`."""
    a_out, a_logits, a_inds = authors
    r_out, r_logits, r_inds = run_with_stages(ref, ref_fn)
    with torch.no_grad():
        h_out = hcast_fn()
        stages = model.forward_stages(images, segments, num_pools=4)
    as_tuple = lambda out: out if isinstance(out, tuple) else (out,)  # noqa: E731
    for label, a, r, h in zip(outputs, as_tuple(a_out), as_tuple(r_out), as_tuple(h_out)):
        report.diff(name, label, a, r, h)
    for i, (a, r, h) in enumerate(zip(a_logits, r_logits, stages["logits"])):
        report.diff(name, f"stage {i + 1} assignment logits {tuple(a.shape)}", a, r, h)
    report.same(name, "FPS indices, stages 1-4", a_inds, r_inds, stages["sampled"])


def check_deit(mods, report: Report, out_dir: Path, images, segments, gen) -> None:
    authors = mods["cast_deit"].cast_small(num_classes=1000)
    randomise_(authors, gen)
    authors.eval()
    path = save(out_dir / "cast_small_deit.pth", {"model": authors.state_dict(), "epoch": 299, "args": None})
    a = run_with_stages(authors, lambda: authors(images, segments))
    ref = reference_from(torch.load(path, map_location="cpu")["model"], num_classes=1000)
    model = hcast_from("cast_small", path)
    compare(report, "CAST-S DeiT", ["logits (B, 1000)"], a, ref, lambda: ref(images, segments),
            model, lambda: model(images, segments), images, segments)


def check_moco(mods, report: Report, out_dir: Path, images, segments, gen) -> None:
    encoder = partial(mods["cast"].cast_small, stop_grad_conv1=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.meshgrid")  # the authors' sin-cos embedding
        moco = mods["moco_builder"].MoCo_SupPix(encoder, 256, 4096, 0.2)
    randomise_(moco, gen, keep=lambda key: key.endswith("encoder.pos_embed"))  # fixed sin-cos
    ddp = torch.nn.Module()  # DistributedDataParallel's key layout: "module." + the model's keys
    ddp.module = moco
    path = save(out_dir / "cast_small_moco.pth.tar",
                {"epoch": 100, "arch": "cast_small", "state_dict": ddp.state_dict(), "optimizer": {}})
    authors = moco.base_encoder.eval()
    a = run_with_stages(authors, lambda: authors.forward_features(images, segments)["out4"])
    state = torch.load(path, map_location="cpu")["state_dict"]
    backbone = {k[len(MOCO_PREFIX):]: v for k, v in state.items()
                if k.startswith(MOCO_PREFIX) and not k.startswith(MOCO_PREFIX + "head.")}
    ref = reference_from(backbone, num_classes=0, variant="moco")
    model = hcast_from("cast_small", path, num_classes=0, pos_embed="sincos")
    compare(report, "CAST-S MoCo v3", ["features out4 (B, 384)"], a, ref, lambda: ref(images, segments),
            model, lambda: model(images, segments), images, segments)


def check_hcast(mods, report: Report, out_dir: Path, images, segments, gen, name: str, levels: Sequence[int]) -> None:
    authors = mods["cast_deit_hier"].cast_small(num_classes=levels[0], nb_classes=list(levels), img_size=224)
    randomise_(authors, gen)
    authors.eval()
    tag = "x".join(map(str, levels))
    path = save(out_dir / f"hcast_small_{tag}.pth", {"model": authors.state_dict(), "epoch": 99, "args": None})
    a = run_with_stages(authors, lambda: authors(images, segments))
    ref = reference_from(torch.load(path, map_location="cpu")["model"], level_classes=levels)
    model = hcast_from("hcast_small", path)
    if tuple(model.level_classes) != tuple(levels):
        report.note(name, "level classes", f"hcast built {tuple(model.level_classes)} from the file, not {levels}",
                    ok=False)
    forward_levels = getattr(model, "forward_levels", model)
    heads = ("head", "family_head", "manufacturer_head")
    labels = [f"level {i} {heads[i]} (B, {n})" for i, n in enumerate(levels)]
    compare(report, name, labels, a, ref, lambda: ref(images, segments),
            model, lambda: forward_levels(images, segments), images, segments)


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------

def _folder(parser: argparse.ArgumentParser, option: str, value: str, needs: Sequence[str]) -> Path:
    path = Path(value).expanduser().resolve()
    missing = [n for n in needs if not (path / n).is_file()]
    if missing:
        parser.error(f"{option} {value}: no {missing[0]} there; expected the repository's files "
                     f"({', '.join(needs)})")
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cast", required=True, help="folder with github.com/twke18/CAST's files")
    parser.add_argument("--hiot", required=True, help="folder with github.com/ngocquanai/HiOT's files at b1a222b")
    parser.add_argument("--timm", required=True, help="folder holding timm 0.4.12 (pip install --target)")
    parser.add_argument("--out", default=None, help="folder for the checkpoints (default: a temporary folder)")
    parser.add_argument("--images", type=int, default=3, choices=(1, 2, 3), help="how many sample photos")
    parser.add_argument("--num-segments", type=int, default=196,
                        help="SEEDS superpixels requested per image (400 gives a few that own no grid cell)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest relative difference accepted")
    parser.add_argument("--skip-moco", action="store_true", help="skip the MoCo v3 checkpoint")
    args = parser.parse_args(argv)
    cast_files = ["cast_models/cast_deit.py", "cast_models/cast.py", "cast_models/graph_pool.py",
                  "cast_models/modules.py", "cast_models/utils.py"]
    if not args.skip_moco:
        cast_files.append("moco-v3/suppix_utils/builder.py")
    cast_dir = _folder(parser, "--cast", args.cast, cast_files)
    hiot_dir = _folder(parser, "--hiot", args.hiot, ["cast_models/cast_deit_hier.py", "cast_models/graph_pool.py",
                                                     "cast_models/modules.py", "cast_models/utils.py"])
    timm_dir = _folder(parser, "--timm", args.timm, ["timm/__init__.py", "timm/version.py"])
    version = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", (timm_dir / "timm/version.py").read_text())
    if not version or not version.group(1).startswith("0.4."):
        parser.error(f"--timm {args.timm}: holds timm {version.group(1) if version else '(unknown version)'}, "
                     f"expected 0.4.12, the version the authors' repositories pin")

    dgl = DGLStandIn()
    mods = load_authors_code(cast_dir, hiot_dir, timm_dir, dgl, moco=not args.skip_moco)
    images = photos(args.images)
    segments = superpixels(images, args.num_segments, method="seeds")
    cells = F.interpolate(segments[:, None].float(), (28, 28), mode="nearest")[:, 0].long()  # the authors' resize
    print(f"hcast {Path(hcast.__file__).parent}, timm {timm.__version__} (hcast), torch {torch.__version__}; "
          f"the authors' code: {cast_dir}, {hiot_dir} with timm from {timm_dir}")
    num_ids = int(segments.max()) + 1  # the token count, shared over the batch as in the original
    padding = [num_ids - len(torch.unique(c)) for c in cells]
    print(f"{args.images} photos 224x224, SEEDS superpixels ({args.num_segments} requested): {num_ids} tokens, "
          f"of which {padding} per image own no cell of the 28x28 grid (padding tokens)")
    report = Report(args.tolerance)
    gen = torch.Generator().manual_seed(args.seed)
    with contextlib.ExitStack() as stack:
        out_dir = Path(args.out) if args.out else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        out_dir.mkdir(parents=True, exist_ok=True)
        check_deit(mods, report, out_dir, images, segments, gen)
        if not args.skip_moco:
            check_moco(mods, report, out_dir, images, segments, gen)
        for name, levels in H_CAST_LEVELS.items():
            check_hcast(mods, report, out_dir, images, segments, gen, name, levels)
    report.failed |= dgl.equal_to_reference != dgl.calls
    print(f"\nlargest relative difference max|x - authors| / max|authors| (tolerance {args.tolerance:g})")
    report.print()
    print(f"\nDGL stand-in: {dgl.calls} calls, in {dgl.equal_to_reference} of them hcast's FPS indices equal "
          f"tests/reference_cast.py's loop")
    print("\nFAILED" if report.failed else "\nOK: the reference and hcast equal the authors' code")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
