"""hcast.weights: the one atomic write, the one table of original formats, the one cfg converter."""
from __future__ import annotations

import importlib
import sys

import pytest
import torch

import hcast.models
import hcast.weights
from hcast.models.cast import CASTPretrainedCfg
from hcast.weights import as_pretrained_cfg, atomic_write, strip_prefixes, unwrap_state_dict
from hcast.weights.original import cast_keys_to_hcast, has_level_heads, rename_level_heads


def test_atomic_write_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_write(path) as tmp:
            tmp.write_text("half of the new")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    with atomic_write(path) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".metrics.json.")
        tmp.write_text("new")
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_atomic_folder_write_replaces_the_whole_folder_or_nothing(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.txt").write_text("old a")
    with pytest.raises(OSError, match="disk full"):
        with atomic_write(out, folder=True) as tmp:
            (tmp / "b.txt").write_text("new b")
            raise OSError("disk full")
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with pytest.raises(FileExistsError, match="appeared"):
        with atomic_write(out, folder=True, overwrite=False) as tmp:
            (tmp / "b.txt").write_text("new b")
    with atomic_write(out, folder=True) as tmp:
        (tmp / "b.txt").write_text("new b")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]  # replaced as a whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


T = {name: torch.full((1,), float(i)) for i, name in enumerate(["w0", "w1", "w2", "w3", "w4", "w5"])}


def test_unwrap_takes_model_before_state_dict_and_never_model_ema():
    deit = {"model": {"a": T["w0"]}, "model_ema": {"a": T["w1"]}, "epoch": 3}
    assert unwrap_state_dict(deit) == {"a": T["w0"]}
    assert unwrap_state_dict({"state_dict": {"b": T["w2"]}, "arch": "cast_small"}) == {"b": T["w2"]}
    assert unwrap_state_dict({"c": T["w3"]}) == {"c": T["w3"]}
    with pytest.raises(ValueError, match="epoch"):
        unwrap_state_dict({"epoch": 3})
    with pytest.raises(TypeError, match="checkpoint"):
        unwrap_state_dict([T["w0"]])


def test_prefix_table_strips_what_each_original_format_needs():
    # DeiT / H-CAST saved from DDP: only module. goes
    deit = {"module.cls_token": T["w0"], "module.head.weight": T["w1"], "module.family_head.weight": T["w2"]}
    assert strip_prefixes(deit) == {"cls_token": T["w0"], "head.weight": T["w1"], "family_head.weight": T["w2"]}
    # MoCo v3: the base encoder alone, without its projection MLP; momentum encoder and predictor dropped
    moco = {"module.base_encoder.cls_token": T["w0"], "module.base_encoder.head.0.weight": T["w1"],
            "module.momentum_encoder.cls_token": T["w2"], "module.predictor.0.weight": T["w3"],
            "module.base_encoder.blocks1.0.attn.qkv.weight": T["w4"]}
    assert strip_prefixes(moco) == {"cls_token": T["w0"], "blocks1.0.attn.qkv.weight": T["w4"]}
    # the same without DDP's wrapper
    assert strip_prefixes({k[len("module."):]: v for k, v in moco.items()}) == strip_prefixes(moco)
    # Hier-ViT's filter only removes DDP's prefix and keeps everything else
    assert strip_prefixes(moco, ddp_only=True) == {k[len("module."):]: v for k, v in moco.items()}
    # hcast's own keys pass unchanged
    own = {"stages.0.blocks.0.norm1.weight": T["w5"], "heads.1.bias": T["w1"]}
    assert strip_prefixes(own) == own


def test_level_heads_and_cast_key_layout():
    sd = {"head.weight": T["w0"], "family_head.weight": T["w1"], "manufacturer_head.bias": T["w2"],
          "head_dist.weight": T["w3"]}
    assert rename_level_heads(sd) == {"heads.0.weight": T["w0"], "heads.1.weight": T["w1"],
                                      "heads.2.bias": T["w2"], "head_dist.weight": T["w3"]}
    assert has_level_heads(sd) and has_level_heads({"heads.0.weight": T["w0"]})
    assert not has_level_heads({"head.weight": T["w0"], "head_dist.weight": T["w3"]})
    # depths (3, 3, 3, 2): blocks2.4 is stage 1's second block; blocks.N duplicates dropped;
    # the last pooling's fc1/fc2 dropped; coarser heads and distillation keys dropped
    original = {"blocks2.4.mlp.fc1.weight": T["w0"], "blocks.4.mlp.fc1.weight": T["w0"],
                "pool1.pool_block.centroid_fc.weight": T["w1"], "pool2.pool_block.fc1.0.weight": T["w2"],
                "pool4.pool_block.fc2.1.weight": T["w3"], "pool4.pool_block.centroid_fc.bias": T["w4"],
                "head.weight": T["w5"], "family_head.weight": T["w5"], "dist_token": T["w5"]}
    assert cast_keys_to_hcast(original, (3, 3, 3, 2)) == {
        "stages.1.blocks.1.mlp.fc1.weight": T["w0"], "stages.0.pool.assign.weight": T["w1"],
        "stages.1.pool.fc1_norm.weight": T["w2"], "stages.3.pool.assign.bias": T["w4"], "head.weight": T["w5"]}
    # MoCo's pe_token joins the front of pos_embed
    moco = cast_keys_to_hcast({"pe_token": torch.ones(1, 1, 2), "pos_embed": torch.zeros(1, 3, 2)}, (3, 3, 3, 2))
    assert moco["pos_embed"].tolist() == [[[1, 1], [0, 0], [0, 0], [0, 0]]]


def test_one_cfg_converter_keeps_unknown_keys_and_restores_tuples():
    cfg = as_pretrained_cfg({"input_size": [3, 64, 64], "mean": [0.5, 0.5, 0.5], "level_classes": [10, 5],
                             "label_names": ["a", "b"], "test_pool_size": [2, 2], "num_segments": 49,
                             "my_key": "kept"}, CASTPretrainedCfg)
    assert isinstance(cfg, CASTPretrainedCfg)
    assert cfg.input_size == (3, 64, 64) and cfg.mean == (0.5, 0.5, 0.5) and cfg.level_classes == (10, 5)
    assert cfg.label_names == ("a", "b") and cfg.test_pool_size == (2, 2)
    assert cfg.num_segments == 49 and cfg.my_key == "kept"
    assert hcast.models.cast.as_pretrained_cfg({"num_segments": 7}).num_segments == 7
    assert as_pretrained_cfg("deit_in1k") == "deit_in1k" and as_pretrained_cfg(None) is None
    with pytest.raises(TypeError, match="pretrained_cfg"):
        as_pretrained_cfg(3)
