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
from reference_cast import ReferenceCAST, reference_segmentation

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def photos(size: int) -> torch.Tensor:
    """astronaut, coffee, chelsea as a normalised (3, 3, size, size) batch."""
    imgs = [resize(f(), (size, size), anti_aliasing=True) for f in (skdata.astronaut, skdata.coffee, skdata.chelsea)]
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float()
    return (x - MEAN) / STD


def to_original(model, pos_embed: str = "learn", rng: torch.Generator | None = None) -> dict:
    """hcast state dict -> the original's key layout (inverse of checkpoint_filter_fn).

    The last stage's unused ``fc1``/``fc2`` are filled with random values: the original
    has them, hcast drops them."""
    rng = rng or torch.Generator().manual_seed(0)
    depths = model.depths
    starts = [sum(depths[:i]) for i in range(len(depths))]
    dim = model.embed_dim
    out = {}
    for key, value in model.state_dict().items():
        m = re.match(r"stages\.(\d+)\.blocks\.(\d+)\.(.*)", key)
        if m:
            stage, index, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            out[f"blocks{stage + 1}.{starts[stage] + index}.{rest}"] = value  # global index
            out[f"blocks.{starts[stage] + index}.{rest}"] = value
            continue
        m = re.match(r"stages\.(\d+)\.pool\.(.*)", key)
        if m:
            rest = m.group(2)
            for new, old in (("assign.", "centroid_fc."), ("fc1_norm.", "fc1.0."), ("fc1.", "fc1.1."),
                             ("fc2_norm.", "fc2.0."), ("fc2.", "fc2.1.")):
                if rest.startswith(new):
                    rest = old + rest[len(new):]
                    break
            out[f"pool{int(m.group(1)) + 1}.pool_block.{rest}"] = value
            continue
        m = re.match(r"heads\.(\d+)\.(.*)", key)
        if m:
            name = ("head", "family_head", "manufacturer_head")[int(m.group(1))]
            out[f"{name}.{m.group(2)}"] = value
            continue
        out[key] = value
    last = len(depths)
    for name, shape in (("fc1.0.weight", (dim,)), ("fc1.0.bias", (dim,)), ("fc1.1.weight", (4 * dim, dim)),
                        ("fc1.1.bias", (4 * dim,)), ("fc2.0.weight", (4 * dim,)), ("fc2.0.bias", (4 * dim,)),
                        ("fc2.1.weight", (dim, 4 * dim)), ("fc2.1.bias", (dim,))):
        out[f"pool{last}.pool_block.{name}"] = torch.randn(shape, generator=rng)
    if pos_embed == "sincos":
        out["pe_token"] = out["pos_embed"][:, :1].clone()
        out["pos_embed"] = out["pos_embed"][:, 1:].clone()
    return out


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random values everywhere, BatchNorm statistics included, so no key can be
    confused with another and nothing sits at a trivial init value."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                if name.endswith("running_var"):
                    tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
                elif name == "pos_embed" and not model.pos_embed.requires_grad:
                    continue  # fixed sin-cos
                else:
                    tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.1
                                 + (1.0 if name.endswith("norm.weight") or "norm1.weight" in name
                                    or "norm2.weight" in name else 0.0))
    return model


def make_source(name: str, **kwargs) -> torch.nn.Module:
    return randomise(timm.create_model(name, pretrained=False, **kwargs)).eval()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


def reference_from(original: dict, **kwargs) -> ReferenceCAST:
    ref = ReferenceCAST(**kwargs).eval()
    missing, unexpected = ref.load_state_dict(original, strict=True)
    assert not missing and not unexpected
    return ref


TINY = dict(img_size=64, embed_dim=192, depths=(3, 3, 3, 2), num_heads=3, num_clusters=(16, 8, 4, 2))


@pytest.fixture(scope="module")
def tiny_inputs():
    x = photos(64)
    return x, superpixels(x, num_segments=49, method="seeds")


def _save_deit(path, original):
    torch.save({"model": original, "epoch": 299, "args": None}, path)


def _save_moco(path, original, rng):
    state = {}
    for k, v in original.items():
        state[f"module.base_encoder.{k}"] = v
        state[f"module.momentum_encoder.{k}"] = v + 1  # must not be loaded
    dim = original["norm.weight"].shape[0]
    for i, shape in enumerate([(32, dim), (32,), (32,)]):
        state[f"module.base_encoder.head.{i}.weight"] = torch.randn(shape, generator=rng)
    state["module.predictor.0.weight"] = torch.randn(16, 16, generator=rng)
    torch.save({"epoch": 100, "arch": "cast_small", "state_dict": state, "optimizer": {}}, path)


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
                              pretrained_cfg_overlay=dict(file=str(path), num_classes=level_classes[0],
                                                          level_classes=level_classes)).eval()
    _check_params_landed(model, source)
    ref = reference_from(original, level_classes=level_classes, **TINY)
    with torch.no_grad():
        got, expected = model(x, segments), ref(x, segments)
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
