"""Tests of hierarchical mixup/cutmix (hcast.hierarchy.mixup) on real photos and superpixels."""
import numpy as np
import pytest
import torch
from skimage import data as skdata
from skimage.segmentation import slic
from skimage.transform import resize

from hcast.hierarchy import HierarchicalMixup, Taxonomy
from hcast.hierarchy.mixup import renumber_segments

TAX = Taxonomy([[0, 0, 1, 2, 2, 2], [0, 0, 1]])  # 6 fine -> 3 mid -> 2 coarse
FINE = torch.tensor([0, 3, 2, 5])


def _batch():
    photos = [skdata.chelsea(), skdata.coffee(), skdata.astronaut(), skdata.rocket()]
    small = [resize(p, (48, 64), anti_aliasing=True) for p in photos]  # float in [0, 1], (H, W, 3)
    segs = [slic(p, n_segments=24, start_label=0) for p in small]
    images = torch.from_numpy(np.stack(small)).permute(0, 3, 1, 2).float().contiguous()
    segments = torch.from_numpy(np.stack(segs)).long()
    targets = [TAX.level_map(l)[FINE] for l in range(3)]
    return images, segments, targets


def _one_hot(y, c):
    return torch.nn.functional.one_hot(y, c).float()


def _aggregate(fine_targets, level):
    """Sum a (N, C_0) fine distribution into the classes of ``level``."""
    out = torch.zeros(fine_targets.shape[0], TAX.num_classes[level])
    return out.index_add_(1, TAX.level_map(level), fine_targets)


def test_mixup_same_lambda_and_partner_on_images_and_every_level():
    images, segments, targets = _batch()
    orig = images.clone()
    np.random.seed(0)
    mix = HierarchicalMixup(mixup_alpha=1.0, cutmix_alpha=0.0, label_smoothing=0.0, level_classes=TAX.num_classes)
    out, seg_out, level_t = mix(images, targets, segments)
    lam = level_t[0][0, FINE[0]].item()
    assert 0.0 < lam < 1.0
    assert torch.allclose(out, lam * orig + (1 - lam) * orig.flip(0), atol=1e-6)
    for l, (t, y) in enumerate(zip(level_t, targets)):
        c = TAX.num_classes[l]
        assert t.shape == (4, c) and t.dtype == torch.float32
        assert torch.allclose(t, lam * _one_hot(y, c) + (1 - lam) * _one_hot(y.flip(0), c), atol=1e-6)
        # the mixed targets are consistent across levels: the fine mix summed into groups
        assert torch.allclose(t, _aggregate(level_t[0], l), atol=1e-6)
    # a blended image keeps its own superpixels
    assert torch.equal(seg_out, segments)


def test_label_smoothing_per_level():
    images, _, targets = _batch()
    np.random.seed(1)
    mix = HierarchicalMixup(mixup_alpha=1.0, cutmix_alpha=0.0, label_smoothing=0.1, level_classes=TAX.num_classes)
    _, level_t = mix(images, targets)
    for l, t in enumerate(level_t):
        c = TAX.num_classes[l]
        assert torch.allclose(t.sum(1), torch.ones(4))
        assert t.min().item() >= 0.1 / c - 1e-7  # every class keeps the smoothing mass


