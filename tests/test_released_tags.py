"""The released H-CAST tags know what they are: taxonomy in the checkpoint's label order,
the original evaluation transform, and `hcast evaluate` / `predict` with their weights."""
from __future__ import annotations

import argparse
import json
import re

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from skimage import data as skdata
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

import hcast  # noqa: F401  (registers the models)
from benchmark_fixtures import make_breeds_imagenet, write_jpeg
from hcast.cli import main
from hcast.data import create_eval_transform
from hcast.hierarchy import benchmark_taxonomy
from hf_server import LocalHub, use_local_hub
from reference_cast import ReferenceCAST

TAGS = {"inat21_mini": "inat21-mini", "entity30": "breeds-entity30", "entity13": "breeds-entity13",
        "nonliving26": "breeds-nonliving26", "living17": "breeds-living17"}
LIVING17_ID = "17ouiirBmBxD5wxOuWBi-SulVIzv8oHBL"  # hcast_small.living17's Google Drive file
INAT_MEAN, INAT_STD = (0.466, 0.471, 0.380), (0.195, 0.194, 0.192)


@pytest.mark.parametrize("tag, taxonomy_name", TAGS.items())
def test_each_tag_carries_its_taxonomy_and_original_settings(tag, taxonomy_name):
    model = timm.create_model(f"hcast_small.{tag}")
    assert model.taxonomy == benchmark_taxonomy(taxonomy_name)
    assert tuple(h.out_features for h in model.heads) == model.taxonomy.num_classes
    cfg = model.pretrained_cfg
    assert (cfg["crop_pct"], cfg["interpolation"], cfg["input_size"]) == (0.875, "bicubic", (3, 224, 224))
    assert cfg["superpixel_method"] == "seeds"
    # the authors' BREEDS loader keeps its default of 256 SEEDS superpixels; iNat gets --num-superpixels 196
    assert cfg["num_segments"] == (196 if tag == "inat21_mini" else 256)


@pytest.mark.parametrize("tag", list(TAGS))
def test_eval_transform_is_timms_for_the_tags_cfg_and_the_originals(tag):
    """On a real photo: hcast's evaluation transform equals timm's create_transform for the
    tag's pretrained_cfg and the original build_transform (Resize(256, bicubic), CenterCrop(224),
    Normalize with the dataset's statistics: iNat21's own for the iNat tag)."""
    model = timm.create_model(f"hcast_small.{tag}")
    image = Image.fromarray(skdata.chelsea())  # 451 x 300
    ours = create_eval_transform(model)(image)
    mean, std = (INAT_MEAN, INAT_STD) if tag == "inat21_mini" else ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    crop = TF.center_crop(TF.resize(image, 256, InterpolationMode.BICUBIC), 224)
    original = TF.normalize(TF.to_tensor(crop), mean, std)
    assert ours.shape == (3, 224, 224)
    torch.testing.assert_close(ours, original, rtol=0, atol=1e-6)
    assert model.pretrained_cfg["mean"] == mean and model.pretrained_cfg["std"] == std


@pytest.mark.parametrize("tag", ["inat21_mini", "living17"])
def test_superpixels_are_the_original_loaders_seeds(tag):
    """The original data loader un-normalises the evaluation crop with the dataset's mean/std
    (iNat21's for iNat21), truncates to uint8, and runs SEEDS in LAB with 196 (iNat21) or
    256 (BREEDS) superpixels; the model and the CLI's SuperpixelTransform give the same ids."""
    cv2 = pytest.importorskip("cv2")
    from hcast.ops import SuperpixelTransform

    model = timm.create_model(f"hcast_small.{tag}")
    cfg = model.pretrained_cfg
    x = create_eval_transform(model)(Image.fromarray(skdata.chelsea()))
    rgb = ((x.numpy().transpose(1, 2, 0) * np.array(cfg["std"]) + np.array(cfg["mean"])) * 255).astype(np.uint8)
    seeds = cv2.ximgproc.createSuperpixelSEEDS(224, 224, 3, num_superpixels=cfg["num_segments"], num_levels=1,
                                               prior=2, histogram_bins=5, double_step=False)
    seeds.iterate(cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB), num_iterations=15)
    original = torch.from_numpy(seeds.getLabels()).long()
    assert torch.equal(model.superpixels(x[None])[0], original)
    transform = SuperpixelTransform(num_segments=cfg["num_segments"], method="seeds", mean=cfg["mean"], std=cfg["std"])
    assert torch.equal(transform(x), original)


def test_eval_transform_keeps_the_whole_image_where_a_folder_asks(tmp_path):
    cfg = dict(timm.create_model("hcast_tiny", level_classes=(2, 1)).pretrained_cfg,
               crop_pct=1.0, crop_mode="squash", interpolation="bilinear")
    image = Image.fromarray(skdata.chelsea())
    out = create_eval_transform(pretrained_cfg=cfg)(image.convert("L"))  # grayscale files work too
    expected = TF.normalize(TF.to_tensor(TF.resize(image.convert("L").convert("RGB"), [64, 64])),
                            cfg["mean"], cfg["std"])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- the CLI with a tag's weights

