"""One rule for heads, levels, taxonomy and settings, whatever the weights' source (issue 20).

Original-format H-CAST checkpoints of 2 and 3 levels load through every documented path
(``timm.create_model`` with a file, :func:`hcast.from_pretrained`, the CLI's loader, export)
equal to the original code's per-level outputs (``reference_cast.ReferenceCAST``, loaded
strictly from the same file); a head that does not fit is an error, or, when new heads were
asked for, a warning that names them. A file inherits no tag's taxonomy or settings.
"""
from __future__ import annotations

import warnings

import pytest
import timm
import torch

import hcast
from hcast.ops import superpixels
from original_checkpoints import make_source, photos, reference_from, rel_err, save_deit, to_original

# hcast_small's architecture at a size the tests run in seconds; its default tag is living17
# (34/17 classes, 256 superpixels): the case where a 3-level file lost its finer heads.
SMALL = dict(img_size=64, embed_dim=192, depths=(3, 3, 3, 2), num_heads=3, num_clusters=(16, 8, 4, 2))


@pytest.fixture(scope="module")
def inputs():
    x = photos(64)
    return x, superpixels(x, num_segments=49, method="seeds")


def _checkpoint(tmp_path, level_classes, name="hcast_small", seed=0):
    source = make_source(name, level_classes=level_classes, **SMALL)
    original = to_original(source)
    path = tmp_path / f"hcast_{'x'.join(map(str, level_classes))}.pth"
    save_deit(path, original)
    return path, original


def _assert_equals_original(model, original, level_classes, inputs):
    x, segments = inputs
    ref = reference_from(original, level_classes=level_classes, **SMALL)
    with torch.no_grad():
        got, expected = model.eval().forward_levels(x, segments), ref(x, segments)
        finest = model(x, segments)
    assert len(got) == len(level_classes)
    for level, (g, e) in enumerate(zip(got, expected)):
        assert g.shape == (3, level_classes[level])
        assert rel_err(g, e) < 1e-4, f"level {level}: {rel_err(g, e)}"
    assert torch.equal(finest, got[0])  # forward: the finest level, timm's contract


@pytest.mark.parametrize("level_classes", [(34, 17), (200, 38, 13), (10, 5)])
def test_documented_call_loads_every_head_of_an_original_checkpoint(tmp_path, inputs, level_classes):
    path, original = _checkpoint(tmp_path, level_classes)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no head is new, nothing to say
        model = timm.create_model("hcast_small", pretrained=True, level_classes=level_classes,
                                  pretrained_cfg_overlay=dict(file=str(path)), **SMALL)
        bare = timm.create_model("hcast_small", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **SMALL)
    for m in (model, bare):
        assert m.level_classes == level_classes
        _assert_equals_original(m, original, level_classes, inputs)
        # a file is not the living17 release: no taxonomy, the architecture's settings
        assert m.taxonomy is None
        assert m.pretrained_cfg["num_segments"] == 196
        assert m.pretrained_cfg["level_classes"] == level_classes and m.pretrained_cfg.get("fpa") is None


@pytest.mark.parametrize("level_classes", [(6, 3), (200, 38, 13)])
def test_from_pretrained_cli_loader_and_export_load_every_head(tmp_path, inputs, level_classes):
    from hcast.cli import load_model
    from hcast.export import export_model, prepare_for_export

    path, original = _checkpoint(tmp_path, level_classes)
    _assert_equals_original(hcast.from_pretrained(path, model_name="hcast_small", **SMALL), original,
                            level_classes, inputs)
    # what `hcast evaluate / predict / export FILE` load: the architecture guessed from the
    # weights (192 wide: hcast_tiny, SMALL's shape), every head from the file
    model, taxonomy, _ = load_model(str(path))
    assert taxonomy is None and model.level_classes == level_classes
    _assert_equals_original(model, original, level_classes, inputs)

    # export writes every level (the fixed-budget mode of the same weights); the 3-level file is
    # the case that lost heads, 2 levels export in tests/test_export.py
    if len(level_classes) < 3:
        return
    program = torch.export.load(export_model(model, tmp_path / "m.pt2", "torch-export", max_tokens=64))
    x, segments = inputs
    with torch.no_grad():
        exported = program.module()(x, segments)
        expected = prepare_for_export(model, 64)(x, segments)
    assert len(exported) == len(expected) == len(level_classes)
    for g, e in zip(exported, expected):
        assert rel_err(g, e) < 1e-4


