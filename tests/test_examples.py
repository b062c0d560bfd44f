"""Every script in examples/ runs, as a user would run it, on a tiny setting."""
from __future__ import annotations

import json
import os
import re
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hcast.data.fashion_mnist import DEBIAN_FASHION_MNIST_DIR

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TINY_KWARGS = ["embed_dim=32", "depths=[1,1,1,1]", "num_heads=2"]


def run_example(name: str, *args: str, cwd: Path, capsys) -> str:
    """Run examples/NAME as ``python NAME ARGS`` would (``__main__``, its own argv, in ``cwd``),
    in this process: the scripts are the same, without paying for a fresh interpreter."""
    argv, here = sys.argv, os.getcwd()
    capsys.readouterr()
    try:
        sys.argv = [str(EXAMPLES / name), *args]
        os.chdir(cwd)
        runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    finally:
        sys.argv = argv
        os.chdir(here)
    return capsys.readouterr().out




@pytest.fixture
def photo_run(tmp_path, capsys):
    """finetune_imagefolder.py on four scikit-image photos with a CSV taxonomy."""
    from skimage import data

    root = tmp_path
    photos = {"astronaut": data.astronaut(), "chelsea": data.chelsea(), "coffee": data.coffee(),
              "rocket": data.rocket()}
    for name, photo in photos.items():
        (root / "images" / name).mkdir(parents=True)
        for i in range(3):
            crop = photo[i * 40:i * 40 + 220, i * 40:i * 40 + 220]
            Image.fromarray(crop).save(root / "images" / name / f"{i}.jpg")
    (root / "taxonomy.csv").write_text(
        "# fine,coarse\nastronaut,person\nchelsea,animal\ncoffee,object\nrocket,object\n")
    out = run_example(
        "finetune_imagefolder.py", "--data", "images", "--taxonomy", "taxonomy.csv", "--output", "run",
        "--model", "hcast_tiny", "--model-kwargs", *TINY_KWARGS, "--input-size", "32", "--num-segments", "16",
        "--epochs", "2", "--batch-size", "4", "--workers", "0", cwd=root, capsys=capsys)
    return root, out


def test_finetune_imagefolder_then_predict_and_visualize(photo_run, capsys):
    root, out = photo_run
    assert "epoch 2:" in out and "FPA" in out
    config = json.loads((root / "run" / "config.json").read_text())
    assert config["taxonomy"]["names"] == [["astronaut", "chelsea", "coffee", "rocket"], ["person", "animal", "object"]]
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    assert (root / "run" / "checkpoint-latest.pth").is_file()

    # predict.py on the folder just written
    out = run_example("predict.py", "run", "images/coffee/0.jpg", "images/chelsea/1.jpg", cwd=root, capsys=capsys)
    lines = out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("images/coffee/0.jpg:")
    fine_to_coarse = {"astronaut": "person", "chelsea": "animal", "coffee": "object", "rocket": "object"}
    for line in lines:
        # "<image>: <level>: <fine> (p%) -> <level>: <coarse> (p%)"; consistent decoding: coarse is fine's parent
        fine, coarse = re.findall(r": (\w+) \(\d", line)
        assert fine_to_coarse[fine] == coarse

    # visualize_segments.py on the folder, and on a registry model with scikit-image's photos
    out = run_example("visualize_segments.py", "run", "images/rocket/0.jpg", "--out", "rocket.png", cwd=root,
                      capsys=capsys)
    assert "4 grouping levels of 1 image" in out
    picture = np.asarray(Image.open(root / "rocket.png"))
    assert picture.shape[1] > 4 * picture.shape[0]  # one row: image, superpixels, four groupings
    out = run_example("visualize_segments.py", "hcast_tiny", "--model-kwargs", "level_classes=[10,5]", *TINY_KWARGS,
                      "--out", "photos.png", cwd=root, capsys=capsys)
    assert "of 2 image(s)" in out and (root / "photos.png").is_file()


@pytest.mark.skipif(not (DEBIAN_FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_train_loop_minimal(tmp_path, capsys):
    kwargs = json.dumps({"embed_dim": 32, "depths": [1, 1, 1, 1], "num_heads": 2})
    out = run_example("train_loop_minimal.py", "--steps", "3", "--batch-size", "8", "--eval-images", "16",
                      "--model-kwargs", kwargs, cwd=tmp_path, capsys=capsys)
    assert "step 0: loss" in out
    metrics = eval(out.strip().splitlines()[-1], {})  # the printed dict of metrics
    assert set(metrics) >= {"fpa", "tice", "garment_acc@1", "group_acc@1"}
    assert 0.0 <= metrics["fpa"] <= min(metrics["garment_acc@1"], metrics["group_acc@1"])
