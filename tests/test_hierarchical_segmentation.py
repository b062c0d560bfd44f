"""Tests for hcast.ops.hierarchical_segmentation: composition of per-stage argmax
assignments into per-pixel label maps."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hcast.ops import hierarchical_segmentation, superpixel_pool


def reference_maps(assignments, segments):
    """Pixel by pixel: follow the pixel's superpixel through each stage's argmax."""
    labels = [a.argmax(-1) if a.is_floating_point() else a for a in assignments]
    b, h, w = segments.shape
    maps = [np.zeros((b, h, w), dtype=np.int64) for _ in labels]
    for n in range(b):
        for y in range(h):
            for x in range(w):
                token = int(segments[n, y, x])
                for level, stage in enumerate(labels):
                    token = int(stage[n, token])
                    maps[level][n, y, x] = token
    return maps


@st.composite
def stages(draw):
    b = draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    sizes = [draw(st.integers(1, 10))]  # S_1, then K_1, K_2, ...
    for _ in range(draw(st.integers(1, 4))):
        sizes.append(draw(st.integers(1, 6)))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    segments = torch.randint(0, sizes[0], (b, h, w), generator=g)
    as_labels = draw(st.lists(st.booleans(), min_size=len(sizes) - 1, max_size=len(sizes) - 1))
    assignments = []
    for s, k, labels in zip(sizes[:-1], sizes[1:], as_labels):
        if labels:
            assignments.append(torch.randint(0, k, (b, s), generator=g))
        else:  # integer-valued logits: ties, where argmax keeps the first maximum
            assignments.append(torch.randint(-2, 3, (b, s, k), generator=g).float())
    return assignments, segments


@settings(max_examples=60, deadline=None)
@given(stages())
def test_matches_pixelwise_reference(inputs):
    assignments, segments = inputs
    maps = hierarchical_segmentation(assignments, segments)
    expected = reference_maps(assignments, segments)
    assert len(maps) == len(assignments)
    for got, want in zip(maps, expected):
        assert got.dtype == torch.int64 and got.shape == segments.shape
        np.testing.assert_array_equal(got.numpy(), want)


def test_levels_coarsen_a_real_photo():
    """Group SLIC superpixels of a photo by colour, twice: every coarse segment is a
    union of finer ones and the number of segments shrinks level by level."""
    skimage_data = pytest.importorskip("skimage.data")
    from skimage.segmentation import slic

    image = skimage_data.chelsea()[::6, ::6].astype(np.float64) / 255
    ids = torch.from_numpy(slic(image, n_segments=60, start_label=0)).long()[None]
    tokens, _ = superpixel_pool(torch.from_numpy(image)[None], ids)
    centroids = tokens[0, torch.linspace(0, tokens.shape[1] - 1, 8).long()]
    logits1 = -torch.cdist(tokens[0], centroids)[None]  # (1, S, 8)
    logits2 = -torch.cdist(centroids, centroids[[0, 7]])[None]  # (1, 8, 2)
    fine, coarse = hierarchical_segmentation([logits1, logits2], ids)
    assert fine.unique().numel() <= 8 and coarse.unique().numel() <= 2
    assert fine.unique().numel() > coarse.unique().numel() >= 1
    for label in fine.unique():  # each fine segment sits inside one coarse segment
        assert coarse[fine == label].unique().numel() == 1
    for sp in ids.unique():  # each superpixel has one label per level
        assert fine[ids == sp].unique().numel() == 1


@pytest.mark.parametrize(
    "assignments, segments, error, match",
    [
        (torch.randn(1, 4, 2), torch.zeros(1, 2, 2, dtype=torch.long), TypeError, "assignments must be a list or tuple"),
        ([], torch.zeros(1, 2, 2, dtype=torch.long), ValueError, "must hold one entry per stage, got an empty list"),
        ([torch.randn(1, 4, 2)], torch.zeros(2, 2, dtype=torch.long), ValueError, r"segments must have shape \(B, H, W\)"),
        ([torch.randn(1, 4, 2)], torch.zeros(1, 2, 2), TypeError, "segments must hold integer ids"),
        ([torch.randn(1, 4, 2)], -torch.ones(1, 2, 2, dtype=torch.long), ValueError, "segments must hold ids >= 0"),
        ([torch.randn(2, 4, 2)], torch.zeros(1, 2, 2, dtype=torch.long), ValueError, r"assignments\[0\] must have the batch size B=1"),
        ([torch.randn(1, 4)], torch.zeros(1, 2, 2, dtype=torch.long), TypeError, r"assignments\[0\] must hold integer ids"),
        ([torch.ones(1, 4, 2, dtype=torch.long)], torch.zeros(1, 2, 2, dtype=torch.long), TypeError,
         r"assignments\[0\] of shape \(B, S_l, K_l\) must be float logits, got dtype torch.int64"),
        ([torch.randn(1, 4, 2, 1)], torch.zeros(1, 2, 2, dtype=torch.long), ValueError,
         r"assignments\[0\] must be float logits of shape \(B, S_l, K_l\) or integer labels"),
        ([torch.randn(1, 3, 2)], torch.full((1, 2, 2), 3, dtype=torch.long), ValueError,
         r"assignments\[0\] must have one row per superpixel id: expected shape \(B, S_1 > 3, K_1\).*got shape \(1, 3, 2\)"),
        ([torch.eye(5)[[4, 4, 4, 4]][None], torch.randn(1, 3, 2)], torch.zeros(1, 2, 2, dtype=torch.long), ValueError,
         r"assignments\[1\] must have one row per stage-1 cluster: expected shape \(B, S_2 > 4, K_2\)"),
        ([-torch.ones(1, 4, dtype=torch.long)], torch.zeros(1, 2, 2, dtype=torch.long), ValueError, r"assignments\[0\] must hold ids >= 0"),
    ],
)
def test_bad_input(assignments, segments, error, match):
    with pytest.raises(error, match=match):
        hierarchical_segmentation(assignments, segments)