@pytest.fixture(scope="module")
def living17_checkpoint(tmp_path_factory):
    """hcast_small.living17's file in the authors' format (DeiT-style dict, original key names).
    Its heads ignore the image: weight 0, bias one-hot on subclass 3 (leatherback turtle) and
    superclass 1 (turtle), so every image is predicted (3, 1) if, and only if, it is loaded."""
    ref = ReferenceCAST(level_classes=(34, 17))
    state = ref.state_dict()
    for head, target in (("head", 3), ("family_head", 1)):
        state[f"{head}.weight"] = torch.zeros_like(state[f"{head}.weight"])
        state[f"{head}.bias"] = torch.nn.functional.one_hot(torch.tensor(target), state[f"{head}.bias"].numel()) * 50.0
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pth"
    torch.save({"model": state, "epoch": 99, "args": argparse.Namespace(model="cast_small", nb_classes=[34, 17])},
               path)
    return path


def _cache_file(file_id: str):
    """Where hcast caches a Google Drive checkpoint: huggingface_hub's assets cache."""
    from huggingface_hub import cached_assets_path, constants

    return cached_assets_path("hcast", namespace="gdrive", subfolder=file_id,
                              assets_dir=constants.HF_ASSETS_CACHE) / "checkpoint.pth"


@pytest.fixture
def breeds_root(tmp_path):
    # two subclasses: leatherback turtle (subclass 3, turtle) and eft (subclass 0, salamander)
    return make_breeds_imagenet(tmp_path / "imagenet", "living17", {"n01665541": 2, "n01631663": 2})


def test_evaluate_a_tag_offline_without_a_cached_file_fails_clearly(tmp_path, monkeypatch, capsys, breeds_root):
    with LocalHub() as hub:
        use_local_hub(monkeypatch, hub, tmp_path / "hf", offline=True)
        assert main(["evaluate", "hcast_small.living17", "breeds-living17", "--data-root", str(breeds_root),
                     "--workers", "0", "--device", "cpu", "--no-progress"]) == 2
        assert hub.requests == []
    message = capsys.readouterr().err
    assert "cannot load the weights of 'hcast_small.living17'" in message
    assert "HF_HUB_OFFLINE=1" in message and "--no-pretrained" in message


@pytest.mark.usefixtures("one_torch_thread")
def test_evaluate_and_predict_a_tag_from_the_cache(tmp_path, monkeypatch, capsys, breeds_root, living17_checkpoint):
    with LocalHub() as hub:
        use_local_hub(monkeypatch, hub, tmp_path / "hf", offline=True)
        target = _cache_file(LIVING17_ID)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(living17_checkpoint.read_bytes())
        args = ["--workers", "0", "--device", "cpu", "--no-progress", "--precision", "fp32"]
        assert main(["evaluate", "hcast_small.living17", "breeds-living17", "--data-root", str(breeds_root),
                     "--split", "val", *args, "--json", str(tmp_path / "m.json")]) == 0
        out = capsys.readouterr().out
        assert f"weights: hcast_small.living17 from Google Drive {LIVING17_ID}" in out
        metrics = json.loads((tmp_path / "m.json").read_text())
        assert metrics["num_samples"] == 4 and metrics["level_names"] == ["subclass", "superclass"]
        for key in ("plain", "consistent"):  # every image predicted (3, 1): the turtles right, the efts wrong
            assert metrics[key]["level_accuracy"] == [0.5, 0.5]
            assert metrics[key]["fpa"] == 0.5 and metrics[key]["tice"] == 0.0

        photo = write_jpeg(tmp_path / "photo.jpg", size=(300, 200))
        assert main(["predict", "hcast_small.living17", str(photo), "--device", "cpu"]) == 0
        out = capsys.readouterr().out
        assert "subclass: leatherback turtle, leatherback, leathery turtle, Dermochelys coriacea (100.0%)" in out
        assert "superclass: turtle (100.0%)" in out

        assert main(["convert", str(target), str(tmp_path / "folder"), "--model", "hcast_small.living17"]) == 0
        config = json.loads((tmp_path / "folder" / "config.json").read_text())
        assert config["taxonomy"] == benchmark_taxonomy("breeds-living17").to_dict()
        assert hub.requests == []


@pytest.mark.usefixtures("one_torch_thread")
def test_random_weights_only_when_asked(tmp_path, monkeypatch, capsys, breeds_root):
    with LocalHub() as hub:
        use_local_hub(monkeypatch, hub, tmp_path / "hf", offline=True)
        photo = write_jpeg(tmp_path / "photo.jpg")
        assert main(["predict", "hcast_small.living17", str(photo), "--device", "cpu", "--no-pretrained"]) == 0
    assert "weights: RANDOM (--no-pretrained)" in capsys.readouterr().out
    assert main(["predict", "hcast_tiny", str(photo)]) == 2
    assert re.search("'hcast_tiny' has no released weights.*--no-pretrained", capsys.readouterr().err)


def test_evaluate_with_a_wrong_data_root_names_what_it_looked_for(tmp_path, capsys):
    assert main(["evaluate", "hcast_small.living17", "breeds-living17", "--data-root", str(tmp_path / "nowhere"),
                 "--no-pretrained", "--workers", "0", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"'{tmp_path / 'nowhere' / 'val'}' not found" in err and "ROOT/val/<wnid>/*.JPEG" in err
