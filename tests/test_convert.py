"""hcast.models.convert_checkpoint: original checkpoints -> timm hub folders."""
from __future__ import annotations

import json

import pytest
import timm
import torch

import hcast  # noqa: F401  (registers the models with timm)
import hcast.weights.folder
from hcast.models import convert_checkpoint
from hcast.weights import guess_model_name
from hcast.hierarchy import Taxonomy
from hf_server import LocalHub, use_local_hub
from test_hub import MODEL_TINY, assert_same_weights, deit_checkpoint, original_state_dict

LEVELS = (6, 3)
TAXONOMY = Taxonomy.from_named_paths([[f"fine{i}", f"coarse{i // 2}"] for i in range(6)])


@pytest.fixture(scope="module")
def hcast_checkpoint(tmp_path_factory):
    """An H-CAST checkpoint as the authors' training script saves it (2 levels: 6, 3)."""
    original = original_state_dict(seed=5, level_classes=LEVELS)
    path = tmp_path_factory.mktemp("ckpt") / "best_checkpoint.pth"
    torch.save(deit_checkpoint(original), path)
    return path, original


def test_convert_hcast_with_taxonomy_round_trips(tmp_path, monkeypatch, hcast_checkpoint):
    src, original = hcast_checkpoint
    out = convert_checkpoint(src, tmp_path / "living", "hcast_small", taxonomy=TAXONOMY, **MODEL_TINY)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["living"]  # no temporary folder left
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "hcast_small"
    assert Taxonomy.from_dict(config["taxonomy"]) == TAXONOMY
    assert config["label_names"] == [f"fine{i}" for i in range(6)]
    assert config["model_args"]["level_classes"] == list(LEVELS)
    assert config["model_args"]["embed_dim"] == MODEL_TINY["embed_dim"]
    assert "file" not in config["pretrained_cfg"]

    direct = timm.create_model("hcast_small", level_classes=LEVELS, pretrained=True,
                               pretrained_cfg_overlay=dict(file=str(src), num_classes=LEVELS[0]), **MODEL_TINY)
    local = timm.create_model(f"local-dir:{out}", pretrained=True)
    assert_same_weights(local, direct)
    assert torch.equal(local.heads[1].weight, original["family_head.weight"])
    with LocalHub() as hub:  # and from the hub, as after `hcast push`
        hub.add_folder("someone/hcast-test", out)
        use_local_hub(monkeypatch, hub, tmp_path / "hf")
        assert_same_weights(timm.create_model("hf-hub:someone/hcast-test", pretrained=True), direct)


def test_convert_guesses_levels_and_refuses_to_clobber(tmp_path, hcast_checkpoint):
    src, _ = hcast_checkpoint
    out = tmp_path / "out"
    out.mkdir()  # an empty folder is fine
    convert_checkpoint(src, out, "hcast_small", **MODEL_TINY)
    assert json.loads((out / "config.json").read_text())["model_args"]["level_classes"] == list(LEVELS)
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        convert_checkpoint(src, out, "hcast_small", **MODEL_TINY)
    with pytest.raises(ValueError, match="level_classes"):  # a taxonomy that does not fit the heads
        convert_checkpoint(src, tmp_path / "bad", "hcast_small", level_classes=(7, 3), **MODEL_TINY)
    assert not (tmp_path / "bad").exists()
    convert_checkpoint(src, out, "hcast_small", overwrite=True, **MODEL_TINY)
    assert (out / "model.safetensors").read_bytes() == before  # same input, same bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_failed_write_leaves_no_output(tmp_path, hcast_checkpoint, monkeypatch):
    src, _ = hcast_checkpoint

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(hcast.weights.folder, "save_for_hf", broken)
    with pytest.raises(OSError, match="disk full"):
        convert_checkpoint(src, tmp_path / "out", "hcast_small", **MODEL_TINY)
    assert list(tmp_path.iterdir()) == []


def test_guess_model_name():
    small = {"cls_token": torch.zeros(1, 1, 384), "blocks1.0.attn.qkv.weight": torch.zeros(1),
             "head.weight": torch.zeros(10, 384)}
    assert guess_model_name(small) == "cast_small"
    assert guess_model_name({**small, "family_head.weight": torch.zeros(5, 384)}) == "hcast_small"
    moco = {f"module.base_encoder.{k}": v for k, v in small.items() if not k.startswith("head")}
    assert guess_model_name({**moco, "module.base_encoder.cls_token": torch.zeros(1, 1, 768)}) == "cast_base"
    vit = {"cls_token": torch.zeros(1, 1, 384), "patch_embed.proj.weight": torch.zeros(384, 3, 16, 16),
           "head.weight": torch.zeros(6, 384), "family_head.weight": torch.zeros(3, 384)}
    assert guess_model_name(vit) == "hier_vit_small"
    with pytest.raises(ValueError, match="model_name"):
        guess_model_name({"cls_token": torch.zeros(1, 1, 100), "blocks1.0.x": torch.zeros(1)})