def test_a_head_that_does_not_fit_is_an_error_naming_file_head_and_shapes(tmp_path):
    path, _ = _checkpoint(tmp_path, (34, 17))
    # the caller says the file is the entity30 release (120/30 classes): its heads cannot load
    with pytest.raises(ValueError, match=r"hcast_34x17\.pth.*heads\.0\.weight: \(120, 192\) in the model, "
                                         r"\(34, 192\) in the weights"):
        timm.create_model("hcast_small.entity30", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                          **SMALL)
    # hcast convert never makes new heads
    with pytest.raises(ValueError, match=r"heads\.1\.weight: \(9, 192\) in the model, \(17, 192\) in the weights"):
        hcast.models.convert_checkpoint(path, tmp_path / "out", "hcast_small", level_classes=(34, 9), **SMALL)
    assert not (tmp_path / "out").exists()


def test_new_heads_asked_for_are_named_in_a_warning(tmp_path, inputs):
    path, original = _checkpoint(tmp_path, (34, 17))
    with pytest.warns(UserWarning, match=r"new classifier heads.*heads\.0\.weight: \(20, 192\) in the model, "
                                         r"\(34, 192\) in the weights") as caught:
        model = timm.create_model("hcast_small", pretrained=True, level_classes=(20, 17),
                                  pretrained_cfg_overlay=dict(file=str(path)), **SMALL)
    assert "heads.1" not in str(caught[0].message)  # the coarse head fits and loads
    assert torch.equal(model.heads[1].weight, original["family_head.weight"])


def test_num_classes_builds_one_level_and_names_the_dropped_levels(inputs):
    with pytest.warns(UserWarning, match=r"num_classes=42 builds a one-level model.*levels \(10, 5\)"):
        model = timm.create_model("hcast_tiny", num_classes=42)
    assert model.level_classes == (42,) and model.level_stages == (3,)
    assert isinstance(model.get_classifier(), torch.nn.Linear)  # train.py --head-init-scale
    x, segments = inputs
    model(x, segments).sum().backward()  # every parameter takes part in forward
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert timm.create_model("hcast_tiny", level_classes=(7, 3)).level_classes == (7, 3)
        assert timm.create_model("hcast_tiny", num_classes=0).level_classes == (0, 0)


def test_a_released_tag_keeps_its_taxonomy_and_settings():
    model = timm.create_model("hcast_small.inat21_mini", pretrained=False)
    assert model.level_classes == (10000, 1103, 273)
    assert model.taxonomy is not None and model.taxonomy.num_classes == (10000, 1103, 273)
    assert model.pretrained_cfg["num_segments"] == 196 and model.pretrained_cfg["mean"] == (0.466, 0.471, 0.380)
    living = timm.create_model("hcast_small", pretrained=False)
    assert living.taxonomy.num_classes == (34, 17) and living.pretrained_cfg["num_segments"] == 256


def test_folder_round_trip_and_a_folder_whose_config_disagrees(tmp_path, inputs):
    path, original = _checkpoint(tmp_path, (8, 4, 2))
    folder = hcast.models.convert_checkpoint(path, tmp_path / "folder", "hcast_small", **SMALL)
    model = timm.create_model(f"local-dir:{folder}", pretrained=True)
    _assert_equals_original(model, original, (8, 4, 2), inputs)
    # a folder is data: weights that do not fit its own config are an error
    import json

    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_args"]["level_classes"] = [8, 4, 3]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"heads\.2\.weight: \(3, 192\) in the model, \(2, 192\) in the weights"):
        timm.create_model(f"local-dir:{folder}", pretrained=True)


def test_torch_slic_returns_at_most_the_segments_asked_for():
    x = photos(64)
    for n in (10, 49, 60, 196):
        ids = superpixels(x, num_segments=n, method="torch_slic")
        assert int(ids.flatten(1).amax(1).max()) + 1 <= n, n
    ids = superpixels(x, num_segments=196, method="torch_slic")
    model = timm.create_model("cast_tiny", max_tokens=196).eval()
    with torch.no_grad():
        assert model(x, ids).shape == (3, 1000)


def test_a_stray_superpixel_id_is_an_error_not_a_huge_token_set():
    model = timm.create_model("cast_tiny").eval()
    x = photos(64)[:1]
    segments = torch.zeros(1, 64, 64, dtype=torch.long)
    segments[0, 0, 0] = 200_000
    with pytest.raises(ValueError, match=r"ids in \[0, H \* W\) = \[0, 4096\).*got ids in \[0, 200000\]"):
        model(x, segments)
