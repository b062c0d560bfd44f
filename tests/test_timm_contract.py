"""hcast's models held to timm's whole model contract, as timm's generic model tests
(tests/test_models.py) hold timm's own ViTs: every registered name builds with no
arguments, every parameter gets a gradient, ``features_only`` / ``forward_intermediates``
/ ``prune_intermediate_layers``, ``global_pool`` as timm's ViT, one tensor from ``forward``
and every level from ``forward_levels`` for H-CAST and Hier-ViT, ``num_classes``, and
``from_pretrained``. Small widths and depths keep it fast; ``../shared/timm/run.sh`` runs
timm's own file (CI does).
"""
from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from skimage import data as skdata
from skimage.transform import resize

import hcast
from hf_server import LocalHub, use_local_hub
from hcast.weights import save_for_hf
from hcast.models.cast import CAST, paint_tokens
from hcast.models.hcast import HCAST
from hcast.models.hier_vit import HierVisionTransformer
from hcast.ops import superpixels
from hcast.ops.superpixel_pool import resize_segments

TINY = dict(embed_dim=32, depths=(1, 1, 1, 1), num_heads=2)
VIT_TINY = dict(embed_dim=32, depth=4, num_heads=2, img_size=32)
HCAST_NAMES = timm.list_models(["cast_*", "hcast_*", "hier_vit_*"])
HCAST_TAGS = timm.list_models(["cast_*", "hcast_*", "hier_vit_*"], include_tags=True)
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


@pytest.fixture(scope="module")
def batch():
    """Two real photos at 64 x 64, normalised, with their SEEDS superpixels."""
    imgs = [resize(f(), (64, 64), anti_aliasing=True) for f in (skdata.astronaut, skdata.chelsea)]
    x = (torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() - MEAN) / STD
    return x, superpixels(x, num_segments=49, method="seeds")


def cast(**kwargs) -> CAST:
    torch.manual_seed(0)
    return timm.create_model("cast_tiny", **{**TINY, **kwargs}).eval()


def hcast_tiny(**kwargs) -> HCAST:
    torch.manual_seed(0)
    return timm.create_model("hcast_tiny", **{**TINY, **kwargs}).eval()


# -- every name builds with no arguments (timm: test_model_default_cfgs*) ---------------


@pytest.mark.parametrize("name", HCAST_TAGS)
def test_every_name_and_tag_builds_with_no_arguments(name):
    with torch.device("meta"):
        model = timm.create_model(name)
    cfg = model.pretrained_cfg
    state = model.state_dict()
    # 0: MoCo tags (backbones); None: hcast_small.deit_in1k, a backbone for fresh level heads
    expected = cfg.get("num_classes")
    assert model.num_classes == (model.level_classes[0] if expected is None else expected) >= 0
    assert model.num_features == model.head_hidden_size == model.embed_dim
    classifiers = cfg.get("classifier") if isinstance(cfg.get("classifier"), tuple) else (cfg.get("classifier"),)
    for key in (classifiers if expected else ()) + (cfg["first_conv"],):
        assert key + ".weight" in state
    assert len(model.feature_info) >= 3


def test_hcast_names_take_their_default_tags_level_classes():
    # Default tags with real weights: Living-17's H-CAST for hcast_small.
    assert timm.get_pretrained_cfg("hcast_small").tag == "living17"
    assert timm.get_pretrained_cfg("hcast_small").gdrive_id
    with torch.device("meta"):
        assert timm.create_model("hcast_small").level_classes == (34, 17)
        assert timm.create_model("hcast_small.entity30").level_classes == (120, 30)
        assert timm.create_model("hcast_small.deit_in1k").level_classes == (34, 17)
        assert timm.create_model("hcast_tiny").level_classes == (10, 5)  # hcast.data's Fashion-MNIST taxonomy


# -- every parameter takes part (timm: test_model_backward) -------------------------------


