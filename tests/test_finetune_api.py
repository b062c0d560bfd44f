"""hcast.train as a library: finetune() under 2-process gloo DDP with the authors' augmentation
(RandAugment, random erasing, mixup/cutmix, EMA, repeated augmentation) on a tiny image folder
of scikit-image photos with a 3-level taxonomy; resuming reaches the uninterrupted run's state;
recipes, config and transforms."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from hcast.train import FinetuneConfig, create_train_transform, create_val_transform, get_recipe
from hcast.weights import load_checkpoint

# fine -> middle -> coarse, finest first; 4 / 3 / 2 classes
PATHS = {
    "astronaut": ("space", "made"),
    "rocket": ("space", "made"),
    "chelsea": ("cat", "living"),
    "coffee": ("drink", "made"),
}

SCRIPT = textwrap.dedent('''
    import sys, torch, timm, hcast
    from hcast.data import create_train_val_datasets
    from hcast.hierarchy import Taxonomy
    from hcast.train import destroy_distributed, finetune, get_recipe, init_distributed

    root, out = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    ctx = init_distributed("cpu")
    taxonomy = Taxonomy.load(f"{root}/taxonomy.json")
    train_set, val_set = create_train_val_datasets(f"{root}/images", None, None, taxonomy=taxonomy,
                                                   val_fraction=0.25, seed=0)
    # the authors' BREEDS recipe (RandAugment, random erasing, mixup 0.8 / cutmix 1.0, EMA, 3 repeats),
    # shrunk to a tiny model on 32x32 images
    config = get_recipe("hcast-breeds").config.replace(
        epochs=2, batch_size=4, input_size=32, num_segments=16, superpixel_method="slic", warmup_epochs=0.5,
        ema_decay=0.9, drop_path=0.0, workers=0, device="cpu", progress=False, lr=1e-3, lr_base_batch=8)

    def tiny():
        torch.manual_seed(0)
        return timm.create_model("hcast_tiny", embed_dim=32, depths=[1, 1, 1, 1], num_heads=2, img_size=32,
                                 level_classes=taxonomy.num_classes)

    finetune(tiny(), train_set, val_set, taxonomy, config, output=f"{out}/whole")
    finetune(tiny(), train_set, val_set, taxonomy, config, output=f"{out}/resumed", on_epoch_end=lambda r: True)
    finetune(tiny(), train_set, val_set, taxonomy, config, output=f"{out}/resumed", resume="auto")
    destroy_distributed()
''')


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    """8 crops of each of four scikit-image photos, one sub-folder per fine class, and the taxonomy."""
    from skimage import data

    from hcast.hierarchy import Taxonomy

    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for name in PATHS:
        photo = getattr(data, name)()
        (root / "images" / name).mkdir(parents=True)
        h, w = photo.shape[:2]
        for i in range(8):
            side = int(min(h, w) * rng.uniform(0.5, 0.9))
            y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
            Image.fromarray(photo[y:y + side, x:x + side]).resize((48, 48)).save(root / "images" / name / f"{i}.png")
    taxonomy = Taxonomy.from_named_paths([(f, *rest) for f, rest in PATHS.items()],
                                         level_names=["object", "kind", "origin"], orders=[sorted(PATHS), None, None])
    taxonomy.save(root / "taxonomy.json")
    return root


def test_ddp_finetune_with_the_authors_augmentation_resumes_to_the_uninterrupted_state(photo_folder, tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           str(photo_folder), str(tmp_path)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("on cpu x2") == 3  # three runs, rank 0 prints
    assert "resumed from" in proc.stdout and "at epoch 2 (update" in proc.stdout

    whole = load_checkpoint(tmp_path / "whole" / "checkpoint-latest.pth")
    resumed = load_checkpoint(tmp_path / "resumed" / "checkpoint-latest.pth")
    assert whole["epoch"] == resumed["epoch"] == 1
    # 24 training images, 3 repeats over 2 processes: 12 per process and epoch, 3 batches of 4
    assert whole["num_updates"] == resumed["num_updates"] == 6
    for key, value in whole["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    for key, value in whole["model_ema"].items():
        assert torch.equal(value, resumed["model_ema"][key]), key
    # the EMA (decay 0.9) is not the model: it was updated, not copied
    ema = {k.removeprefix("module."): v for k, v in whole["model_ema"].items()}
    assert ema.keys() == whole["model"].keys()
    assert any(not torch.equal(v, whole["model"][k]) for k, v in ema.items() if v.is_floating_point())
    opt_a, opt_b = whole["optimizer"], resumed["optimizer"]
    assert opt_a["param_groups"] == opt_b["param_groups"]
    for index, state in opt_a["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(opt_b["state"][index][name])), (index, name)
    assert [h["train"]["loss"] for h in whole["history"]] == [h["train"]["loss"] for h in resumed["history"]]
    assert [h["val"]["plain"]["fpa"] for h in whole["history"]] == [h["val"]["plain"]["fpa"] for h in resumed["history"]]
    assert all(h["train"]["steps"] == 3 for h in whole["history"])

    # the folder holds the best epoch by validation FPA and says which; log and curves next to it
    out = tmp_path / "resumed"
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    fpas = [r["val"]["plain"]["fpa"] for r in log]
    config = json.loads((out / "config.json").read_text())
    assert config["training"]["best_epoch"] == 1 + int(np.argmax(fpas))  # the first of equal FPAs
    assert config["training"]["val_fpa"] == max(fpas)
    assert config["model_args"]["level_classes"] == [4, 3, 2]
    assert config["pretrained_cfg"]["crop_pct"] == 0.875 and config["pretrained_cfg"]["crop_mode"] == "center"
    with Image.open(out / "learning_curves.png") as picture:
        assert picture.size == (1100, 700)
    saved = FinetuneConfig.from_dict(json.loads((out / "finetune_config.json").read_text()))
    assert saved.auto_augment == "rand-m9-mstd0.5-inc1" and saved.repeated_aug == 3 and saved.recipe == "hcast-breeds"


def test_the_recipe_pipeline_is_timms():
    from timm.data.auto_augment import RandAugment
    from timm.data.random_erasing import RandomErasing
    from timm.data.transforms import RandomResizedCropAndInterpolation

    config = get_recipe("hcast-breeds").config
    data_cfg = {"input_size": (3, 224, 224), "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    steps = create_train_transform(config, data_cfg).transforms
    crop = next(t for t in steps if isinstance(t, RandomResizedCropAndInterpolation))
    assert crop.scale == (0.08, 1.0) and crop.size == (224, 224)
    assert any(isinstance(t, RandAugment) for t in steps)
    erase = next(t for t in steps if isinstance(t, RandomErasing))
    assert erase.probability == 0.25 and erase.mode == "pixel"
    image = Image.fromarray(np.full((300, 400, 3), 128, np.uint8))
    assert create_val_transform(config, data_cfg)(image).shape == (3, 224, 224)


def test_small_images_are_validated_whole_by_default():
    """eval_crop_pct=None: a 28x28 garment is resized to the input size, nothing cropped (the
    transform hcast finetune validated with before timm's pipeline)."""
    from hcast.data import FashionMNIST, create_transform

    image, _ = FashionMNIST(split="test", indices=[0])[0]
    data_cfg = {"input_size": (3, 64, 64), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    got = create_val_transform(FinetuneConfig(), data_cfg)(image)
    want = create_transform(64, False, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))(image)
    assert got.shape == (3, 64, 64)
    assert torch.allclose(got, want, atol=1e-6)
    # the authors' evaluation crops the center 87.5%: the border pixels differ
    cropped = create_val_transform(FinetuneConfig(eval_crop_pct=0.875), data_cfg)(image)
    assert cropped.shape == (3, 64, 64) and not torch.allclose(cropped, want, atol=1e-3)


def test_the_inat21_recipe_evaluates_and_saves_with_inats_statistics(photo_folder, tmp_path):
    """hcast-inat21 trains with the model's (ImageNet) normalisation and validates with iNat's,
    as the authors' build_transform does; the saved folder's data config carries iNat's, so
    hcast evaluate reads the model as the authors evaluate it."""
    import timm

    from hcast.data import create_train_val_datasets
    from hcast.hierarchy import Taxonomy
    from hcast.train import finetune

    inat_mean, inat_std = (0.466, 0.471, 0.380), (0.195, 0.194, 0.192)
    config = get_recipe("hcast-inat21").config
    assert (config.eval_mean, config.eval_std) == (inat_mean, inat_std)
    data_cfg = {"input_size": (3, 32, 32), "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    image = Image.fromarray(np.full((40, 40, 3), 200, np.uint8))
    val = create_val_transform(config.replace(input_size=32), data_cfg)(image)
    torch.testing.assert_close(val[:, 0, 0], (200 / 255 - torch.tensor(inat_mean)) / torch.tensor(inat_std))

    taxonomy = Taxonomy.load(photo_folder / "taxonomy.json")
    train_set, val_set = create_train_val_datasets(str(photo_folder / "images"), None, None, taxonomy=taxonomy,
                                                   val_fraction=0.25, seed=0)
    small = config.replace(epochs=1, batch_size=8, input_size=32, num_segments=16, superpixel_method="slic",
                           mixup=0.0, cutmix=0.0, ema_decay=0.0, repeated_aug=0, auto_augment=None, reprob=0.0,
                           drop_path=0.0, workers=0, device="cpu", progress=False, max_steps=1)
    torch.manual_seed(0)
    model = timm.create_model("hcast_tiny", embed_dim=32, depths=[1, 1, 1, 1], num_heads=2, img_size=32,
                              level_classes=taxonomy.num_classes)
    finetune(model, train_set, val_set, taxonomy, small, output=tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["pretrained_cfg"]
    assert tuple(saved["mean"]) == inat_mean and tuple(saved["std"]) == inat_std
    with pytest.raises(ValueError, match="eval_mean and eval_std set together"):
        FinetuneConfig(eval_mean=inat_mean)
    with pytest.raises(ValueError, match="eval_std: expected positive"):
        FinetuneConfig(eval_mean=inat_mean, eval_std=(0.1, 0.0, 0.1))


def test_config_rejects_what_would_fail_later():
    with pytest.raises(ValueError, match="unknown field.*'lrr'"):
        FinetuneConfig.from_dict({"lrr": 1e-3})
    with pytest.raises(ValueError, match="superpixels='cache' needs flip-only"):
        FinetuneConfig(superpixels="cache")
    with pytest.raises(ValueError, match="auto_augment='rand-m9-mstd0.5-inc1'.*superpixels='loader'"):
        FinetuneConfig(superpixels="cache", scale_min=1.0, auto_augment="rand-m9-mstd0.5-inc1")
    with pytest.raises(ValueError, match="batch_size: expected an even"):
        FinetuneConfig(mixup=0.8, batch_size=5)
    with pytest.raises(ValueError, match="recipe: unknown recipe 'cub'"):
        get_recipe("cub")
    config = get_recipe("hcast-aircraft").config
    assert FinetuneConfig.from_dict(json.loads(config.to_json())) == config
