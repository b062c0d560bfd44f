"""CAST models held to timm's own model-test expectations (timm tests/test_models.py:
forward, backward, default cfgs, forward_features / forward_head, reset_classifier,
grad checkpointing), plus hcast's superpixel behaviour: superpixels from the pretrained
cfg, hierarchical segmentation, robustness to images with few superpixels.

Small sizes: cast_tiny at 64 x 64, batch 2-4; larger variants are built on the meta
device to check their configuration without spending time on weights.
"""
from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from skimage import data as skdata
from skimage.transform import resize

import hcast  # noqa: F401
import hcast.models.cast as cast_module
from hcast.ops import superpixels
from hcast.ops.superpixel_pool import resize_segments
from reference_cast import ReferenceCAST

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
CAST_MODELS = ["cast_tiny", "cast_small", "cast_small_deep", "cast_base", "cast_base_deep"]


def photos(size: int = 64) -> torch.Tensor:
    imgs = [resize(f(), (size, size), anti_aliasing=True) for f in (skdata.astronaut, skdata.coffee, skdata.chelsea)]
    return (torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() - MEAN) / STD


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return timm.create_model("cast_tiny", num_classes=10).eval()


@pytest.fixture(scope="module")
def batch():
    x = photos(64)
    return x, superpixels(x, num_segments=49, method="seeds")


# -- registry and pretrained cfgs (timm: test_model_default_cfgs) ------------------------


def test_models_and_tags_are_registered():
    assert set(CAST_MODELS) <= set(timm.list_models("cast_*"))
    tags = set(timm.list_pretrained("cast_*"))
    assert {"cast_small.deit_in1k", "cast_small.moco_in1k", "cast_small_deep.moco_in1k",
            "cast_base.moco_in1k"} <= tags


@pytest.mark.parametrize("name", CAST_MODELS)
def test_architecture_and_default_cfg(name):
    with torch.device("meta"):
        m = timm.create_model(name)
    cfg = m.pretrained_cfg
    state = m.state_dict()
    assert cfg["first_conv"] + ".weight" in state
    if cfg.get("num_classes"):
        assert cfg["classifier"] + ".weight" in state
    assert cfg["input_size"][0] == 3 and cfg["mean"] and cfg["std"]
    assert cfg["superpixel_method"] == "seeds" and cfg["num_segments"] > 0
    dim = 192 if name == "cast_tiny" else 384 if "small" in name else 768
    depths = (6, 3, 3, 3) if "deep" in name else (3, 3, 3, 2)
    clusters = (16, 8, 4, 2) if name == "cast_tiny" else (64, 32, 16, 8)
    assert m.num_features == m.head_hidden_size == dim
    assert tuple(len(s.blocks) for s in m.stages) == depths
    assert tuple(s.pool.num_clusters for s in m.stages) == clusters
    # The last pooling only computes assignments: no centroid update weights.
    assert not hasattr(m.stages[-1].pool, "fc1") and hasattr(m.stages[0].pool, "fc1")


def test_pretrained_tags_point_at_the_cast_zoo():
    cfg = timm.get_pretrained_cfg("cast_small.deit_in1k")
    assert (cfg.hf_hub_id, cfg.hf_hub_filename) == ("twke/CAST", "snapshots/deit/imagenet1k/cast_small/best_checkpoint.pth")
    assert cfg.num_classes == 1000 and cfg.superpixel_method == "seeds" and cfg.num_segments == 196
    moco = timm.get_pretrained_cfg("cast_base.moco_in1k")
    assert moco.hf_hub_filename == "snapshots/moco/imagenet1k/cast_base/checkpoint_0099.pth.tar"
    assert moco.num_classes == 0
    with torch.device("meta"):
        assert timm.create_model("cast_small.moco_in1k").pos_embed_type == "sincos"
        assert timm.create_model("cast_small").pos_embed_type == "learn"  # default tag: deit_in1k


