"""H-CAST models: per-level heads on the right stages, finest first, built from
``level_classes`` or a taxonomy, the released tags, and fine-tuning from a CAST backbone.
Equality with the original H-CAST forward is in tests/test_cast_reference.py."""
from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from skimage import data as skdata
from skimage.transform import resize

import hcast  # noqa: F401
from hcast.models.hcast import HCAST
from hcast.ops import superpixels

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


@pytest.fixture(scope="module")
def batch():
    imgs = [resize(f(), (64, 64), anti_aliasing=True) for f in (skdata.astronaut, skdata.coffee)]
    x = (torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() - MEAN) / STD
    return x, superpixels(x, num_segments=49, method="seeds")


class FakeTaxonomy:
    """Duck-typed stand-in: H-CAST only needs ``num_classes`` (finest first)."""
    num_classes = (10, 5)


def test_registered():
    assert {"hcast_tiny", "hcast_small", "hcast_base"} <= set(timm.list_models("hcast_*"))
    assert {"hcast_small.inat21_mini", "hcast_small.entity30", "hcast_small.entity13", "hcast_small.nonliving26",
            "hcast_small.living17", "hcast_small.deit_in1k"} <= set(timm.list_pretrained("hcast_*"))


@pytest.mark.parametrize("level_classes", [(6, 3), (8, 4, 2)])
def test_heads_read_the_stages_hcast_uses(batch, level_classes):
    x, segments = batch
    m = timm.create_model("hcast_tiny", level_classes=level_classes).eval()
    with torch.no_grad():
        logits = m.forward_levels(x, segments)
        stages = m.forward_stages(x, segments)
        assert torch.equal(m(x, segments), logits[0])  # forward: the finest level
    assert isinstance(logits, tuple) and [tuple(t.shape) for t in logits] == [(2, n) for n in level_classes]
    tokens = stages["class_tokens"]
    # 3 levels: fine <- stage 2, middle <- stage 3, coarse <- normed stage 4;
    # 2 levels: fine <- stage 3, coarse <- normed stage 4 (as cast_deit_hier.py).
    read = [tokens[1], tokens[2]] if len(level_classes) == 3 else [tokens[2]]
    read.append(m.norm(tokens[3]))
    for head, feats, out in zip(m.heads, read, logits):
        assert torch.allclose(head(feats), out, atol=1e-6)
    assert m.num_classes == level_classes[0] and m.level_classes == level_classes


def test_taxonomy_argument_and_errors():
    m = timm.create_model("hcast_tiny", taxonomy=FakeTaxonomy())
    assert m.level_classes == (10, 5) and m.taxonomy.num_classes == (10, 5)
    with torch.device("meta"):  # a backbone tag takes the name's default level classes
        assert timm.create_model("hcast_small.deit_in1k").level_classes == (34, 17)
    with pytest.raises(ValueError, match="level_classes"):
        HCAST(img_size=64, embed_dim=32, depths=(1, 1, 1, 1), num_heads=2, num_clusters=(8, 4, 2, 1))
    with pytest.raises(ValueError, match="1 to 4 taxonomy levels"):
        timm.create_model("hcast_tiny", level_classes=(10, 5, 3, 2, 1))
    with pytest.raises(ValueError, match="disagrees"):
        timm.create_model("hcast_tiny", level_classes=(10, 4), taxonomy=FakeTaxonomy())
    with pytest.raises(TypeError, match="num_classes"):
        timm.create_model("hcast_tiny", taxonomy=object())


def test_backward_and_reset_classifier(batch):
    x, segments = batch
    m = timm.create_model("hcast_tiny", level_classes=(8, 4, 2)).train()
    sum(out.logsumexp(-1).mean() for out in m.forward_levels(x, segments)).backward()
    for name, p in m.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"no gradient for {name}"
    m.eval()
    m.reset_classifier((3, 2, 1))
    assert [o.shape[1] for o in m.forward_levels(x, segments)] == [3, 2, 1]
    m.reset_classifier(0)
    feats = m.forward_levels(x, segments)
    assert [tuple(f.shape) for f in feats] == [(2, m.num_features)] * 3
    with pytest.raises(ValueError, match="class counts \\(one per level"):
        m.reset_classifier((3, 2))


