"""Tests for hcast.ops.farthest_point_sampling against a line-by-line Python version of
DGL's CPU kernel (dgl/src/geometry/cpu/geometry_op_impl.cc, FarthestPointSampler)."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hcast.ops import farthest_point_sampling


def dgl_reference(points, num_samples, start_idx=0):
    """DGL's CPU loop in plain Python floats (IEEE doubles, channel-ordered sums)."""
    data = points.double().tolist()
    out = []
    for cloud in data:
        n, dim = len(cloud), len(cloud[0])
        dist = [0.0] * n
        sample = start_idx
        picked = [sample]
        for i in range(num_samples - 1):
            best, best_dist = 0, -1.0
            for j in range(n):
                one = 0.0
                for d in range(dim):
                    t = cloud[j][d] - cloud[sample][d]
                    one += t * t
                if i == 0 or dist[j] > one:
                    dist[j] = one
                if dist[j] > best_dist:
                    best, best_dist = j, dist[j]
            sample = best
            picked.append(sample)
        out.append(picked)
    return torch.tensor(out, dtype=torch.long)


@st.composite
def fps_inputs(draw):
    b = draw(st.integers(1, 3))
    n = draw(st.integers(1, 24))
    c = draw(st.integers(1, 6))
    k = draw(st.integers(1, n))
    start = draw(st.integers(0, n - 1))
    kind = draw(st.sampled_from(["normal", "integer", "duplicates", "float32"]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    if kind == "normal":
        points = torch.randn(b, n, c, generator=g, dtype=torch.float64)
    elif kind == "float32":
        points = torch.randn(b, n, c, generator=g)
    elif kind == "integer":  # many exact distance ties
        points = torch.randint(-2, 3, (b, n, c), generator=g).double()
    else:  # few distinct points: ties and exhausted clouds (all distances 0)
        distinct = torch.randn(b, max(1, n // 4), c, generator=g)
        pick = torch.randint(0, distinct.shape[1], (b, n), generator=g)
        points = torch.gather(distinct, 1, pick[..., None].expand(-1, -1, c))
    return points, k, start


@settings(max_examples=80, deadline=None)
@given(fps_inputs())
def test_matches_dgl_reference(inputs):
    points, k, start = inputs
    result = farthest_point_sampling(points, k, start_idx=start)
    assert result.dtype == torch.int64 and result.shape == (points.shape[0], k)
    assert torch.equal(result, dgl_reference(points, k, start))


def test_ties_first_index_wins():
    # Points 1 and 3 are both at squared distance 4 from point 0; 1 comes first.
    points = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [1.0, 0.0], [0.0, 2.0]]])
    assert farthest_point_sampling(points, 3).tolist() == [[0, 1, 3]]


@pytest.mark.parametrize("channels, samples", [(6, 20), (384, 8)])
def test_permuted_coordinates_follow_dgl_channel_order(channels, samples):
    # Same coordinates in a different order: the distances can differ in the last bit
    # depending on summation order (a plain .sum(-1) picks other points here); DGL
    # sums channel by channel.
    g = torch.Generator().manual_seed(3)
    base = torch.rand(channels, generator=g, dtype=torch.float64) * 10
    rows = [base[torch.randperm(channels, generator=g)] for _ in range(40)]
    points = torch.stack([torch.zeros(channels, dtype=torch.float64)] + rows)[None].expand(2, -1, -1)
    assert torch.equal(farthest_point_sampling(points, samples), dgl_reference(points, samples))


def test_exhausted_cloud_repeats_first_zero_distance_point():
    # Two distinct points, four samples: after both are picked every distance is 0 and
    # DGL returns index 0 (the first maximum) again and again.
    points = torch.tensor([[[1.0], [5.0], [1.0], [5.0]]])
    assert farthest_point_sampling(points, 4, start_idx=2).tolist() == [[2, 1, 0, 0]]
    assert farthest_point_sampling(torch.ones(1, 3, 2), 3, start_idx=1).tolist() == [[1, 0, 0]]


def test_cast_usage_on_real_photo_patches():
    """CAST samples centroids from token features with the mean token at index 0."""
    skimage_data = pytest.importorskip("skimage.data")
    image = torch.from_numpy(skimage_data.coffee()[::8, ::8].copy()).float() / 255  # (50, 75, 3)
    tokens = image.reshape(1, -1, 3)
    sampling = torch.cat([tokens.mean(1, keepdim=True), tokens], dim=1)
    result = farthest_point_sampling(sampling, 9, 0)
    assert result[0, 0] == 0 and (result[0, 1:] > 0).all() and len(set(result[0].tolist())) == 9
    assert torch.equal(result, dgl_reference(sampling, 9, 0))


def test_huge_float64_coordinates_do_not_overflow():
    # Squared distances of coordinates ~1e300 overflow float64 (DGL's kernel and the
    # unscaled Gram path give [[0, 0, 0, 0]] here). By hand: from 0, points 1 and 2 are
    # both 1e300 away (first wins: 1); then 2 is 1e300 from 0, 3 only 5e299: 2, then 3.
    points = torch.tensor([[[0.0], [1e300], [-1e300], [5e299]]], dtype=torch.float64)
    assert farthest_point_sampling(points, 4).tolist() == [[0, 1, 2, 3]]


def test_huge_scale_keeps_dgl_indices_on_photo_tokens():
    """Scaling a cloud by a power of two is exact: a photo's tokens times 2**600 (~4e180,
    beyond float64's squared range) give DGL's indices of the unscaled tokens."""
    skimage_data = pytest.importorskip("skimage.data")
    image = torch.from_numpy(skimage_data.chelsea()[::12, ::12].copy()).double() / 255
    tokens = image.reshape(1, -1, 3)
    expected = dgl_reference(tokens, 12, 5)
    assert torch.equal(farthest_point_sampling(tokens, 12, 5), expected)
    assert torch.equal(farthest_point_sampling(tokens * 2.0**600, 12, 5), expected)
    # a batch mixing a huge and a normal cloud: each cloud is scaled on its own
    both = torch.cat([tokens * 2.0**1000, tokens])
    assert torch.equal(farthest_point_sampling(both, 12, 5), expected.expand(2, -1))


def test_gradient_free_and_keeps_input():
    points = torch.randn(2, 10, 3, requires_grad=True)
    before = points.detach().clone()
    result = farthest_point_sampling(points, 4)
    assert not result.requires_grad and torch.equal(points.detach(), before)


@pytest.mark.parametrize(
    "points, k, start, error, match",
    [
        (torch.randn(10, 3), 2, 0, ValueError, r"points must have shape \(B, N, C\).*got shape \(10, 3\)"),
        (torch.randn(2, 5, 3), 6, 0, ValueError, r"num_samples must be <= the number of points N=5.*got num_samples=6"),
        (torch.randn(2, 5, 3), 0, 0, ValueError, r"num_samples must be >= 1, got 0"),
        (torch.randn(2, 5, 3), 2, 5, ValueError, r"start_idx must be in \[0, N-1\] = \[0, 4\].*got start_idx=5"),
        (torch.randn(2, 5, 3), 2, -1, ValueError, r"start_idx must be >= 0"),
        (torch.tensor([[[0.0], [float("nan")]]]), 1, 0, ValueError, r"points must be finite, got 1 NaN"),
        (torch.tensor([[[0.0], [float("inf")]]]), 1, 0, ValueError, r"points must be finite"),
        (torch.randn(0, 5, 3), 1, 0, ValueError, r"points must not be empty.*got shape \(0, 5, 3\)"),
        (torch.randn(2, 0, 3), 1, 0, ValueError, r"points must not be empty.*got shape \(2, 0, 3\)"),
        (torch.randint(0, 3, (2, 5, 3)), 2, 0, TypeError, r"points must have a floating point dtype"),
        (torch.randn(2, 5, 3), 2.0, 0, TypeError, r"num_samples must be an int"),
        (np.zeros((2, 5, 3)), 2, 0, TypeError, r"points must be a torch.Tensor"),
    ],
)
def test_bad_input(points, k, start, error, match):
    with pytest.raises(error, match=match):
        farthest_point_sampling(points, k, start_idx=start)


@pytest.mark.parametrize("kind", ["normal", "duplicates", "blank", "integer"])
def test_fast_path_equals_channel_ordered_loop_at_cast_size(kind):
    """The Gram-matrix path with exact near-tie checks returns the same indices as the
    plain channel-ordered loop, on CAST-sized clouds (197 points, C=384), including
    clouds with duplicated tokens and a blank image's all-equal tokens."""
    from hcast.ops.farthest_point_sampling import (
        _farthest_point_sampling_reference,
        _farthest_point_sampling_torch,
    )

    g = torch.Generator().manual_seed(7)
    points = torch.randn(4, 197, 384, generator=g)
    if kind == "duplicates":
        points[:, 100:] = points[:, :1]  # CAST fills padded tokens with the mean token
    elif kind == "blank":
        points[1:3] = 0.25
    elif kind == "integer":
        points = torch.randint(-1, 2, (4, 197, 384), generator=g).float()
    fast = _farthest_point_sampling_torch(points, 65, 0)
    assert torch.equal(fast, _farthest_point_sampling_reference(points, 65, 0))


def _cast_clouds(kind: str) -> torch.Tensor:
    """CAST-sized clouds (B=3, 197 points, C=384) as graph pooling builds them."""
    g = torch.Generator().manual_seed(11)
    points = torch.randn(3, 197, 384, generator=g)
    if kind == "padded":  # padded tokens are filled with the mean token, the start point
        points[1, 150:] = points[1, :1]
    elif kind == "blank":  # every token equal: the cloud runs out of distinct points
        points[2] = 0.5
    return points


def test_gram_loop_is_sure_on_distinct_tokens_and_flags_ties():
    """The sync-free Gram-matrix loop settles clouds of distinct tokens on its own (no
    exact pass) and flags exactly the clouds with ties at the farthest point."""
    from hcast.ops.farthest_point_sampling import (
        _farthest_point_sampling_gram,
        _farthest_point_sampling_reference,
    )

    points = _cast_clouds("normal").double()
    samples, unsure = _farthest_point_sampling_gram(points, 65, 0)
    assert not unsure.any()
    assert torch.equal(samples, _farthest_point_sampling_reference(points, 65, 0))
    blank = _cast_clouds("blank").double()
    assert _farthest_point_sampling_gram(blank, 65, 0)[1].tolist() == [False, False, True]


def _distinct_and_duplicated_clouds() -> torch.Tensor:
    """(2, 30, 8) float32: cloud 0 of distinct points, cloud 1 of 5 distinct points
    repeated, where the Gram-matrix loop alone picks index 25 instead of DGL's 4 (a tie
    between duplicates that its rounding breaks the wrong way)."""
    g = torch.Generator().manual_seed(0)
    distinct = torch.randn(1, 5, 8, generator=g) * 3 + 0.1
    pick = torch.randint(0, 5, (1, 30), generator=g)
    duplicated = torch.gather(distinct, 1, pick[..., None].expand(-1, -1, 8))
    return torch.cat([torch.randn(1, 30, 8, generator=g), duplicated])


def test_unsure_clouds_are_sampled_again_exactly():
    from hcast.ops.farthest_point_sampling import _farthest_point_sampling_gram

    points = _distinct_and_duplicated_clouds()
    expected = dgl_reference(points, 9, 0)
    samples, unsure = _farthest_point_sampling_gram(points.double(), 9, 0)
    assert unsure.tolist() == [False, True]
    assert torch.equal(samples[0], expected[0]) and not torch.equal(samples[1], expected[1])
    assert torch.equal(farthest_point_sampling(points, 9, 0), expected)


@pytest.mark.parametrize("exact_branch", [False, True])
def test_compiled_fps_is_one_graph_with_dgl_indices(exact_branch, one_torch_thread):
    """Under torch.compile (fullgraph: no host sync, no graph break) the op returns DGL's
    indices, with a cloud that needs the exact torch.cond branch and without."""
    import torch._dynamo

    points = _distinct_and_duplicated_clouds()
    points = points if exact_branch else points[:1]
    torch._dynamo.reset()
    compiled = torch.compile(lambda p: farthest_point_sampling(p, 9, 0, validate_args=False),
                             backend="eager", fullgraph=True)
    assert torch.equal(compiled(points), dgl_reference(points, 9, 0))


def test_onnx_runtime_takes_the_exact_branch(tmp_path, one_torch_thread):
    """Exported to ONNX (torch.cond becomes an If node), a batch with a cloud that needs
    the exact branch and one without give DGL's indices in ONNX Runtime."""
    ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime is a test extra: pip install hcast[test]")
    pytest.importorskip("onnxscript")

    class Sampler(torch.nn.Module):
        def forward(self, points):
            return farthest_point_sampling(points, 9, 0, validate_args=False)

    points = _distinct_and_duplicated_clouds()
    path = tmp_path / "fps.onnx"
    torch.onnx.export(Sampler().eval(), (points,), dynamo=True,
                      dynamic_shapes=({0: torch.export.Dim("batch")},)).save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for batch in (points, points[:1], points[1:]):
        got = session.run(None, {name: batch.numpy()})[0]
        assert np.array_equal(got, dgl_reference(batch, 9, 0).numpy())