def _assert_every_parameter_has_a_gradient(model, out):
    loss = torch.cat(out, dim=1).mean() if isinstance(out, tuple) else out.mean()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("global_pool", ["token", "avg", "avgmax", "max", "map"])
def test_cast_backward_reaches_every_parameter(batch, global_pool):
    x, segments = batch
    model = cast(num_classes=42, global_pool=global_pool).train()
    out = model(x, segments)
    assert out.shape == (2, 42)
    _assert_every_parameter_has_a_gradient(model, out)


@pytest.mark.parametrize("kwargs", [{}, dict(num_classes=42), dict(level_classes=(6, 4, 2))])
def test_hcast_backward_reaches_every_parameter(batch, kwargs):
    """Every level's head through forward_levels; a one-level model (num_classes) through forward."""
    x, segments = batch
    model = hcast_tiny(**kwargs).train()
    _assert_every_parameter_has_a_gradient(model, model.forward_levels(x, segments))


def test_hier_vit_backward_reaches_every_parameter():
    torch.manual_seed(0)
    model = timm.create_model("hier_vit_small", level_classes=(6, 3), **VIT_TINY).train()
    _assert_every_parameter_has_a_gradient(model, model.forward_levels(torch.randn(2, 3, 32, 32)))


def test_fixed_weights_are_buffers_under_the_original_keys(tmp_path):
    model = cast(pos_embed="sincos")
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    # The last pooling (coarsest segmentation only) and the sin-cos embedding are fixed.
    assert "pos_embed" in buffers and "pos_embed" not in params
    assert "stages.3.pool.assign.attn.qkv.weight" in buffers
    assert not any(n.startswith("stages.3.") and ".pool." in n for n in params)
    state = model.state_dict()
    assert {"pos_embed", "stages.3.pool.assign.bias"} <= state.keys()
    # They save and load like any weight.
    other = cast(pos_embed="sincos")
    with torch.no_grad():
        model.stages[3].pool.assign.bias.fill_(0.5)
    other.load_state_dict(model.state_dict())
    assert torch.equal(other.stages[3].pool.assign.bias, torch.full_like(other.stages[3].pool.assign.bias, 0.5))
    learned = cast()
    assert isinstance(learned.pos_embed, torch.nn.Parameter) and learned.pos_embed.requires_grad


# -- global_pool as timm's ViT -------------------------------------------------------------


def test_global_pool_values_pool_the_last_stage_tokens(batch):
    x, segments = batch
    model = cast(num_classes=0)
    with torch.no_grad():
        tokens = model.forward_features(x, segments)
        segment_tokens = tokens[:, 1:]
        expected = {"token": tokens[:, 0], "avg": segment_tokens.mean(1), "max": segment_tokens.amax(1),
                    "avgmax": 0.5 * (segment_tokens.mean(1) + segment_tokens.amax(1)), "": tokens}
        for pool, want in expected.items():
            model.reset_classifier(0, pool)
            torch.testing.assert_close(model.forward_head(tokens, pre_logits=True), want)
            torch.testing.assert_close(model(x, segments), want)
    with pytest.raises(ValueError, match="global_pool='map' needs attention-pooling weights"):
        model.reset_classifier(0, "map")
    with pytest.raises(ValueError, match="global_pool must be one of"):
        cast(global_pool="gem")
    with pytest.raises(ValueError, match="not available for H-CAST"):
        hcast_tiny(global_pool="map")


def test_timm_backbone_idiom_returns_unpooled_tokens(batch):
    x, segments = batch
    model = cast(num_classes=0, global_pool="")
    with torch.no_grad():
        out = model(x, segments)
    assert out.shape == (2, 1 + model.num_clusters[2], model.num_features)


# -- forward_intermediates / features_only -------------------------------------------------


