"""Run timm's own generic model tests and its scripts against hcast's models.

timm's ``tests/test_models.py`` and its ``train.py`` / ``validate.py`` /
``inference.py`` / ``benchmark.py`` are what timm users trust; this script runs them,
unchanged, from a checkout of github.com/huggingface/pytorch-image-models (use the
version of the installed timm) against every ``cast_*``, ``hcast_*`` and
``hier_vit_*`` name.

    python benchmarks/timm_contract.py tests   /path/to/pytorch-image-models
    python benchmarks/timm_contract.py scripts /path/to/pytorch-image-models

``tests`` copies ``tests/test_models.py`` into a temporary folder with two edits, the
ones timm makes for its own ViTs: hcast's names join ``NON_STD_FILTERS`` (token models,
tested like ``vit_*`` / ``deit*``) and hcast's modules join ``FEAT_INTER_FILTERS``
(models with ``forward_intermediates``). A ``conftest.py`` imports hcast (registering
the models) and gives multi-level H-CAST models ``output_level=0``, the keyword that
makes them return one tensor, as timm's tests expect of every model (the same keyword
the scripts get through ``--model-kwargs``). It then runs pytest with the ``base``,
``cfg`` and ``features`` markers (forward, backward, default cfgs, ``features_only``,
``forward_intermediates``) on hcast's names.

``scripts`` makes a tiny image folder from scikit-image's sample photos and runs
timm's ``train.py`` (2 epochs of a few steps), ``validate.py``, ``inference.py`` and
``benchmark.py`` on ``cast_tiny``, ``cast_small`` and ``hcast_tiny`` with
``output_level=0``, with ``--model-kwargs`` read by timm's own parser. ``hcast`` is
imported first through a small launcher (``-c "import hcast; runpy..."``), because
timm's scripts only know timm's registry.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HCAST_NAMES = ("cast_*", "hcast_*", "hier_vit_*")
HCAST_MODULES = ("cast", "hcast", "hier_vit")

_CONFTEST = '''
import functools

import timm
import hcast  # noqa: F401  (registers cast_*, hcast_*, hier_vit_* with timm)

_create_model = timm.create_model


@functools.wraps(_create_model)
def create_model(model_name, *args, **kwargs):
    # Multi-level H-CAST returns a tuple of per-level logits; timm's tests expect one
    # tensor, which output_level=0 (the finest level) gives, as for timm's scripts.
    if model_name.startswith("hcast_") and not kwargs.get("num_classes"):
        kwargs.setdefault("output_level", 0)
    return _create_model(model_name, *args, **kwargs)


timm.create_model = create_model
'''


def _patched_test_models(source: str) -> str:
    """timm's test file with hcast's names in NON_STD_FILTERS and modules in FEAT_INTER_FILTERS."""
    names = ", ".join(repr(n) for n in HCAST_NAMES)
    modules = ", ".join(repr(m) for m in HCAST_MODULES)
    patched, n_std = re.subn(r"NON_STD_FILTERS = \[", f"NON_STD_FILTERS = [{names}, ", source, count=1)
    patched, n_feat = re.subn(r"FEAT_INTER_FILTERS = \[", f"FEAT_INTER_FILTERS = [{modules}, ", patched, count=1)
    if not (n_std and n_feat):
        raise SystemExit("tests/test_models.py has no NON_STD_FILTERS / FEAT_INTER_FILTERS list: is this a "
                         "timm checkout of a version close to the installed one?")
    return patched


def run_tests(timm_dir: Path, extra: list[str]) -> int:
    source = timm_dir / "tests" / "test_models.py"
    if not source.is_file():
        raise SystemExit(f"{source} not found: pass the root of a pytorch-image-models checkout.")
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "test_models.py").write_text(_patched_test_models(source.read_text()))
        Path(tmp, "conftest.py").write_text(_CONFTEST)
        Path(tmp, "pytest.ini").write_text("[pytest]\nmarkers =\n    base\n    cfg\n    features\n    torchscript\n"
                                           "    fxforward\n    fxbackward\n    timeout\n")
        keyword = " or ".join(n.rstrip("*").rstrip("_") for n in HCAST_NAMES)
        cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-m", "base or cfg or features",
               "-k", keyword, "test_models.py", *extra]
        print("+", " ".join(cmd), flush=True)
        return subprocess.call(cmd, cwd=tmp, env=dict(os.environ, PYTHONPATH=_pythonpath()))


def _pythonpath() -> str:
    repo = str(Path(__file__).resolve().parents[1])
    return os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH", "")) if p)


def make_image_folder(root: Path, size: int = 96) -> Path:
    """train/ and val/ folders of 2 classes x 4 images cut from skimage.data photos."""
    import numpy as np
    from PIL import Image
    from skimage import data, transform

    photos = {"animal": [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()],
              "thing": [data.camera(), data.coins(), data.moon(), data.page()]}
    for split in ("train", "val"):
        for label, images in photos.items():
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i, image in enumerate(images):
                image = np.stack([image] * 3, axis=-1) if image.ndim == 2 else image[..., :3]
                if split == "val":
                    image = image[::-1]
                resized = transform.resize(image, (size, size), anti_aliasing=True)
                Image.fromarray((resized * 255).astype(np.uint8)).save(folder / f"{label}_{i}.png")  # unique names: inference.py indexes by them
    return root


def _script(timm_dir: Path, name: str, args: list[str], cwd: Path) -> bool:
    """Run one of timm's scripts with hcast imported first; True when it worked."""
    launcher = ("import sys, runpy, hcast; sys.argv = sys.argv[1:]; "
                "runpy.run_path(sys.argv[0], run_name='__main__')")
    cmd = [sys.executable, "-c", launcher, str(timm_dir / name), *args]
    print("+", " ".join(cmd), flush=True)
    run = subprocess.run(cmd, cwd=cwd, env=dict(os.environ, PYTHONPATH=_pythonpath()), text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    print(run.stdout, flush=True)
    # benchmark.py reports errors in its JSON result and exits 0
    return run.returncode == 0 and '"error":' not in run.stdout


def run_scripts(timm_dir: Path, models: list[str]) -> int:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        root = make_image_folder(Path(tmp) / "images")
        for spec in models:
            name, *model_kwargs = spec.split(":")
            size = "64"
            common = ["--device", device] + (["--model-kwargs", *model_kwargs] if model_kwargs else [])
            # 2 classes in the folder; a multi-level H-CAST with output_level keeps its
            # level classes (the folder's labels index its chosen level).
            if not any(k.startswith("output_level=") for k in model_kwargs):
                common += ["--num-classes", "2"]
            out = Path(tmp) / "out" / name
            runs = {
                "train.py": [str(root), "--model", name, *common, "--input-size", "3", size, size,
                             "-b", "4", "--epochs", "2", "--workers", "0", "--lr", "1e-4", "--output", str(out),
                             "--experiment", "run", "--no-prefetcher", "--log-interval", "1",
                             "--sched", "cosine", "--warmup-epochs", "0"],
                "validate.py": [str(root / "val"), "--model", name, *common,
                                "--checkpoint", str(out / "run" / "last.pth.tar"), "-b", "4", "--workers", "0",
                                "--input-size", "3", size, size, "--no-prefetcher"],
                "inference.py": [str(root / "val"), "--model", name, *common,
                                 "--checkpoint", str(out / "run" / "last.pth.tar"), "-b", "4", "--workers", "0",
                                 "--input-size", "3", size, size, "--topk", "2", "--results-dir", str(out)],
                "benchmark.py": ["--model", name, *common, "-b", "2",
                                 "--input-size", "3", size, size, "--bench", "both", "--num-bench-iter", "5",
                                 "--num-warm-iter", "1"],
            }
            for script, args in runs.items():
                if not _script(timm_dir, script, args, Path(tmp)):
                    failures.append(f"{script} {spec}")
    print("failed: " + ", ".join(failures) if failures else f"all scripts ran for {', '.join(models)}")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("tests", "scripts"))
    parser.add_argument("timm_dir", type=Path, help="root of a pytorch-image-models checkout")
    parser.add_argument("--models", nargs="+", default=["cast_tiny", "cast_small", "hcast_tiny:output_level=0"],
                        help="for 'scripts': names, with ':key=value' model kwargs")
    args, extra = parser.parse_known_args(argv)
    if args.what == "tests":
        return run_tests(args.timm_dir, extra)
    return run_scripts(args.timm_dir, args.models)


if __name__ == "__main__":
    sys.exit(main())
