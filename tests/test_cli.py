"""The `hcast` command: finetune (+ resume), evaluate, predict (+ picture), push, and
loading MODEL from a folder, a timm name or an hf-hub: id."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hcast.cli import main, parse_kwargs
from hcast.data import FASHION_MNIST_CLASSES, FashionMNIST
from hcast.data.fashion_mnist import DEBIAN_FASHION_MNIST_DIR
from hcast.models.cast import sincos_2d_pos_embed

pytestmark = pytest.mark.usefixtures("one_torch_thread")

needs_fmnist = pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)",
)

# a small H-CAST (width 32, one block per stage) on 32x32 images with 16 superpixels and the
# fixed sin-cos position embedding (a model argument the saved folder must carry)
TINY = [
    "--model", "hcast_tiny", "--model-kwargs", "embed_dim=32", "depths=[1,1,1,1]", "num_heads=2",
    "pos_embed=sincos",
    "--input-size", "32", "--num-segments", "16", "--superpixel-method", "slic",
]




QUICK = ["--batch-size", "16", "--workers", "0", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model fine-tuned for one short epoch on Fashion-MNIST, then resumed for a second."""
    if not (DEBIAN_FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    out = tmp_path_factory.mktemp("cli") / "run"
    args = ["finetune", *TINY, *QUICK, "--data", "fashion-mnist", "--output", str(out),
            "--train-samples", "96", "--val-samples", "20", "--max-steps", "4", "--threads", "1"]
    assert main(args + ["--epochs", "1"]) == 0
    first = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    assert main(args + ["--epochs", "2", "--resume"]) == 0
    return out, first


def test_help_of_every_subcommand(capsys):
    for command in ("finetune", "evaluate", "predict", "convert", "push"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert f"usage: hcast {command}" in capsys.readouterr().out
    # the console script the package installs (`python -m hcast.cli` runs in test_ddp.py)
    from importlib.metadata import entry_points

    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert scripts.get("hcast") == "hcast.cli:main"
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert all(c in text for c in ("finetune", "evaluate", "predict", "convert", "push"))


def test_parse_kwargs():
    assert parse_kwargs(["a=1", "b=[1,2]", "c=gelu", "d=0.5"]) == {"a": 1, "b": [1, 2], "c": "gelu", "d": 0.5}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_kwargs(["oops"])


@needs_fmnist
def test_finetune_writes_a_timm_folder_and_resumes(trained, capsys):
    import timm

    out, first = trained
    names = sorted(p.name for p in out.iterdir())
    assert names == ["checkpoint-latest.pth", "config.json", "finetune_config.json", "learning_curves.png", "log.jsonl",
                     "model.safetensors", "taxonomy.json"]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [entry["epoch"] for entry in log] == [1, 2]  # the resumed run went on at epoch 2
    assert log[1]["train"]["num_updates"] == 8  # 4 updates per epoch, counted across the resume
    # the resumed cosine was re-planned over both epochs' 8 updates and ended at --min-lr
    assert first["train"]["num_updates"] == 4
    assert log[1]["train"]["lr"] == pytest.approx(1e-5)
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "hcast_tiny"
    assert config["model_args"]["level_classes"] == [10, 5] and config["model_args"]["embed_dim"] == 32
    assert config["pretrained_cfg"]["superpixel_method"] == "slic"
    assert config["pretrained_cfg"]["num_segments"] == 16
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]  # --input-size, not hcast_tiny's 64
    assert config["taxonomy"]["names"][0][0] == "T-shirt/top"
    model = timm.create_model(f"local-dir:{out}", pretrained=True)
    assert model.level_classes == (10, 5) and model.embed_dim == 32
    # the fixed sin-cos position embedding comes back as such, unchanged by training
    assert config["model_args"]["pos_embed"] == "sincos"
    assert model.pos_embed_type == "sincos" and not model.pos_embed.requires_grad
    assert torch.equal(model.pos_embed[:, 1:], sincos_2d_pos_embed(model.grid_size, 32))


@needs_fmnist
def test_evaluate_prints_a_table_and_writes_json(trained, tmp_path, capsys):
    out, _ = trained
    capsys.readouterr()
    assert main(["evaluate", str(out), "fashion-mnist", "--num-samples", "30", "--workers", "0",
                 "--no-progress", "--json", str(tmp_path / "m.json")]) == 0
    text = capsys.readouterr().out
    assert "plain" in text and "consistent" in text and "FPA" in text and "TICE" in text
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["num_samples"] == 30 and metrics["split"] == "test"
    for key in ("plain", "consistent"):
        assert len(metrics[key]["level_accuracy"]) == 2
        assert 0.0 <= metrics[key]["fpa"] <= min(metrics[key]["level_accuracy"])
    assert metrics["consistent"]["tice"] == 0.0


@needs_fmnist
def test_evaluate_with_a_token_budget_does_not_depend_on_the_batch_size(trained, tmp_path, capsys):
    """--max-tokens: the fixed-budget mode, whose numbers are the same at any batch size."""
    out, _ = trained
    results = []
    for batch in ("3", "30"):
        assert main(["evaluate", str(out), "fashion-mnist", "--num-samples", "30", "--workers", "0", "--no-progress",
                     "--max-tokens", "64", "--batch-size", batch, "--json", str(tmp_path / f"b{batch}.json")]) == 0
        results.append(json.loads((tmp_path / f"b{batch}.json").read_text()))
    for key in ("plain", "consistent"):
        assert results[0][key]["level_accuracy"] == results[1][key]["level_accuracy"]
        assert results[0][key]["fpa"] == results[1][key]["fpa"]
    capsys.readouterr()
    assert main(["evaluate", str(out), "fashion-mnist", "--num-samples", "30", "--max-tokens", "-1"]) == 2
    assert "--max-tokens: expected 0" in capsys.readouterr().err


@needs_fmnist
def test_predict_prints_the_path_and_draws_the_segments(trained, tmp_path, capsys):
    out, _ = trained
    test = FashionMNIST(split="test", indices=[0, 1])
    files = []
    for i in range(2):
        image, _ = test[i]
        files.append(str(tmp_path / f"garment{i}.png"))
        image.save(files[-1])
    picture = tmp_path / "segments.png"
    capsys.readouterr()
    assert main(["predict", str(out), *files, "--top-k", "2", "--segment", str(picture), "--device", "cpu",
                 "--json", str(tmp_path / "p.json")]) == 0
    text = capsys.readouterr().out
    assert files[0] in text and "garment:" in text and "group:" in text
    predictions = json.loads((tmp_path / "p.json").read_text())
    assert len(predictions) == 2 and len(predictions[0]["paths"]) == 2
    best = predictions[0]["paths"][0]
    assert best["levels"][0]["name"] in FASHION_MNIST_CLASSES
    assert best["score"] >= predictions[0]["paths"][1]["score"]
    assert 0.0 < best["levels"][0]["probability"] <= 1.0
    image = np.asarray(Image.open(picture))
    assert image.shape[0] > 300 and image.shape[1] > 3 * image.shape[0] / 2  # two rows of six panels
    assert image.std() > 10  # not a blank canvas


@needs_fmnist
def test_bad_inputs_fail_with_a_message(tmp_path, capsys):
    assert main(["finetune", *TINY, *QUICK, "--data", str(tmp_path / "nope"), "--output", str(tmp_path / "o"),
                 "--taxonomy", str(tmp_path / "missing.json")]) == 2
    assert "taxonomy" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["predict", "hcast_tiny"])  # no image
    assert main(["evaluate", str(tmp_path), "fashion-mnist"]) == 2
    assert "config.json" in capsys.readouterr().err