def test_paint_tokens_by_hand():
    # 3 superpixels on a 2 x 2 grid, 2 regions; ids: [[0, 1], [2, 2]].
    grid_ids = torch.tensor([[[0, 1], [2, 2]]])
    superpixel_tokens = torch.tensor([[[1.0], [2.0], [3.0]]])
    stage0 = paint_tokens(superpixel_tokens, grid_ids, [])
    assert stage0.tolist() == [[[[1.0, 2.0], [3.0, 3.0]]]]
    regions = torch.tensor([[[10.0], [20.0]]])
    logits = torch.log(torch.tensor([[[0.75, 0.25], [0.5, 0.5], [0.1, 0.9]]]))
    soft = paint_tokens(regions, grid_ids, [logits], "soft")
    torch.testing.assert_close(soft, torch.tensor([[[[12.5, 15.0], [19.0, 19.0]]]]))
    hard = paint_tokens(regions, grid_ids, [logits], "hard")
    assert hard.tolist() == [[[[10.0, 10.0], [20.0, 20.0]]]]  # ties go to the first region
    # Two poolings compose: superpixel -> region -> coarser region.
    coarse = torch.tensor([[[100.0]]])
    two = paint_tokens(coarse, grid_ids, [logits, torch.zeros(1, 2, 1)], "soft")
    assert torch.allclose(two, torch.full((1, 1, 2, 2), 100.0))
    with pytest.raises(ValueError, match="paint mode"):
        paint_tokens(regions, grid_ids, [logits], "bilinear")


def test_forward_intermediates_paints_stage_tokens_on_the_stem_grid(batch):
    x, segments = batch
    model = cast(num_classes=10)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x, segments)
        tokens = model.forward_intermediates(x, segments, output_fmt="NLC", intermediates_only=True)
        stages = model.forward_stages(x, segments)
        hard = model.forward_intermediates(x, segments, paint="hard", intermediates_only=True)
    torch.testing.assert_close(final, model.forward_features(x, segments))
    assert [tuple(m.shape) for m in maps] == [(2, 32, 8, 8)] * 4
    assert [t.shape[1] for t in tokens[1:]] == list(model.num_clusters[:3])
    for t, stage_out in zip(tokens, stages["stage_tokens"]):
        torch.testing.assert_close(t, stage_out[:, 1:])
    # Stage 0: every grid cell shows its superpixel's token.
    grid_ids = resize_segments(segments, (8, 8))
    b, i, j = 1, 3, 5
    torch.testing.assert_close(maps[0][b, :, i, j], tokens[0][b, grid_ids[b, i, j]])
    # Stage 2, hard: the cell's superpixel followed through the argmax of both poolings.
    region = stages["logits"][0][b, grid_ids[b, i, j]].argmax()
    region = stages["logits"][1][b, region].argmax()
    torch.testing.assert_close(hard[2][b, :, i, j], tokens[2][b, region])
    # Soft: the composed assignment probabilities mix the region tokens.
    probs = stages["logits"][0][b].softmax(-1) @ stages["logits"][1][b].softmax(-1)
    torch.testing.assert_close(maps[2][b, :, i, j], probs[grid_ids[b, i, j]] @ tokens[2][b])


def test_forward_intermediates_options(batch):
    x, segments = batch
    model = cast()
    with torch.no_grad():
        every = model.forward_intermediates(x, segments, intermediates_only=True)
        last_two = model.forward_intermediates(x, segments, indices=2, intermediates_only=True)
        picked = model.forward_intermediates(x, segments, indices=[0, -1], intermediates_only=True, norm=True,
                                             output_fmt="NLC", return_prefix_tokens=True)
        tokens = model.forward_intermediates(x, segments, output_fmt="NLC", intermediates_only=True)
    torch.testing.assert_close(last_two, every[2:])
    (first, first_cls), (last, _) = picked
    torch.testing.assert_close(first, model.norm(tokens[0]))
    torch.testing.assert_close(last, model.norm(tokens[3]))
    assert first_cls.shape == (2, 1, 32)
    with pytest.raises(ValueError, match="indices"):
        model.forward_intermediates(x, segments, indices=[4])
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, segments, output_fmt="NHWC")


