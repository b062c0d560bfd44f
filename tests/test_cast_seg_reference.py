"""Equality of hcast's CAST segmentation encoder with the original's math.

Random weights (BatchNorm statistics included) are written in the original layout,
MoCo-wrapped (``{'state_dict': {'module.base_encoder.*', 'module.momentum_encoder.*',
'module.predictor.*'}}``, the projector in ``base_encoder.head``) and plain, loaded
through ``timm.create_model(..., pretrained=True, pretrained_cfg_overlay=dict(file=...))``
and compared with ``tests/reference_cast_seg.py`` (loaded strictly from the same
weights) on scikit-image photos with SEEDS superpixels.
"""
from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from skimage import data as skdata
from skimage.transform import resize

import hcast  # noqa: F401
from hcast.ops import superpixels
from reference_cast_seg import ReferenceCASTSeg, to_original

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def _photos(height: int, width: int) -> torch.Tensor:
    imgs = [resize(f(), (height, width), anti_aliasing=True) for f in (skdata.astronaut, skdata.coffee, skdata.chelsea)]
    return (torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() - MEAN) / STD


def _randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point() or (name == "pos_embed" and model.pos_embed_type == "sincos"):
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
            else:
                is_scale = name.endswith("norm.weight") or "norm1.weight" in name or "norm2.weight" in name
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.1 + (1.0 if is_scale else 0.0))
    return model


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


@pytest.fixture(scope="module")
def moco_file(tmp_path_factory):
    """A COCO-MoCo-like checkpoint of cast_seg_small: base encoder with projector,
    momentum encoder (must not load), predictor."""
    source = _randomise(timm.create_model("cast_seg_small", model_stage="pretrain")).eval()
    original = to_original(source, "moco")
    state = {}
    for key, value in original.items():
        state[f"module.base_encoder.{key}"] = value
        state[f"module.momentum_encoder.{key}"] = value + 1
    state["module.predictor.0.weight"] = torch.randn(16, 16)
    path = tmp_path_factory.mktemp("moco") / "checkpoint_0149.pth.tar"
    torch.save({"epoch": 150, "arch": "cast_small", "state_dict": state, "optimizer": {}}, path)
    return path, original


@pytest.fixture(scope="module")
def photos_and_segments():
    x = _photos(128, 128)
    return x, superpixels(x, num_segments=600, method="seeds")  # 441 ids: enough for 320 clusters


def _reference(original, **kwargs) -> ReferenceCASTSeg:
    ref = ReferenceCASTSeg(**kwargs).eval()
    missing, unexpected = ref.load_state_dict(original, strict=False)
    # the projector only where the reference has one
    assert not missing and all(k.startswith("head.") for k in unexpected), (missing, unexpected)
    return ref


def test_moco_segmentation_stage_equals_original(moco_file, photos_and_segments):
    path, original = moco_file
    x, segments = photos_and_segments
    model = timm.create_model("cast_seg_small", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                              num_classes=0).eval()
    ref = _reference(original)
    with torch.no_grad():
        got, want = model.forward_superpixels(x, segments), ref(x, segments)
    assert got.shape == want.shape == (3, int(segments.max()) + 1, 384)
    assert _rel(got, want) < 1e-4, (_rel(got, want), float((got - want).abs().max()))


def test_moco_pretrain_stage_keeps_projector(moco_file, photos_and_segments):
    path, original = moco_file
    x, _ = photos_and_segments
    segments = superpixels(x, num_segments=196, method="seeds")
    model = timm.create_model("cast_seg_small", model_stage="pretrain", pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(path))).eval()
    ref = ReferenceCASTSeg(num_clusters=(64, 32, 16, 8), model_stage="pretrain", head="moco").eval()
    ref.load_state_dict(original, strict=True)
    for key, value in model.head.state_dict().items():  # the base encoder's projector, not the momentum one
        assert torch.equal(value, original[f"head.{key}"])
    with torch.no_grad():
        got, want = model(x, segments), ref(x, segments)
    assert got.shape == want.shape == (3, 256)
    assert _rel(got, want) < 1e-4, (_rel(got, want), float((got - want).abs().max()))


def test_sides_not_multiples_of_8_and_train_mode_statistics(moco_file):
    """124 x 132 images (stem grid 16 x 17, as the original's convolutions give), and
    the fusion's BatchNorm with batch statistics (class tokens included), dropout off."""
    path, original = moco_file
    x = _photos(124, 132)
    segments = superpixels(x, num_segments=600, method="seeds")
    model = timm.create_model("cast_seg_small", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    ref = _reference(original)
    for net in (model, ref):
        net.train()
        for m in net.modules():
            if isinstance(m, torch.nn.Dropout):
                m.eval()
    with torch.no_grad():
        got, want = model.forward_superpixels(x, segments), ref(x, segments)
    assert _rel(got, want) < 1e-4, (_rel(got, want), float((got - want).abs().max()))


def test_deit_convention_plain_state_dict(tmp_path, photos_and_segments):
    """cast_seg_deit.py: learned table with a class slot, output [fused class token,
    fused tokens]; a plain (unwrapped) state dict."""
    x, segments = photos_and_segments
    source = _randomise(timm.create_model("cast_seg_small", pretrained_cfg="deit_in1k"), seed=1).eval()
    original = to_original(source, "deit")
    path = tmp_path / "cast_seg_deit.pth"
    torch.save(original, path)
    model = timm.create_model("cast_seg_small.deit_in1k", pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(path))).eval()
    assert model.pos_embed.requires_grad
    ref = _reference(original, variant="deit")
    with torch.no_grad():
        got, want = model.forward_features(x, segments), ref(x, segments)
    assert _rel(got, want) < 1e-4, (_rel(got, want), float((got - want).abs().max()))


def test_dense_output_copies_superpixel_outputs(photos_and_segments):
    x, segments = photos_and_segments
    model = timm.create_model("cast_seg_tiny", num_classes=5).eval()
    with torch.no_grad():
        dense = model.forward_dense(x[:1], segments[:1])
        per_sp = model.forward_superpixels(x[:1], segments[:1])
    assert dense.shape == (1, 5, 128, 128)
    ys, xs = torch.nonzero(segments[0] == 7, as_tuple=True)
    torch.testing.assert_close(dense[0, :, ys, xs], per_sp[0, 7][:, None].expand(-1, len(ys)))


def test_from_pretrained_recognises_a_segmentation_checkpoint(moco_file):
    path, _ = moco_file
    model = hcast.from_pretrained(str(path))
    assert type(model).__name__ == "CASTSeg" and model.embed_dim == 384


def test_bad_inputs_are_named():
    model = timm.create_model("cast_seg_tiny").eval()
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="height and width"):
        model.forward_superpixels(x, torch.zeros(1, 16, 16, dtype=torch.long))
    with pytest.raises(TypeError, match="segments must hold integer ids"):
        model.forward_superpixels(x, torch.zeros(1, 32, 32))
    with pytest.raises(ValueError, match=">= 0"):
        model.forward_superpixels(x, torch.full((1, 32, 32), -1))
    with pytest.raises(ValueError, match="model_stage"):
        timm.create_model("cast_seg_tiny", model_stage="finetune")