def test_image_folder_with_a_taxonomy_file(tmp_path, capsys):
    from skimage import data

    from hcast.hierarchy import Taxonomy

    photos = {"astronaut": data.astronaut(), "coffee": data.coffee(), "chelsea": data.chelsea(),
              "rocket": data.rocket()}
    for name, photo in photos.items():
        for split in ("train", "val"):
            (tmp_path / "data" / split / name).mkdir(parents=True)
            for i in range(4 if split == "train" else 1):
                crop = photo[i * 30:i * 30 + 200, i * 30:i * 30 + 200]
                Image.fromarray(crop).save(tmp_path / "data" / split / name / f"{i}.png")
    taxonomy = Taxonomy.from_named_paths(
        [("astronaut", "person"), ("chelsea", "animal"), ("coffee", "object"), ("rocket", "object")])
    taxonomy.save(tmp_path / "taxonomy.json")
    out = tmp_path / "run"
    assert main(["finetune", *TINY, *QUICK, "--data", str(tmp_path / "data"), "--taxonomy",
                 str(tmp_path / "taxonomy.json"), "--output", str(out), "--epochs", "1", "--batch-size", "8"]) == 0
    assert "16 train / 4 val images" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert Taxonomy.from_dict(config["taxonomy"]) == taxonomy
    assert main(["evaluate", str(out), str(tmp_path / "data"), "--split", "val", "--workers", "0",
                 "--no-progress"]) == 0
    assert "(4 images" in capsys.readouterr().out


