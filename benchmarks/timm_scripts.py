"""Run timm's own scripts (train.py, validate.py, inference.py, benchmark.py) on hcast's models.

timm's scripts are what timm users run; this runs them, unchanged, from a checkout of
github.com/huggingface/pytorch-image-models against hcast models, exactly as a user would:
no hcast flag, the folder's class count through ``--num-classes`` (a hierarchical model then
builds one level and warns which levels it dropped), ``hcast`` imported first through a
small launcher (``-c "import hcast; runpy..."``) because timm's scripts only know timm's
registry. The images are a tiny folder of scikit-image's sample photos (2 classes).

    python benchmarks/timm_scripts.py /path/to/pytorch-image-models [--models cast_tiny hcast_tiny ...]

timm's generic model tests (its ``tests/test_models.py``) run through
``../shared/timm/run.sh`` in CI.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

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
            # the folder has 2 classes: --num-classes 2, as for any timm model (a hierarchical
            # model then builds one level and says which levels it dropped)
            common = ["--device", device, "--num-classes", "2"] + (["--model-kwargs", *model_kwargs]
                                                                    if model_kwargs else [])
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
    parser.add_argument("timm_dir", type=Path, help="a folder with timm's train.py, validate.py, inference.py and "
                                                    "benchmark.py (a pytorch-image-models checkout)")
    parser.add_argument("--models", nargs="+", default=["cast_tiny", "hcast_tiny", "hier_vit_tiny:img_size=64"],
                        help="names, with ':key=value' model kwargs (--model-kwargs)")
    args = parser.parse_args(argv)
    return run_scripts(args.timm_dir, args.models)


if __name__ == "__main__":
    sys.exit(main())