# -- forward / backward (timm: test_model_forward, test_model_backward) -------------------


def test_forward_without_segments_uses_seeds_and_grad_checkpointing_matches(model, batch, monkeypatch):
    x, _ = batch
    calls = []

    def recording(images, num_segments=196, method="seeds", **kwargs):
        calls.append((num_segments, method))
        return superpixels(images, num_segments=num_segments, method=method, **kwargs)

    monkeypatch.setattr(hcast.ops, "superpixels", recording)
    with torch.no_grad():
        out = model(x)
    assert calls == [(49, "seeds")]
    assert out.shape == (3, 10) and torch.isfinite(out).all()
    segments = superpixels(x, num_segments=49, method="seeds")
    with torch.no_grad():
        assert torch.allclose(model(x, segments), out, rtol=1e-5, atol=1e-6)
        model.set_grad_checkpointing(True)
        try:
            out2 = model(x, segments)
        finally:
            model.set_grad_checkpointing(False)
    assert torch.allclose(out, out2, rtol=1e-4, atol=1e-5)


def test_superpixels_fall_back_to_torch_slic_without_opencv_contrib(model, monkeypatch):
    calls = []
    monkeypatch.setattr(cast_module, "_has_seeds", lambda: False)
    monkeypatch.setattr(hcast.ops, "superpixels",
                        lambda images, num_segments, method, mean, std: calls.append(method) or
                        torch.zeros(images.shape[0], *images.shape[-2:], dtype=torch.long))
    with pytest.warns(RuntimeWarning, match="torch_slic"):
        model.superpixels(torch.zeros(1, 3, 64, 64))
    assert calls == ["torch_slic"]


def test_backward_reaches_every_trainable_parameter(batch):
    x, segments = batch
    m = timm.create_model("cast_tiny", num_classes=42, drop_path_rate=0.1).train()
    out = m(x[:2], segments[:2])
    assert out.shape == (2, 42)
    out.mean().backward()
    # As in the original, the last pooling is not trained (it feeds only the coarsest
    # segmentation): its weights are buffers under the original keys, not parameters.
    params = dict(m.named_parameters())
    frozen = {n for n, _ in m.named_buffers() if n.startswith("stages.3.pool.")}
    assert "stages.3.pool.assign.attn.qkv.weight" in frozen and not frozen & params.keys()
    for name, p in params.items():
        assert p.requires_grad and p.grad is not None, f"no gradient for {name}"
        assert torch.isfinite(p.grad).all(), name