@pytest.mark.parametrize("name", ["cast_tiny", "hcast_tiny"])
def test_features_only_is_forward_intermediates_of_the_pruned_model(batch, name):
    x, segments = batch
    torch.manual_seed(0)
    full = timm.create_model(name, **TINY).eval()
    torch.manual_seed(0)
    features = timm.create_model(name, features_only=True, out_indices=(0, 1, 2), **TINY).eval()
    assert features.feature_info.channels() == [32] * 3 and features.feature_info.reduction() == [8] * 3
    assert len(features.model.stages) == 3  # stage 3 pruned away, its pooling too
    with torch.no_grad():
        want = full.forward_intermediates(x, segments, indices=[0, 1, 2], intermediates_only=True)
        got = features.model.forward_intermediates(x, segments, indices=[0, 1, 2], intermediates_only=True)
        out = features(x)  # no superpixels given: the model computes them, as for model(x)
    for a, b in zip(want, got):
        torch.testing.assert_close(a, b)
    assert [tuple(o.shape) for o in out] == [(2, 32, 8, 8)] * 3


def test_hier_vit_intermediates_and_features_only():
    torch.manual_seed(0)
    model = timm.create_model("hier_vit_small", level_classes=(6, 3), **VIT_TINY).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        feats = model.forward_features(x)
    assert [tuple(m.shape) for m in maps] == [(2, 32, 2, 2)] * 4
    for a, b in zip(final, feats):
        torch.testing.assert_close(a, b)
    features = timm.create_model("hier_vit_small", features_only=True, out_indices=(1, 3), **VIT_TINY)
    assert [tuple(o.shape) for o in features(x)] == [(2, 32, 2, 2)] * 2


# -- one tensor from forward, every level from forward_levels ---------------------------------


def test_hcast_forward_levels_set_level_outputs_and_num_classes(batch):
    x, segments = batch
    model = hcast_tiny().eval()
    with torch.no_grad():
        levels = model.forward_levels(x, segments)
        assert [tuple(o.shape) for o in levels] == [(2, 10), (2, 5)]
        torch.testing.assert_close(model(x, segments), levels[0])
        tokens = model.forward_features(x, segments)
        assert model.num_prefix_tokens == 2 and tokens.shape[:2] == (2, 2 + model.num_clusters[2])
        final, _ = model.forward_intermediates(x, segments)
        torch.testing.assert_close(final, tokens)
        assert model.forward_head(tokens, pre_logits=True).shape == (2, 32)
        model.set_level_outputs(True)
        for a, b in zip(model(x, segments), levels):
            torch.testing.assert_close(a, b)
        model.set_level_outputs(False)
        features = hcast_tiny(num_classes=0).eval()
        assert features.num_classes == 0 and features.level_classes == (0, 0)
        assert features(x, segments).shape == (2, 32)
        assert [tuple(f.shape) for f in features.forward_levels(x, segments)] == [(2, 32), (2, 32)]
        with pytest.warns(UserWarning, match="levels"):
            single = hcast_tiny(num_classes=7)
        assert single.level_classes == (7,) and single(x, segments).shape == (2, 7)
    model.reset_classifier(4)
    assert model.level_classes == (4, 5) and model.get_classifier().out_features == 4
    model.reset_classifier((3, 2))
    assert [h.out_features for h in model.heads] == [3, 2]
    with pytest.raises(ValueError, match="num_classes: got 5, but level_classes"):
        hcast_tiny(level_classes=(6, 3), num_classes=5)