def test_cutmix_pastes_the_partners_superpixels_with_unique_ids():
    images, segments, targets = _batch()
    orig = images.clone()
    np.random.seed(3)
    mix = HierarchicalMixup(mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0, level_classes=TAX.num_classes)
    out, seg_out, level_t = mix(images, targets, segments)
    partner = orig.flip(0)
    box = (out != orig).any(dim=1)[0]  # (H, W) pixels pasted into image 0 (same box for the batch)
    assert box.any() and not box.all()
    ys, xs = box.nonzero(as_tuple=True)
    in_box = torch.zeros_like(box)
    in_box[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = True
    # lambda is the kept area, the same for every level
    lam = 1 - in_box.float().mean().item()
    assert torch.equal(out[:, :, in_box], partner[:, :, in_box])
    assert torch.equal(out[:, :, ~in_box], orig[:, :, ~in_box])
    for l, (t, y) in enumerate(zip(level_t, targets)):
        c = TAX.num_classes[l]
        assert torch.allclose(t, lam * _one_hot(y, c) + (1 - lam) * _one_hot(y.flip(0), c), atol=1e-5)
    seg_partner = segments.flip(0)
    for b in range(4):
        s = seg_out[b]
        ids = s.unique()
        assert torch.equal(ids, torch.arange(len(ids)))  # renumbered 0..S'-1
        inside, outside = s[in_box].unique(), s[~in_box].unique()
        assert not np.intersect1d(inside.numpy(), outside.numpy()).size  # no id shared across the edge
        # the same pixels share an id as in the source image (inside: the partner; outside: itself)
        for region, src in ((in_box, seg_partner[b]), (~in_box, segments[b])):
            pairs = torch.stack([src[region], s[region]], 1).unique(dim=0)
            assert len(pairs) == len(src[region].unique()) == len(s[region].unique())


def test_mix_segments_false_returns_them_unchanged_as_hcast_does():
    images, segments, targets = _batch()
    np.random.seed(3)
    mix = HierarchicalMixup(mixup_alpha=0.0, cutmix_alpha=1.0, level_classes=TAX.num_classes, mix_segments=False)
    _, seg_out, _ = mix(images, targets, segments)
    assert torch.equal(seg_out, segments)


@pytest.mark.parametrize("mode", ["pair", "elem"])
def test_per_element_modes(mode):
    images, segments, targets = _batch()
    np.random.seed(5)
    mix = HierarchicalMixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.0, mode=mode, level_classes=TAX.num_classes)
    images, segments = images.clone(), segments.clone()  # (the batch is mixed in place)
    out, seg_out, level_t = mix(images.clone(), targets, segments.clone())
    assert out.shape == images.shape and seg_out.shape == segments.shape
    for l, t in enumerate(level_t):
        assert torch.allclose(t.sum(1), torch.ones(4), atol=1e-6)
        assert torch.allclose(t, _aggregate(level_t[0], l), atol=1e-6)
    pasted = 0
    for b in range(4):
        s = seg_out[b]
        changed = (out[b] != images[b]).any(0)  # the pasted box (cutmix), or every pixel (blend)
        if bool(changed.all()) or not bool(changed.any()):  # blended or untouched: the image's own partition
            pairs = torch.stack([segments[b].flatten(), s.flatten()], 1).unique(dim=0)
            assert len(pairs) == len(segments[b].unique()) == len(s.unique())
        else:  # cut and pasted: no superpixel id shared across the box's edge
            pasted += 1
            inside, outside = s[changed].unique(), s[~changed].unique()
            assert not np.intersect1d(inside.numpy(), outside.numpy()).size
    assert pasted >= 1  # the seed gives at least one cut-and-pasted element


def test_renumber_segments_keeps_order():
    s = torch.tensor([[[5, 5, 9], [2, 9, 2]]])
    assert renumber_segments(s).tolist() == [[[1, 1, 2], [0, 2, 0]]]


def test_errors():
    images, segments, targets = _batch()
    mix = HierarchicalMixup(level_classes=TAX.num_classes)
    with pytest.raises(ValueError, match="batch size must be even"):
        mix(images[:3], [t[:3] for t in targets])
    with pytest.raises(ValueError, match="targets has 2 levels but level_classes"):
        mix(images, targets[:2])
    with pytest.raises(ValueError, match=r"targets\[2\]\[0\] is 2, outside \[0, 2\)"):
        mix(images, targets[:2] + [torch.tensor([2, 0, 0, 0])])
    with pytest.raises(ValueError, match="segments has shape"):
        mix(images, targets, segments[:, :10])
    with pytest.raises(ValueError, match="level_classes"):
        HierarchicalMixup()