def test_optimizer_param_groups_with_layer_decay():
    m = timm.create_model("cast_tiny")
    from timm.optim import create_optimizer_v2

    opt = create_optimizer_v2(m, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    grouped = {id(p) for g in opt.param_groups for p in g["params"]}
    assert grouped == {id(p) for p in m.parameters() if p.requires_grad}
    no_decay = m.no_weight_decay()
    assert {"pos_embed", "cls_token"} <= no_decay


# -- features / head / classifier (timm: test_model_default_cfgs) ------------------------


def test_forward_features_head_and_reset_classifier(batch):
    x, segments = batch
    m = timm.create_model("cast_tiny", num_classes=10).eval()
    with torch.no_grad():
        feats = m.forward_features(x, segments)
        assert feats.shape == (3, 1 + m.num_clusters[2], m.num_features)
        pre = m.forward_head(feats, pre_logits=True)
        assert pre.shape == (3, m.head_hidden_size)
        assert torch.allclose(m.forward_head(feats), m.get_classifier()(pre))
        m.reset_classifier(0)
        assert m.num_classes == 0 and isinstance(m.get_classifier(), torch.nn.Identity)
        assert torch.allclose(m(x, segments), pre)
        m.reset_classifier(7, global_pool="avg")
        assert m(x, segments).shape == (3, 7)
        assert torch.allclose(m.forward_head(feats, pre_logits=True), feats[:, 1:].mean(1))
    with pytest.raises(ValueError, match="global_pool"):
        m.reset_classifier(3, global_pool="mean")
    m0 = timm.create_model("cast_tiny", num_classes=0)
    assert m0(x[:1], segments[:1]).shape == (1, m0.num_features)


def test_skips_last_pooling_for_classification(model, batch, monkeypatch):
    x, segments = batch
    calls = []
    monkeypatch.setattr(model.stages[-1].pool, "forward", lambda *a: calls.append(1))
    with torch.no_grad():
        model(x, segments)
    assert calls == []


def test_checkpoint_filter_accepts_hcast_keys(model):
    converted = cast_module.checkpoint_filter_fn(model.state_dict(), model)
    assert converted.keys() == model.state_dict().keys()
    m = timm.create_model("cast_tiny", num_classes=10)
    m.load_state_dict(converted, strict=True)


# -- position embedding at other input sizes ---------------------------------------------


def test_other_input_sizes_resample_the_position_embedding(model):
    x = photos(96)
    segments = superpixels(x, num_segments=100, method="seeds")
    big = timm.create_model("cast_tiny", num_classes=10, img_size=96)
    big.load_state_dict(cast_module.checkpoint_filter_fn(model.state_dict(), big))
    big.eval()
    with torch.no_grad():
        assert torch.allclose(model(x, segments), big(x, segments), rtol=1e-4, atol=1e-5)


# -- hierarchical segmentation -----------------------------------------------------------


def test_forward_segments(model, batch):
    x, segments = batch
    with torch.no_grad():
        seg = model.forward_segments(x, segments)
    assert torch.equal(seg["superpixels"], segments)
    assert len(seg["segmentations"]) == len(seg["logits"]) == 4
    num_tokens = int(segments.max()) + 1
    for level, (labels, logits, k) in enumerate(zip(seg["segmentations"], seg["logits"], model.num_clusters)):
        assert labels.shape == segments.shape and labels.dtype == torch.int64
        assert labels.min() >= 0 and labels.max() < k
        assert logits.shape[-1] == k
        assert logits.shape[1] == (num_tokens if level == 0 else model.num_clusters[level - 1])
    # Stage 1 groups whole superpixels: every superpixel that owns a cell of the 8 x 8
    # token grid gets one label (smaller ones take the labels of the cells they cover).
    first = seg["segmentations"][0]
    grid_ids = resize_segments(segments, (8, 8))
    for b in range(3):
        for s in grid_ids[b].unique():
            assert first[b][segments[b] == s].unique().numel() == 1
    # Later stages only merge: a stage-l group lies within one stage-(l+1) group.
    for fine, coarse in zip(seg["segmentations"][:-1], seg["segmentations"][1:]):
        for b in range(3):
            for f in fine[b].unique():
                assert coarse[b][fine[b] == f].unique().numel() == 1


# -- robustness: too few superpixels ------------------------------------------------------


def two_segment_image(size: int = 64):
    img = torch.zeros(3, size, size)
    img[:, :, size // 2:] = 1.0
    ids = torch.zeros(size, size, dtype=torch.long)
    ids[:, size // 2:] = 1
    return (img - MEAN) / STD, ids


def test_few_superpixels_crash_the_original_but_not_hcast(model, batch):
    x, segments = batch
    two, two_ids = two_segment_image()
    zero, zero_ids = torch.zeros(3, 64, 64), torch.zeros(64, 64, dtype=torch.long)
    images = torch.stack([zero, x[0], two, x[1], x[2]])
    ids = torch.stack([zero_ids, segments[0], two_ids, segments[1], segments[2]])
    ref = ReferenceCAST(img_size=64, embed_dim=192, num_heads=3, num_clusters=(16, 8, 4, 2), num_classes=10)
    with pytest.raises(AssertionError, match="start point"):
        ref(images[:1], ids[:1])
    with torch.no_grad():
        out = model(images, ids)
        alone = model(x, segments)
        seg = model.forward_segments(images, ids)
    assert torch.isfinite(out).all()
    # The photos get the same outputs as without the degenerate images in the batch.
    assert torch.allclose(out[[1, 3, 4]], alone, rtol=1e-4, atol=1e-5)
    assert seg["segmentations"][0][0].unique().numel() == 1
    assert seg["segmentations"][0][2].unique().numel() <= 2
    for labels, k in zip(seg["segmentations"], model.num_clusters):
        assert labels.min() >= 0 and labels.max() < k


def test_blank_image_with_its_own_superpixels(model):
    zero = torch.zeros(2, 3, 64, 64)
    with torch.no_grad():
        out = model(zero, superpixels(zero, num_segments=49, method="seeds"))
    assert torch.isfinite(out).all()


def test_ids_with_gaps_match_the_reference(model, batch):
    """Unused ids become padded tokens, exactly as in the original."""
    x, segments = batch
    gapped = segments * 3 + 1
    ref = ReferenceCAST(img_size=64, embed_dim=192, num_heads=3, num_clusters=(16, 8, 4, 2), num_classes=10).eval()
    from original_checkpoints import to_original

    ref.load_state_dict(to_original(model), strict=True)
    with torch.no_grad():
        got, expected = model(x, gapped), ref(x, gapped)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max())


@pytest.mark.parametrize("size", [16, 32])
def test_small_inputs(model, size):
    """16 x 16 gives a 2 x 2 grid: 4 tokens for 16 clusters."""
    x = photos(size)
    ids = torch.arange((size // 4) ** 2).view(size // 4, size // 4)
    ids = ids.repeat_interleave(4, 0).repeat_interleave(4, 1).expand(3, -1, -1)
    with torch.no_grad():
        out = model(x, ids)
        seg = model.forward_segments(x, ids)
    assert out.shape == (3, 10) and torch.isfinite(out).all()
    assert all(s.shape == (3, size, size) for s in seg["segmentations"])


# -- input validation ----------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors(model):
    with pytest.raises(ValueError, match="images"):
        model(torch.zeros(3, 64, 64))
    with pytest.raises(ValueError, match="multiples of 8"):
        model(torch.zeros(1, 3, 60, 64))
    with pytest.raises(TypeError, match="segments must hold integer ids"):
        model(torch.zeros(1, 3, 64, 64), torch.zeros(1, 64, 64))
    with pytest.raises(ValueError, match="batch size"):
        model(torch.zeros(2, 3, 64, 64), torch.zeros(1, 64, 64, dtype=torch.long))
    with pytest.raises(ValueError, match="depths"):
        cast_module.CAST(depths=(1, 1, 1))


def test_eval_stem_folds_batchnorm_and_equals_the_plain_path(batch, monkeypatch):
    """model.eval() folds each BatchNorm into its convolution and runs the strided
    convolutions in groups of images: same numbers as the module-by-module path, and
    gradients still reach the convolutions and BatchNorm affines."""
    torch.manual_seed(1)
    m = timm.create_model("cast_tiny", num_classes=10)
    for mod in m.patch_embed.proj:  # non-trivial running statistics
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)
    stem = m.patch_embed.eval()
    x = batch[0]
    plain = stem.proj(x).permute(0, 2, 3, 1)
    with torch.no_grad():
        folded = stem(x)
        monkeypatch.setattr(type(stem), "chunk_bytes", 1)  # one image at a time
        chunked = stem(x)
    assert folded.shape == plain.shape == (3, 8, 8, m.embed_dim)
    torch.testing.assert_close(folded, plain.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(chunked, folded, rtol=1e-6, atol=1e-6)
    stem(x).square().mean().backward()
    for name, p in stem.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # train mode keeps the batch statistics
    stem.train()
    assert not torch.allclose(stem(x), folded, atol=1e-3)
