"""Hier-ViT (hier_vit_small): DeiT with per-level heads on blocks 6/9/12 or 9/12.

Held to the expectations of timm's own model tests (forward, backward, default cfg,
forward_features / forward_head) at a small size, plus equality with the H-CAST
authors' forward (HiOT b1a222b deit/models_hier.py) and their checkpoint layout.
"""
from __future__ import annotations

import json

import pytest
import safetensors.torch
import timm
import torch

import hcast  # noqa: F401  (registers the models with timm)
from hcast.hierarchy import Taxonomy
from hcast.weights import save_for_hf
from hcast.models.hier_vit import HierVisionTransformer, default_level_blocks
from hf_server import LocalHub, use_local_hub

# DeiT-S's depth (so the level blocks are 6/9/12), narrow and on 32 x 32 images
SMALL = dict(embed_dim=48, num_heads=3, img_size=32)


def make(level_classes=(10, 6, 3), **kwargs) -> HierVisionTransformer:
    torch.manual_seed(0)
    return timm.create_model("hier_vit_small", level_classes=level_classes, **SMALL, **kwargs).eval()


def images(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def original_forward(model: HierVisionTransformer, x: torch.Tensor):
    """The authors' HierVisionTransformer.forward, written against this model's modules:
    class token after every third block, the shared final norm, then the level heads."""
    x = model.patch_embed(x)
    x = torch.cat([model.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + model.pos_embed
    intermediates = {}
    for k, block in enumerate(model.blocks, start=1):
        x = block(x)
        if k % 3 == 0:
            intermediates[k // 3] = x
    head, family, *manufacturer = model.heads
    if manufacturer:
        return (head(model.norm(intermediates[2][:, 0])), family(model.norm(intermediates[3][:, 0])),
                manufacturer[0](model.norm(intermediates[4][:, 0])))
    return head(model.norm(intermediates[3][:, 0])), family(model.norm(intermediates[4][:, 0]))


def test_default_level_blocks():
    assert default_level_blocks(12, 3) == (5, 8, 11)
    assert default_level_blocks(12, 2) == (8, 11)
    assert default_level_blocks(12, 1) == (11,)
    with pytest.raises(ValueError, match="level_blocks"):
        default_level_blocks(12, 5)


@pytest.mark.parametrize("level_classes", [(10, 6, 3), (10, 3)])
def test_forward_equals_original(level_classes):
    model = make(level_classes)
    assert model.level_blocks == ((5, 8, 11) if len(level_classes) == 3 else (8, 11))
    x = images()
    with torch.no_grad():
        got, want = model.forward_levels(x), original_forward(model, x)
        assert torch.equal(model(x), got[0])  # forward: the finest level
    assert isinstance(got, tuple) and [o.shape for o in got] == [(2, n) for n in level_classes]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_timm_model_expectations():
    """What timm's generic tests check: cfg keys, forward_features/forward_head, backward."""
    model = make()
    cfg = model.pretrained_cfg
    for key in ("input_size", "mean", "std", "first_conv", "classifier", "num_classes", "crop_pct", "interpolation"):
        assert key in cfg
    assert dict(model.named_modules())[cfg["first_conv"]] is model.patch_embed.proj
    assert all(isinstance(dict(model.named_modules())[name], torch.nn.Linear) for name in cfg["classifier"])
    # the data config follows the size the ViT was built for (img_size=32), not the 224 of its weights
    assert timm.data.resolve_data_config({}, model=model)["input_size"] == (3, 32, 32)
    assert timm.create_model("hier_vit_small").pretrained_cfg["input_size"] == (3, 224, 224)
    assert model.num_classes == 10 and model.get_classifier() is model.heads[0]

    x = images()
    feats = model.forward_features(x)
    assert feats.shape == (2, 3 + 4, SMALL["embed_dim"])  # 3 level tokens, then the 2 x 2 patch tokens
    assert model.forward_head(feats, pre_logits=True).shape == (2, SMALL["embed_dim"])
    pre = model.forward_head_levels(feats, pre_logits=True)
    assert [p.shape for p in pre] == [(2, SMALL["embed_dim"])] * 3

    model.train()
    loss = sum(o.logsumexp(-1).mean() for o in model.forward_levels(x))
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert no_grad == []  # every block feeds the coarsest level, every head its level


def test_features_only():
    model = timm.create_model("hier_vit_small", features_only=True, level_classes=(5, 3), **SMALL)
    feats = model(images())
    assert [f.shape for f in feats] == [(2, SMALL["embed_dim"], 2, 2)] * 3


def test_grad_checkpointing_same_result():
    model = make().train()
    x = images()
    torch.manual_seed(0)
    expected = model.forward_levels(x)
    model.set_grad_checkpointing(True)
    torch.manual_seed(0)
    got = model.forward_levels(x)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


def test_reset_classifier_and_argument_checks():
    model = make()
    model.reset_classifier((7, 4, 2))
    assert model.level_classes == (7, 4, 2) and model.num_classes == 7
    assert [o.shape[1] for o in model.forward_levels(images())] == [7, 4, 2]
    model.reset_classifier(0)  # features out of every level
    assert [o.shape[1] for o in model.forward_levels(images())] == [SMALL["embed_dim"]] * 3
    with pytest.raises(ValueError, match="num_classes"):
        model.reset_classifier((7, 4))
    with pytest.raises(TypeError, match="level_classes"):  # a count where a sequence is needed: a type
        make(level_classes=10)
    with pytest.raises(ValueError, match="level_blocks"):
        make(level_blocks=(8, 5, 11))
    with pytest.raises(ValueError, match="0-based"):
        make(level_blocks=(6, 9, 12))  # 12 is out of range for 12 blocks (0-based)
    with pytest.raises(ValueError, match="num_classes"):
        make(num_classes=5)
    with pytest.raises(ValueError, match="level_classes"):
        make(level_classes=(10, 3), taxonomy=Taxonomy([[0, 0, 1]]))


def test_loads_original_hier_vit_checkpoint(tmp_path):
    """The authors' layout: {'model': ...} with head / family_head / manufacturer_head."""
    source = make()
    names = ("head", "family_head", "manufacturer_head")
    original = {}
    for key, value in source.state_dict().items():
        if key.startswith("heads."):
            index, rest = key.split(".", 2)[1:]
            key = f"{names[int(index)]}.{rest}"
        original[key] = value
    path = tmp_path / "best_checkpoint.pth"
    torch.save({"model": original, "epoch": 99}, path)
    model = timm.create_model("hier_vit_small", level_classes=(10, 6, 3), pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(path), num_classes=10), **SMALL).eval()
    x = images()
    with torch.no_grad():
        for a, b in zip(model(x), source(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_pretrained_tag_loads_deit_weights_from_hub(tmp_path, monkeypatch):
    """hier_vit_small.fb_in1k reads timm's deit_small_patch16_224.fb_in1k safetensors
    through timm's own hub loading; the level heads start from their initialisation."""
    deit = timm.create_model("deit_small_patch16_224", **SMALL)
    folder = tmp_path / "deit"
    folder.mkdir()
    safetensors.torch.save_file(deit.state_dict(), str(folder / "model.safetensors"))
    with LocalHub() as hub:
        hub.add_folder("timm/deit_small_patch16_224.fb_in1k", folder)
        use_local_hub(monkeypatch, hub, tmp_path / "hf")
        model = timm.create_model("hier_vit_small.fb_in1k", pretrained=True, level_classes=(10, 3), **SMALL)
        imagenet = timm.create_model("hier_vit_small.fb_in1k", pretrained=True, level_classes=(1000, 3), **SMALL)
    ref = deit.state_dict()
    for key, value in model.state_dict().items():
        if not key.startswith("heads."):
            assert torch.equal(value, ref[key]), key
    assert model.heads[0].weight.shape == (10, SMALL["embed_dim"])
    assert torch.equal(imagenet.heads[0].weight, ref["head.weight"])  # the 1000-class head fits: kept
    assert len(hub.gets("model.safetensors")) == 1  # cached for the second model


def test_save_for_hf_with_taxonomy_round_trips(tmp_path):
    taxonomy = Taxonomy([[0, 0, 1, 1, 2]], names=[list("abcde"), ["x", "y", "z"]])
    model = timm.create_model("hier_vit_small", taxonomy=taxonomy, **SMALL).eval()
    assert model.level_classes == (5, 3) and model.taxonomy is taxonomy
    out = save_for_hf(model, tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    assert Taxonomy.from_dict(config["taxonomy"]) == taxonomy
    assert config["label_names"] == list("abcde")
    assert config["model_args"]["level_classes"] == [5, 3]
    loaded = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    x = images()
    with torch.no_grad():
        for a, b in zip(loaded(x), model(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