def test_hier_vit_forward_levels_and_level_blocks():
    torch.manual_seed(0)
    model = timm.create_model("hier_vit_small", level_classes=(6, 3), **VIT_TINY).eval()
    x = torch.randn(2, 3, 32, 32)
    assert model.level_blocks == (2, 3)  # 0-based: the 3rd and 4th of 4 blocks
    with torch.no_grad():
        levels = model.forward_levels(x)
        assert [tuple(o.shape) for o in levels] == [(2, 6), (2, 3)]
        torch.testing.assert_close(model(x), levels[0])
        assert model.forward_features(x).shape == (2, 2 + 4, 32)
        plain = timm.create_model("hier_vit_small", num_classes=5, **VIT_TINY).eval()
        assert plain(x).shape == (2, 5)  # one level from an int: a plain classifier
        features = timm.create_model("hier_vit_small", level_classes=(6, 3), num_classes=0, **VIT_TINY)
        assert [tuple(f.shape) for f in features.forward_levels(x)] == [(2, 32), (2, 32)]
    with pytest.raises(ValueError, match=r"0-based block indices in \[0, 3\]"):
        timm.create_model("hier_vit_small", level_classes=(6, 3), level_blocks=(2, 4), **VIT_TINY)


# -- from_pretrained: one loading path ------------------------------------------------------


def test_from_pretrained_reads_folders_and_files(batch, tmp_path):
    x, segments = batch
    model = hcast_tiny()
    folder = save_for_hf(model, tmp_path / "folder")
    with torch.no_grad():
        want = model.forward_levels(x, segments)
        for loaded in (hcast.from_pretrained(folder), hcast.models.from_pretrained(str(folder)),
                       HCAST.from_pretrained(folder), timm.create_model(f"local-dir:{folder}", pretrained=True)):
            got = loaded.eval().forward_levels(x, segments)
            assert isinstance(loaded, HCAST) and loaded.level_classes == (10, 5)
            for a, b in zip(got, want):
                torch.testing.assert_close(a, b)
        # An original training checkpoint (a dict holding ``model``, DDP prefix).
        torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3},
                   tmp_path / "checkpoint.pth")
        loaded = hcast.from_pretrained(tmp_path / "checkpoint.pth", model_name="hcast_tiny", **TINY)
        torch.testing.assert_close(loaded.eval().forward_levels(x, segments)[1], want[1])
    with pytest.raises(TypeError, match="not a HierVisionTransformer"):
        HierVisionTransformer.from_pretrained(folder)
    with pytest.raises(FileNotFoundError, match="config.json"):
        hcast.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no registered model"):
        hcast.from_pretrained("not_a_model")


def test_from_pretrained_passes_names_and_hub_ids_to_timm(monkeypatch):
    calls = []
    monkeypatch.setattr(timm, "create_model", lambda name, **kwargs: calls.append((name, kwargs)) or object())
    hcast.from_pretrained("hcast_small.living17", drop_rate=0.1)
    hcast.from_pretrained("owner/repo")
    hcast.from_pretrained("hf-hub:owner/repo", pretrained=False)
    assert calls == [("hcast_small.living17", dict(pretrained=True, drop_rate=0.1)),
                     ("hf-hub:owner/repo", dict(pretrained=True)),
                     ("hf-hub:owner/repo", dict(pretrained=False))]


def test_from_pretrained_reads_a_pushed_folder_from_the_hub(batch, tmp_path, monkeypatch):
    x, segments = batch
    model = hcast_tiny(level_classes=(6, 3))
    folder = save_for_hf(model, tmp_path / "export")
    with LocalHub() as hub:
        hub.add_folder("someone/hcast-tiny", folder)
        use_local_hub(monkeypatch, hub, tmp_path / "hf")
        by_repo_id = hcast.from_pretrained("someone/hcast-tiny").eval()
        by_hf_hub = HCAST.from_pretrained("hf-hub:someone/hcast-tiny").eval()
    assert by_repo_id.level_classes == (6, 3)
    with torch.no_grad():
        want = model.forward_levels(x, segments)
        for a, b in zip(by_repo_id.forward_levels(x, segments), want):
            torch.testing.assert_close(a, b)
        torch.testing.assert_close(by_hf_hub(x, segments), want[0])
