"""Equality of hcast's CAST / H-CAST with a plain re-implementation of the original code.

A randomly initialised hcast model is written out in the original checkpoint layout
(DeiT ``{'model': ...}`` with the duplicated ``blocks.N`` / ``blocksK.M`` keys, MoCo v3
``{'state_dict': {'module.base_encoder.' ...}}`` with momentum encoder, predictor and
projection MLP, H-CAST heads), loaded back through ``timm.create_model(...,
pretrained=True, pretrained_cfg_overlay=dict(file=...))``, and compared with
``tests/reference_cast.py`` (the original structure, loaded strictly from the same file)
on real photos with SEEDS superpixels.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import timm
import torch
from skimage import data as skdata
from skimage.transform import resize

import hcast  # noqa: F401
from hcast.ops import superpixels
from hcast.ops.superpixel_pool import resize_segments
from original_checkpoints import (make_source, photos, randomise, reference_from, rel_err, save_deit as _save_deit,
                                  save_moco as _save_moco, to_original)
from reference_cast import ReferenceCAST, reference_segmentation

TINY = dict(img_size=64, embed_dim=192, depths=(3, 3, 3, 2), num_heads=3, num_clusters=(16, 8, 4, 2))


@pytest.fixture(scope="module")
def tiny_inputs():
    x = photos(64)
    return x, superpixels(x, num_segments=49, method="seeds")


def _check_params_landed(model, source, skip=()):
    """Every loaded parameter equals the one the original layout put there."""
    src = source.state_dict()
    for key, value in model.state_dict().items():
        if any(key.startswith(s) for s in skip):
            continue
        assert torch.equal(value, src[key]), f"{key} did not load where the original puts it"


def test_deit_checkpoint_equals_reference(tmp_path, tiny_inputs):
    x, segments = tiny_inputs
    source = make_source("cast_tiny", num_classes=10)
    original = to_original(source)
    path = tmp_path / "best_checkpoint.pth"
    _save_deit(path, original)
    model = timm.create_model("cast_tiny", pretrained=True, num_classes=10,
                              pretrained_cfg_overlay=dict(file=str(path), num_classes=10)).eval()
    _check_params_landed(model, source)
    ref = reference_from(original, num_classes=10, **TINY)
    with torch.no_grad():
        expected = ref(x, segments)
        got = model(x, segments)
        assert rel_err(got, expected) < 1e-4
        # The hierarchical segmentation follows the same assignments.
        seg = model.forward_segments(x, segments)
        ref_logits = [ref.forward_features(x, segments)[f"logit{i}"] for i in range(1, 5)]
        for a, b in zip(seg["logits"], ref_logits):
            assert rel_err(a, b) < 1e-4
        # Same labels wherever a superpixel owns a token; superpixels too small for a
        # cell of the 8 x 8 grid (padding tokens in the original) follow their cells.
        grid_ids = resize_segments(segments, (8, 8))
        owns_token = torch.stack([torch.isin(segments[b], grid_ids[b]) for b in range(len(segments))])
        assert owns_token.float().mean() > 0.8
        for a, b in zip(seg["segmentations"], reference_segmentation(ref_logits, segments)):
            assert torch.equal(a[owns_token], b[owns_token])


def test_moco_checkpoint_equals_reference(tmp_path, tiny_inputs):
    x, segments = tiny_inputs
    rng = torch.Generator().manual_seed(1)
    source = make_source("cast_tiny", num_classes=0, pos_embed="sincos")
    original = to_original(source, pos_embed="sincos")
    original.pop("head.weight", None), original.pop("head.bias", None)
    path = tmp_path / "checkpoint_0099.pth.tar"
    _save_moco(path, original, rng)
    model = timm.create_model("cast_tiny", pretrained=True, num_classes=0, pos_embed="sincos",
                              pretrained_cfg_overlay=dict(file=str(path), num_classes=0)).eval()
    _check_params_landed(model, source)
    ref = reference_from(original, num_classes=0, variant="moco", **TINY)
    with torch.no_grad():
        assert rel_err(model(x, segments), ref(x, segments)) < 1e-4


def test_original_state_dict_round_trip_is_lossless():
    """Every key of the original layout is either mapped or deliberately dropped."""
    source = make_source("cast_tiny", num_classes=5)
    original = to_original(source)
    model = timm.create_model("cast_tiny", num_classes=5)
    converted = hcast.models.cast.checkpoint_filter_fn({"model": original}, model)
    assert set(converted) == set(source.state_dict())
    dropped = {k for k in original if k.startswith("blocks.") or k.startswith("pool4.pool_block.fc")}
    assert len(dropped) == sum(TINY["depths"]) * 12 + 8  # duplicate block copies + unused last MLP
    assert len(converted) == len(original) - len(dropped)
    model.load_state_dict(converted, strict=True)


@pytest.mark.parametrize("level_classes", [(6, 3), (8, 4, 2)])
def test_hcast_checkpoint_equals_reference(tmp_path, tiny_inputs, level_classes):
    x, segments = tiny_inputs
    source = make_source("hcast_tiny", level_classes=level_classes)
    original = to_original(source)
    path = tmp_path / "hcast.pth"
    _save_deit(path, original)
    model = timm.create_model("hcast_tiny", pretrained=True, level_classes=level_classes,
                              pretrained_cfg_overlay=dict(file=str(path))).eval()
    _check_params_landed(model, source)
    ref = reference_from(original, level_classes=level_classes, **TINY)
    with torch.no_grad():
        got, expected = model.forward_levels(x, segments), ref(x, segments)
    assert isinstance(got, tuple) and len(got) == len(level_classes)
    for g, e, n in zip(got, expected, level_classes):
        assert g.shape == (3, n)
        assert rel_err(g, e) < 1e-4


def test_cast_small_224_equals_reference_and_resizes_pos_embed(tmp_path):
    """Full-size CAST-S on 224 x 224 photos; the same checkpoint also loads into a
    192 x 192 model with the position embedding resampled as timm does."""
    x = photos(224)[:2]
    segments = superpixels(x, num_segments=196, method="seeds")
    source = make_source("cast_small", num_classes=7)
    original = to_original(source)
    path = tmp_path / "best_checkpoint.pth"
    _save_deit(path, original)
    model = timm.create_model("cast_small", pretrained=True, num_classes=7,
                              pretrained_cfg_overlay=dict(file=str(path), num_classes=7)).eval()
    _check_params_landed(model, source)
    ref = reference_from(original, num_classes=7)
    with torch.no_grad():
        assert rel_err(model(x, segments), ref(x, segments)) < 1e-4

    small = timm.create_model("cast_small", pretrained=True, num_classes=7, img_size=192,
                              pretrained_cfg_overlay=dict(file=str(path), num_classes=7)).eval()
    assert small.pos_embed.shape == (1, 24 * 24 + 1, 384)
    expected = timm.layers.resample_abs_pos_embed(original["pos_embed"], [24, 24], num_prefix_tokens=1)
    assert torch.equal(small.pos_embed.data, expected)
    _check_params_landed(small, source, skip=("pos_embed",))
