"""The documentation's code runs as written: every ```python block of README.md and docs/*.md.

The blocks of one file run in order in one namespace, like a notebook's cells, so a later
block may use what an earlier one defined; each file starts in a fresh empty working folder.
Pretrained tags download from a local stand-in for the Hugging Face Hub and Google Drive
(tests/hf_server.py) that serves random weights in each released file's own format and size;
a page says so where a block loads them. A block after ``<!-- docs-test: skip: REASON -->``
is not run, and REASON says why (the docs use it only for what this machine cannot do).
"""
from __future__ import annotations

import io
import os
import re
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch

import hcast  # noqa: F401  (registers the models)
from hf_server import LocalHub, use_local_hub
from original_checkpoints import randomise, to_original

ROOT = Path(__file__).resolve().parents[1]
DOCS = [doc for doc in ["README.md"] + sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))
        if "```python" in (ROOT / doc).read_text(encoding="utf-8")]
_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
_SKIP = re.compile(r"<!--\s*docs-test:\s*skip:\s*(?P<reason>[^>]*?)\s*-->\s*$")

LIVING17_ID = "17ouiirBmBxD5wxOuWBi-SulVIzv8oHBL"  # hcast_small.living17's Google Drive file


def python_blocks(doc: str) -> list[tuple[int, str, str | None]]:
    """(first line of the code, code, skip reason or None) for each ```python block of ``doc``."""
    text = (ROOT / doc).read_text(encoding="utf-8")
    out = []
    for m in _BLOCK.finditer(text):
        line = text.count("\n", 0, m.start(1)) + 1
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = _SKIP.search(before)
        out.append((line, m.group(1), skip["reason"] if skip else None))
    return out


# ----------------------------------------------------------------------------- the local hub


def _torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _deit_file(name: str, **kwargs) -> bytes:
    """A DeiT / H-CAST training checkpoint ({"model": original layout}) of the full-size model."""
    return _torch_bytes({"model": to_original(randomise(timm.create_model(name, **kwargs))), "epoch": 299})


def _moco_file() -> bytes:
    """CAST's MoCo v3 COCO checkpoint: base and momentum encoders with their projector heads."""
    model = randomise(timm.create_model("cast_seg_small", model_stage="pretrain"))
    state = {}
    for key, value in to_original(model).items():
        state[f"module.base_encoder.{key}"] = value
        state[f"module.momentum_encoder.{key}"] = value
    return _torch_bytes({"epoch": 400, "arch": "cast_small", "state_dict": state})


@pytest.fixture(scope="session")
def local_hub():
    """The hub and Google Drive files the docs' pretrained tags load, full size, random values."""
    with LocalHub(max_lifetime=900) as hub:
        hub.add_file("twke/CAST", "snapshots/deit/imagenet1k/cast_small/best_checkpoint.pth",
                     _deit_file("cast_small", num_classes=1000))
        hub.add_file("twke/CAST", "snapshots/moco/coco/cast_small/checkpoint_0399.pth.tar", _moco_file())
        hub.gdrive[LIVING17_ID] = _deit_file("hcast_small", level_classes=(34, 17))
        deit = randomise(timm.create_model("deit_small_patch16_224"))
        hub.add_file("timm/deit_small_patch16_224.fb_in1k", "model.safetensors",
                     safetensors.torch.save(deit.state_dict()))
        yield hub


# ----------------------------------------------------------------------------- files a page says it reads


def _models_md(hub: LocalHub) -> None:
    """The released living17 file, its `hcast convert` folder, and that folder on the hub."""
    from hcast.models import convert_checkpoint

    Path("living17.pth").write_bytes(hub.gdrive[LIVING17_ID])
    convert_checkpoint("living17.pth", "runs/living17", "hcast_small.living17")
    hub.add_folder("user/my-hcast", "runs/living17")


def _quickstart_md(hub: LocalHub) -> None:
    """What `hcast finetune --data fashion-mnist --output runs/fmnist` writes, untrained."""
    from hcast.hierarchy import fashion_mnist_taxonomy
    from hcast.train import save_model_folder

    taxonomy = fashion_mnist_taxonomy()
    save_model_folder(timm.create_model("hcast_tiny", level_classes=taxonomy.num_classes), "runs/fmnist", taxonomy)


def _training_md(hub: LocalHub) -> None:
    """The quick start's image folder (4 fine classes, 4 photos each, 64 x 64) and taxonomy.json."""
    import numpy as np
    from PIL import Image
    from skimage import data

    from hcast.hierarchy import Taxonomy

    Taxonomy.from_named_paths(
        [("husky", "dog", "animal"), ("beagle", "dog", "animal"), ("tabby", "cat", "animal"), ("sedan", "car", "vehicle")],
        level_names=("breed", "species", "kind")).save("taxonomy.json")
    photos = {"husky": data.astronaut(), "beagle": data.coffee(), "tabby": data.chelsea(), "sedan": data.rocket()}
    for name, photo in photos.items():
        Path("my_images", name).mkdir(parents=True)
        for i in range(4):
            crop = photo[i * 40:i * 40 + 256, i * 40:i * 40 + 256]
            Image.fromarray(np.ascontiguousarray(crop)).resize((64, 64)).save(f"my_images/{name}/{i:03d}.jpg")


def _weights_md(hub: LocalHub) -> None:
    """The checkpoint files the page reads: CAST's DeiT checkpoint (twice) and living17's."""
    deit = hub.repos["twke/CAST"]["snapshots/deit/imagenet1k/cast_small/best_checkpoint.pth"]
    Path("best_checkpoint.pth").write_bytes(deit)
    Path("ckpt.pth").write_bytes(deit)
    Path("living17.pth").write_bytes(hub.gdrive[LIVING17_ID])


SETUP = {"docs/models.md": _models_md, "docs/quickstart.md": _quickstart_md, "docs/training.md": _training_md,
         "docs/weights.md": _weights_md}


# ----------------------------------------------------------------------------- the test


@pytest.mark.parametrize("doc", DOCS)
def test_docs_python_blocks_run(doc, local_hub, tmp_path, monkeypatch, one_torch_thread):
    blocks = python_blocks(doc)
    use_local_hub(monkeypatch, local_hub, tmp_path / "hf")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    if doc in SETUP:
        SETUP[doc](local_hub)
    namespace: dict = {"__name__": "__docs__"}
    for line, code, skip in blocks:
        if skip:
            continue
        # pad so that tracebacks point at the line in the page
        exec(compile("\n" * (line - 1) + code, str(ROOT / doc), "exec"), namespace)


def test_every_skip_names_a_reason():
    for doc in DOCS:
        for line, _, skip in python_blocks(doc):
            assert skip is None or len(skip.split()) >= 3, f"{doc}:{line}: a skip must say why"