@needs_fmnist
def test_push_uploads_a_reloadable_folder_and_hf_hub_ids_load(trained, tmp_path, monkeypatch, capsys):
    import shutil

    import huggingface_hub
    import timm

    out, _ = trained
    uploaded = tmp_path / "uploaded"

    def create_repo(self, repo_id, **kwargs):
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, repo_id, folder_path, **kwargs):
        shutil.copytree(folder_path, uploaded)
        return f"https://huggingface.co/{repo_id}/commit/0"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "file_exists", lambda self, **kw: False)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    assert main(["push", str(out), "someone/hcast-tiny-fmnist", "--token", "x"]) == 0
    assert {"config.json", "model.safetensors", "README.md"} <= {p.name for p in uploaded.iterdir()}
    pushed = json.loads((uploaded / "config.json").read_text())
    assert pushed["taxonomy"] == json.loads((out / "config.json").read_text())["taxonomy"]
    original = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    reloaded = timm.create_model(f"local-dir:{uploaded}", pretrained=True).eval()
    x = torch.randn(2, 3, 32, 32)
    s = torch.arange(16).view(4, 4).repeat_interleave(8, 0).repeat_interleave(8, 1).expand(2, -1, -1)
    with torch.no_grad():
        torch.testing.assert_close(original(x, s)[0], reloaded(x, s)[0])

    # the same folder served by a local stand-in for the Hub: `hf-hub:` ids work too
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from hf_server import LocalHub, use_local_hub

    with LocalHub() as hub:
        hub.add_folder("someone/hcast-tiny-fmnist", uploaded)
        use_local_hub(monkeypatch, hub, tmp_path / "hf_home")
        capsys.readouterr()
        assert main(["evaluate", "hf-hub:someone/hcast-tiny-fmnist", "fashion-mnist", "--num-samples", "20",
                     "--workers", "0", "--no-progress"]) == 0
        assert "(20 images" in capsys.readouterr().out


def test_convert_an_original_format_checkpoint(tmp_path, capsys):
    import timm

    from hcast.hierarchy import fashion_mnist_taxonomy

    torch.manual_seed(0)
    model = timm.create_model("hcast_tiny", level_classes=(10, 5)).eval()
    # the original training code's format: {"model": state_dict, ...} in a .pth
    torch.save({"model": model.state_dict(), "epoch": 99}, tmp_path / "checkpoint.pth")
    fashion_mnist_taxonomy().save(tmp_path / "taxonomy.json")
    assert main(["convert", str(tmp_path / "checkpoint.pth"), str(tmp_path / "out"), "--model", "hcast_tiny",
                 "--taxonomy", str(tmp_path / "taxonomy.json")]) == 0
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["taxonomy"]["names"][1][0] == fashion_mnist_taxonomy().names[1][0]
    converted = timm.create_model(f"local-dir:{tmp_path / 'out'}", pretrained=True).eval()
    x = torch.randn(2, 3, 64, 64)
    s = torch.arange(64).view(8, 8).repeat_interleave(8, 0).repeat_interleave(8, 1).expand(2, -1, -1)
    with torch.no_grad():
        for a, b in zip(model(x, s), converted(x, s)):
            torch.testing.assert_close(a, b)
    # a second conversion into the same folder needs --overwrite
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "checkpoint.pth"), str(tmp_path / "out"), "--model", "hcast_tiny"]) == 2
    assert "overwrite" in capsys.readouterr().err


