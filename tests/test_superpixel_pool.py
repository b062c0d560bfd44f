"""Tests for hcast.ops.superpixel_pool: plain-loop reference, CAST's segment_mean_nd
semantics, gradients, bad input and a real photo with SLIC superpixels."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from hcast.ops import superpixel_pool
from hcast.ops.superpixel_pool import resize_segments


def reference_pool(features, segments, num_segments=None):
    """Plain numpy loops: nearest resize as torch does, then mean per (image, id)."""
    features = features.detach().double().numpy()
    b, h_out, w_out, c = features.shape
    ids = segments.numpy()
    _, h_in, w_in = ids.shape
    # torch's "nearest": source index floor(dst * in / out) (computed in float32).
    rows = [min(int(np.floor(np.float32(i) * np.float32(h_in / h_out))), h_in - 1) for i in range(h_out)]
    cols = [min(int(np.floor(np.float32(j) * np.float32(w_in / w_out))), w_in - 1) for j in range(w_out)]
    resized = ids[:, rows][:, :, cols]
    s = int(resized.max()) + 1 if num_segments is None else num_segments
    tokens = np.zeros((b, s, c))
    empty = np.ones((b, s), dtype=bool)
    for n in range(b):
        for k in range(s):
            cells = resized[n] == k
            if cells.any():
                tokens[n, k] = features[n][cells].mean(axis=0)
                empty[n, k] = False
    return tokens, empty


def cast_segment_mean_nd(x, index):
    """CAST's pooling written out from its description (sum per id over a flattened
    batch with stride max_id + 1, divided by the count, zero-padded)."""
    b, h, w, c = x.shape
    max_ind = int(index.max()) + 1
    flat = (index.view(b, -1) + torch.arange(b)[:, None] * max_ind).view(-1)
    sums = torch.zeros(b * max_ind, c, dtype=x.dtype).scatter_add_(
        0, flat[:, None].expand(-1, c), x.reshape(-1, c))
    counts = torch.zeros(b * max_ind, dtype=x.dtype).scatter_add_(0, flat, torch.ones_like(flat, dtype=x.dtype))
    counts = torch.where(counts == 0, torch.ones_like(counts), counts)
    return (sums / counts[:, None]).view(b, max_ind, c)


@st.composite
def pool_inputs(draw):
    b = draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    c = draw(st.integers(1, 4))
    scale = draw(st.sampled_from([1, 2, 3]))
    max_id = draw(st.integers(0, 12))  # many ids stay empty when max_id > h * w
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(b, h, w, c, generator=g, dtype=torch.float64)
    segments = torch.randint(0, max_id + 1, (b, h * scale, w * scale), generator=g)
    return features, segments


@settings(max_examples=60, deadline=None)
@given(pool_inputs())
def test_matches_plain_loop_reference(inputs):
    features, segments = inputs
    tokens, mask = superpixel_pool(features, segments)
    ref_tokens, ref_empty = reference_pool(features, segments)
    np.testing.assert_allclose(tokens.numpy(), ref_tokens, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(mask.numpy(), ref_empty)
    assert (tokens[mask] == 0).all()


@settings(max_examples=30, deadline=None)
@given(pool_inputs())
def test_matches_cast_segment_mean_nd(inputs):
    features, segments = inputs
    features = features.float()
    resized = F.interpolate(segments[:, None].float(), size=features.shape[1:3], mode="nearest")[:, 0].long()
    tokens, mask = superpixel_pool(features, segments)
    expected = cast_segment_mean_nd(features, resized)
    torch.testing.assert_close(tokens, expected, rtol=1e-6, atol=1e-6)
    # CAST's padding mask: mean of ones <= 0.5
    ones_mean = cast_segment_mean_nd(torch.ones(*features.shape[:3], 1), resized)[..., 0]
    assert torch.equal(mask, ones_mean <= 0.5)


def test_resize_is_cast_nearest_at_cast_sizes():
    segments = torch.randint(0, 196, (2, 224, 224))
    expected = F.interpolate(segments[:, None].float(), size=(28, 28), mode="nearest")[:, 0].long()
    assert torch.equal(resize_segments(segments, (28, 28)), expected)
    assert torch.equal(expected, segments[:, ::8, ::8])


def test_num_segments_pads_and_rejects_large_ids():
    features = torch.randn(2, 4, 4, 3)
    segments = torch.zeros(2, 4, 4, dtype=torch.long)
    segments[1, :2] = 3
    tokens, mask = superpixel_pool(features, segments, num_segments=6)
    assert tokens.shape == (2, 6, 3) and mask.shape == (2, 6)
    assert mask.tolist() == [[False, True, True, True, True, True], [False, True, True, False, True, True]]
    torch.testing.assert_close(tokens[1, 3], features[1, :2].reshape(-1, 3).mean(0))
    with pytest.raises(ValueError, match="num_segments=3"):
        superpixel_pool(features, segments, num_segments=3)


def test_batch_wide_segment_count_as_cast():
    features = torch.randn(2, 2, 2, 1)
    segments = torch.tensor([[[0, 0], [1, 1]], [[0, 4], [4, 4]]])
    tokens, mask = superpixel_pool(features, segments)
    assert tokens.shape == (2, 5, 1)
    assert mask.tolist() == [[False, False, True, True, True], [False, True, True, True, False]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_dtypes(dtype):
    features = torch.randn(2, 6, 6, 8)
    segments = torch.randint(0, 5, (2, 12, 12))
    tokens, _ = superpixel_pool(features.to(dtype), segments)
    expected, _ = superpixel_pool(features, segments)
    assert tokens.dtype == dtype
    torch.testing.assert_close(tokens.float(), expected, rtol=2e-2, atol=2e-2)


def test_gradcheck_float64():
    features = torch.randn(2, 3, 4, 2, dtype=torch.float64, requires_grad=True)
    segments = torch.tensor([[[0, 0, 1, 1], [0, 2, 2, 1], [4, 4, 4, 4]],
                             [[1, 1, 1, 1], [0, 0, 0, 0], [1, 1, 1, 0]]])
    assert torch.autograd.gradcheck(lambda f: superpixel_pool(f, segments)[0], (features,))
    assert torch.autograd.gradgradcheck(lambda f: superpixel_pool(f, segments)[0], (features,))


def test_slic_on_real_photo_gives_numpy_segment_means():
    skimage_data = pytest.importorskip("skimage.data")
    from skimage.segmentation import slic
    from skimage.transform import resize

    image = resize(skimage_data.astronaut(), (64, 64), anti_aliasing=True)  # float in [0, 1]
    ids = slic(image, n_segments=40, compactness=10, start_label=0)
    tokens, mask = superpixel_pool(torch.from_numpy(image)[None], torch.from_numpy(ids)[None].long())
    assert tokens.shape == (1, ids.max() + 1, 3)
    for k in range(ids.max() + 1):
        if (ids == k).any():
            np.testing.assert_allclose(tokens[0, k].numpy(), image[ids == k].mean(axis=0), rtol=1e-10)
        else:
            assert mask[0, k]
    assert (~mask).sum() == len(np.unique(ids))
    # The colours differ across segments: pooling kept the photo's structure.
    assert tokens[0, ~mask[0]].std(dim=0).min() > 0.05


@pytest.mark.parametrize(
    "features, segments, kwargs, error, match",
    [
        (torch.randn(4, 4, 3), torch.zeros(1, 4, 4, dtype=torch.long), {}, ValueError, r"features must have shape \(B, H, W, C\).*got shape \(4, 4, 3\)"),
        (torch.randn(1, 4, 4, 3), torch.zeros(4, 4, dtype=torch.long), {}, ValueError, r"segments must have shape \(B, h, w\).*got shape \(4, 4\)"),
        (torch.randn(2, 4, 4, 3), torch.zeros(3, 8, 8, dtype=torch.long), {}, ValueError, r"same batch size.*\(2, 4, 4, 3\).*\(3, 8, 8\)"),
        (torch.randn(1, 4, 4, 3), -torch.ones(1, 4, 4, dtype=torch.long), {}, ValueError, r"segments must hold ids >= 0"),
        (torch.randn(1, 4, 4, 3), torch.zeros(1, 4, 4), {}, TypeError, r"segments must hold integer ids.*torch.float32"),
        (torch.zeros(1, 4, 4, 3, dtype=torch.long), torch.zeros(1, 4, 4, dtype=torch.long), {}, TypeError, r"features must have a floating point dtype"),
        (torch.randn(0, 4, 4, 3), torch.zeros(0, 4, 4, dtype=torch.long), {}, ValueError, r"features must not be empty.*got shape \(0, 4, 4, 3\)"),
        (torch.randn(1, 4, 4, 3), torch.zeros(1, 0, 4, dtype=torch.long), {}, ValueError, r"segments must not be empty"),
        (torch.randn(1, 4, 4, 3), torch.zeros(1, 4, 4, dtype=torch.long), {"num_segments": 0}, ValueError, r"num_segments must be >= 1"),
        (torch.randn(1, 4, 4, 3), torch.zeros(1, 4, 4, dtype=torch.long), {"num_segments": 2.0}, TypeError, r"num_segments must be an int"),
    ],
)
def test_bad_input_raises(features, segments, kwargs, error, match):
    with pytest.raises(error, match=match):
        superpixel_pool(features, segments, **kwargs)


def test_negative_id_dropped_by_resize_still_raises():
    segments = torch.zeros(1, 8, 8, dtype=torch.long)
    segments[0, 1, 1] = -1  # nearest 8 -> 4 keeps even rows and columns only
    with pytest.raises(ValueError, match="segments must hold ids >= 0, got minimum -1"):
        superpixel_pool(torch.randn(1, 4, 4, 2), segments)


def test_non_tensor_raises_type_error():
    with pytest.raises(TypeError, match="features must be a torch.Tensor"):
        superpixel_pool(np.zeros((1, 2, 2, 1)), torch.zeros(1, 2, 2, dtype=torch.long))