def test_released_tags_carry_drive_ids_and_level_classes():
    expected = {
        "inat21_mini": ("1LuppLHSL9g-BdBkM5yh6wMEX48iF2FX5", (10000, 1103, 273), 65.00),
        "entity30": ("1R0I7KCtnRFqIaBkaY_SFqbKVx0DrbSeV", (120, 30), 84.86),
        "entity13": ("16gunLvLkHuVIXtvJtSU2JlfJTHSbCn_-", (130, 13), 85.61),
        "nonliving26": ("1UKPUSm-rkRgExYeeeRlT7YcUcRvdwQOP", (52, 26), 82.53),
        "living17": ("17ouiirBmBxD5wxOuWBi-SulVIzv8oHBL", (34, 17), 85.11),
    }
    for tag, (drive_id, level_classes, fpa) in expected.items():
        cfg = timm.get_pretrained_cfg(f"hcast_small.{tag}")
        assert (cfg.gdrive_id, tuple(cfg.level_classes), cfg.fpa) == (drive_id, level_classes, fpa)
        assert cfg.num_classes == level_classes[0] and cfg.superpixel_method == "seeds"
    with torch.device("meta"):
        m = timm.create_model("hcast_small.entity30")
    assert m.level_classes == (120, 30)
    # The default tag has real weights and level classes, so the bare name builds.
    default = timm.get_pretrained_cfg("hcast_small")
    assert default.tag == "living17" and default.gdrive_id == expected["living17"][0]
    backbone = timm.get_pretrained_cfg("hcast_small.deit_in1k")
    assert backbone.hf_hub_filename == "snapshots/deit/imagenet1k/cast_small/best_checkpoint.pth"


def test_fine_tuning_starts_from_a_cast_checkpoint(tmp_path):
    """A CAST (DeiT) checkpoint loads the backbone; the level heads keep their init."""
    from original_checkpoints import make_source, to_original

    source = make_source("cast_tiny", num_classes=1000)
    path = tmp_path / "best_checkpoint.pth"
    torch.save({"model": to_original(source)}, path)
    torch.manual_seed(0)
    fresh_heads = HCAST(level_classes=(10, 5), img_size=64, embed_dim=192, num_heads=3,
                        num_clusters=(16, 8, 4, 2)).heads.state_dict()
    torch.manual_seed(0)
    m = timm.create_model("hcast_tiny", pretrained=True, level_classes=(10, 5),
                          pretrained_cfg_overlay=dict(file=str(path)))
    state, src = m.state_dict(), source.state_dict()
    for key, value in state.items():
        if key.startswith("heads."):
            assert torch.equal(value, fresh_heads[key[len("heads."):]])
        else:
            assert torch.equal(value, src[key]), key


def test_hcast_filter_reads_prefixed_checkpoints_and_leaves_heads_to_the_builder():
    from hcast.models.hcast import checkpoint_filter_fn
    from original_checkpoints import make_source, to_original

    source = make_source("hcast_tiny", level_classes=(6, 3))
    ddp = {"model": {f"module.{k}": v for k, v in to_original(source).items()}}
    same = timm.create_model("hcast_tiny", level_classes=(6, 3))
    same.load_state_dict(checkpoint_filter_fn(ddp, same), strict=True)
    for key, value in same.state_dict().items():
        assert torch.equal(value, source.state_dict()[key]), key
    # the filter maps keys only; whether a head fits is hcast.weights.heads' one rule
    other = timm.create_model("hcast_tiny", level_classes=(7, 3))
    converted = checkpoint_filter_fn(ddp, other)
    assert converted["heads.0.weight"].shape == (6, 192) and torch.equal(converted["heads.1.weight"],
                                                                         source.heads[1].weight)