@needs_fmnist
def test_finetune_with_cached_superpixels(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["finetune", *TINY, *QUICK, "--data", "fashion-mnist", "--output", str(out), "--train-samples", "48",
            "--val-samples", "16", "--epochs", "1", "--threads", "1", "--superpixels", "cache"]
    assert main(args) == 2  # random crops cannot reuse cached superpixels
    assert "--scale-min 1" in capsys.readouterr().err and not out.exists()
    assert main(args + ["--scale-min", "1"]) == 0
    text = capsys.readouterr().out
    assert "superpixels of 48 + 16 images cached" in text and "in the cache" in text
    log = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    assert log["train"]["num_updates"] == 3 and 0.0 <= log["val"]["plain"]["fpa"] <= 1.0


@needs_fmnist
def test_the_hier_vit_baseline_runs_the_main_job_recipe_through_every_command(tmp_path, capsys):
    """A patch model (Hier-ViT) takes the fashion-mnist recipe as H-CAST does (images cached
    without superpixels), and evaluate / predict read it without superpixels."""
    out = tmp_path / "run"
    assert main(["finetune", "--recipe", "fashion-mnist", "--data", "fashion-mnist", "--output", str(out),
                 "--model", "hier_vit_tiny", "--model-kwargs", "img_size=32", "patch_size=8", "embed_dim=32",
                 "depth=4", "num_heads=2", "--input-size", "32", "--train-samples", "48", "--val-samples", "16",
                 "--epochs", "1", "--threads", "1", "--workers", "0", "--batch-size", "16"]) == 0
    text = capsys.readouterr().out
    assert "decoded 48 + 16 images cached" in text and "patches" in text
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "hier_vit_tiny" and config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    assert main(["evaluate", str(out), "fashion-mnist", "--split", "test", "--num-samples", "20", "--workers", "0",
                 "--no-progress"]) == 0
    assert "(20 images" in capsys.readouterr().out
    image = tmp_path / "shirt.png"
    FashionMNIST(split="test", indices=[0])[0][0].save(image)
    assert main(["predict", str(out), str(image)]) == 0
    assert "garment:" in capsys.readouterr().out
    assert main(["predict", str(out), str(image), "--segment", str(tmp_path / "seg.png")]) == 2
    assert "does not segment images" in capsys.readouterr().err and not (tmp_path / "seg.png").exists()


@needs_fmnist
def test_predict_skips_a_file_that_is_not_an_image(trained, tmp_path, capsys):
    out, _ = trained
    image, _ = FashionMNIST(split="test", indices=[0])[0]
    good, bad = tmp_path / "garment.png", tmp_path / "notes.png"
    image.save(good)
    bad.write_text("not an image")
    capsys.readouterr()
    assert main(["predict", str(out), str(bad), str(good), str(tmp_path / "missing.png"), "--device", "cpu"]) == 2
    captured = capsys.readouterr()
    assert f"{good}:" in captured.out and "garment:" in captured.out  # the readable image is still predicted
    assert f"skipped {str(bad)!r}: not an image" in captured.err
    assert f"skipped {str(tmp_path / 'missing.png')!r}: no such file" in captured.err
    assert "2 of 3 images skipped" in captured.err


def test_a_model_that_is_nothing_names_every_kind_it_tried(tmp_path, capsys):
    missing = str(tmp_path / "nonexistent_model")
    assert main(["evaluate", missing, "fashion-mnist"]) == 2
    err = capsys.readouterr().err
    assert "nonexistent_" in err and "neither an existing folder" in err and "local-dir:" not in err
    assert main(["evaluate", "my-org/my-model", "fashion-mnist"]) == 2  # a Hub id: offline here
    assert "my-org/my-model" in capsys.readouterr().err
    checkpoint = tmp_path / "weights.pth"
    checkpoint.write_bytes(b"")
    assert main(["evaluate", str(checkpoint), "fashion-mnist"]) == 2  # files load; this one is empty
    err = capsys.readouterr().err
    assert "weights.pth" in err and "empty" in err


@needs_fmnist
def test_a_library_bug_keeps_its_traceback(trained, monkeypatch):
    """Exit status 2 and one line are for the user's mistakes; a ValueError from inside hcast
    (here: the evaluation loop) is not turned into one."""
    import hcast.train

    def broken(*args, **kwargs):
        raise ValueError("an internal invariant broke")

    monkeypatch.setattr(hcast.train, "evaluate", broken)
    with pytest.raises(ValueError, match="internal invariant"):
        main(["evaluate", str(trained[0]), "fashion-mnist", "--num-samples", "4", "--workers", "0",
              "--device", "cpu", "--no-progress"])


@needs_fmnist
def test_too_many_superpixels_stop_before_any_image_is_read(trained, tmp_path, capsys):
    """A crafted config asking for 100,000 superpixels, or --num-segments 5000, is refused
    up front (SEEDS would crash or hang in OpenCV; the tokens would exhaust memory)."""
    import shutil

    folder = Path(shutil.copytree(trained[0], tmp_path / "crafted"))
    config = json.loads((folder / "config.json").read_text())
    config["pretrained_cfg"]["num_segments"] = 100000
    (folder / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main(["evaluate", str(folder), "fashion-mnist", "--num-samples", "4", "--workers", "0",
                 "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "the model's num_segments=100000" in err and "4x4 feature grid" in err and "num_segments=16 or fewer" in err
    assert main(["finetune", *TINY[:-4], *QUICK, "--num-segments", "5000", "--data", "fashion-mnist",
                 "--output", str(tmp_path / "o"), "--train-samples", "32", "--val-samples", "8"]) == 2
    assert "num_segments=5000" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_print_config_shows_the_authors_recipe_and_flags_override_it(capsys):
    assert main(["finetune", "--recipe", "hcast-breeds", "--print-config"]) == 0
    shown = json.loads(capsys.readouterr().out)
    config, sources = shown["config"], shown["sources"]
    # deit/main_suppix_hier.py and the README's BREEDS command (github:ngocquanai/HiOT at b1a222b)
    assert shown["model"] == "hcast_small.deit_in1k" and shown["pretrained"] is True
    assert (config["epochs"], config["batch_size"], config["lr"], config["lr_base_batch"]) == (100, 256, 1e-3, 512)
    assert (config["warmup_epochs"], config["warmup_lr"], config["min_lr"]) == (5, 1e-4, 1e-5)
    assert (config["opt"], config["weight_decay"], config["kl_weight"], config["label_smoothing"]) == \
        ("adamw", 0.05, 0.5, 0.1)
    assert config["auto_augment"] == "rand-m9-mstd0.5-inc1" and config["train_interpolation"] == "bicubic"
    assert (config["color_jitter"], config["reprob"], config["remode"]) == (0.3, 0.25, "pixel")
    assert (config["mixup"], config["cutmix"], config["mixup_switch_prob"]) == (0.8, 1.0, 0.5)
    assert (config["ema_decay"], config["repeated_aug"], config["drop_path"]) == (0.99996, 3, 0.1)
    assert (config["eval_crop_pct"], config["num_segments"], config["superpixel_method"]) == (0.875, 196, "seeds")
    assert sources["lr"] == "README BREEDS command (--lr 0.001)"

    assert main(["finetune", "--recipe", "hcast-breeds", "--lr", "2e-4", "--aa", "none", "--epochs", "3",
                 "--print-config"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["config"]["lr"], shown["config"]["auto_augment"], shown["config"]["epochs"]) == (2e-4, None, 3)
    assert shown["sources"]["lr"] == "flag" and shown["config"]["reprob"] == 0.25  # the rest stays the recipe's

    # the main job's recipe is what scripts/main_job.sh ran with flags before recipes existed
    assert main(["finetune", "--recipe", "fashion-mnist", "--print-config"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["model"], shown["pretrained"], shown["train_samples"], shown["val_samples"]) == \
        ("hcast_tiny", False, 18000, 500)
    config = shown["config"]
    assert (config["epochs"], config["batch_size"], config["lr"], config["min_lr"], config["warmup_epochs"]) == \
        (2, 64, 6e-4, 1e-5, 0.2)
    assert (config["scale_min"], config["superpixels"], config["num_segments"], config["time_budget"]) == \
        (1.0, "cache", 49, 9.0)
    assert config["precision"] == "auto"


def test_finetune_precision_flag(capsys):
    assert main(["finetune", "--recipe", "fashion-mnist", "--precision", "bf16", "--print-config"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["config"]["precision"] == "bf16" and shown["sources"]["precision"] == "flag"
    with pytest.raises(SystemExit):  # --amp is gone (the package is unreleased): argparse rejects it
        main(["finetune", "--recipe", "fashion-mnist", "--amp", "off", "--print-config"])


def test_finetune_flags_the_config_rejects_are_usage_errors(capsys):
    assert main(["finetune", "--recipe", "fashion-mnist", "--scale-min", "0.5", "--print-config"]) == 2
    assert "scale_min=1" in capsys.readouterr().err
    assert main(["finetune", "--epochs", "1"]) == 2
    assert "--data is required" in capsys.readouterr().err
