"""Tests of hcast.metric_learning.hier: Poincare maps and distances, triplet mining, the HIER loss."""
import math

import pytest
import torch

geoopt = pytest.importorskip("geoopt")

from hcast.metric_learning.hier import (  # noqa: E402
    HIERLoss,
    ToPoincare,
    hier_triplet_loss,
    mine_reciprocal_triplets,
    poincare_distance_matrix,
    to_poincare,
)

C = 0.1


def _ball64():
    return geoopt.PoincareBall(c=torch.tensor(C, dtype=torch.float64))


def _points(n, d, seed, scale=1.5):
    g = torch.Generator().manual_seed(seed)
    return _ball64().expmap0(torch.randn(n, d, generator=g, dtype=torch.float64) * scale)


# ------------------------------------------------------------------ Poincare maps and distances
def test_distance_matrix_matches_geoopt():
    x, y = _points(11, 6, 0), _points(5, 6, 1, scale=3.0)
    expected = _ball64().dist(x[:, None], y[None])
    torch.testing.assert_close(poincare_distance_matrix(x, y, C), expected, rtol=1e-10, atol=1e-10)
    # float32 agrees to float32 precision away from the diagonal
    torch.testing.assert_close(poincare_distance_matrix(x.float(), y.float(), C), expected.float(), rtol=1e-3, atol=1e-3)


def test_distance_matrix_hand_computed_and_diagonal():
    # On a line through 0 the distance from the origin is (2/sqrt c) artanh(sqrt c |x|).
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [-2.0, 0.0]], dtype=torch.float64)
    d = poincare_distance_matrix(x, x, C)
    sc = math.sqrt(C)
    assert d[0, 1].item() == pytest.approx(2 / sc * math.atanh(sc * 1.0), rel=1e-12)
    assert d[0, 2].item() == pytest.approx(2 / sc * math.atanh(sc * 2.0), rel=1e-12)
    # collinear points on opposite sides: distances add up
    assert d[1, 2].item() == pytest.approx(d[0, 1].item() + d[0, 2].item(), rel=1e-10)
    assert d.diagonal().abs().max() < 1e-6
    torch.testing.assert_close(d, d.t())


def test_distance_matrix_gradcheck():
    x = _points(4, 3, 2).requires_grad_()
    y = _points(3, 3, 3).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: poincare_distance_matrix(a, b, C), (x, y))


def test_to_poincare_is_clipped_expmap0():
    g = torch.Generator().manual_seed(4)
    v = torch.randn(6, 5, generator=g, dtype=torch.float64) * 3
    y = to_poincare(v, C, clip_r=2.3, riemannian=False)
    norms = v.norm(dim=1, keepdim=True)
    clipped = v * torch.clamp(2.3 / (norms + 1e-5), max=1.0)
    torch.testing.assert_close(y, _ball64().expmap0(clipped))
    # norm: tanh(sqrt(c) * min(|v|, r)) / sqrt(c), inside the ball
    expected_norm = torch.tanh(math.sqrt(C) * clipped.norm(dim=1)) / math.sqrt(C)
    torch.testing.assert_close(y.norm(dim=1), expected_norm)
    assert (y.norm(dim=1) < 1 / math.sqrt(C)).all()


def test_to_poincare_gradients():
    v = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: to_poincare(a, C, clip_r=None, riemannian=False), (v,))
    # riemannian=True rescales the incoming gradient by (1 - c|y|^2)^2 / 4 (hyptorch's RiemannianGradient)
    w = torch.randn(4, 3, dtype=torch.float64)
    y = to_poincare(v, C, clip_r=None, riemannian=False)
    scale = ((1 - C * y.detach().pow(2).sum(1, keepdim=True)) ** 2) / 4
    (expected,) = torch.autograd.grad((y * (w * scale)).sum(), v)
    (got,) = torch.autograd.grad((ToPoincare(C, clip_r=None)(v) * w).sum(), v)
    torch.testing.assert_close(got, expected)


# ------------------------------------------------------------------ triplets and the LCA objective
def test_mine_reciprocal_triplets_two_clusters():
    # points 0-2 and 3-5 form two tight clusters
    pos = torch.tensor([0.0, 0.1, 0.2, 10.0, 10.1, 10.2])
    sim = -(pos[:, None] - pos[None, :]).abs()
    a, p, n = mine_reciprocal_triplets(sim, topk=3, triplets_per_anchor=7, generator=torch.Generator().manual_seed(0))
    assert a.shape == p.shape == n.shape == (6 * 7,)
    cluster = (pos >= 5).long()
    assert (cluster[a] == cluster[p]).all() and (a != p).all()
    assert (cluster[a] != cluster[n]).all() and (a != n).all()
    # no point has two reciprocal neighbours with topk=2: no triplets
    a, _, _ = mine_reciprocal_triplets(sim, topk=2)
    assert a.numel() == 0


def test_hier_triplet_loss_hand_computed():
    # 3 points (rows) x 3 proxies (columns). lca_ij = argmin_p max(d_i, d_j); lca_ijk likewise with d_k.
    a, p, n = torch.tensor([0]), torch.tensor([1]), torch.tensor([2])

    def loss(d):
        return hier_triplet_loss(torch.tensor(d, dtype=torch.float64), a, p, n, margin=0.1, gumbel=False).item()

    # lca_ij = proxy 0 (max 1.5), lca_ijk = proxy 1 (max 2.5); all hinges satisfied
    assert loss([[1.0, 2.0, 5.0], [1.5, 2.0, 5.0], [4.0, 2.5, 5.0]]) == 0.0
    # i and j nearly as close to the triplet's LCA as to their own: [1 - 1.05 + .1] + [1.5 - 1.55 + .1]
    assert loss([[1.0, 1.05, 5.0], [1.5, 1.55, 5.0], [3.0, 2.5, 5.0]]) == pytest.approx(0.1, abs=1e-12)
    # k nearly as close to the pair's LCA as to the triplet's: [d(k, lca_ijk) - d(k, lca_ij) + .1] = 2.5 - 2.55 + .1
    assert loss([[1.0, 2.0, 5.0], [1.5, 2.0, 5.0], [2.55, 2.5, 5.0]]) == pytest.approx(0.05, abs=1e-12)
    # same LCA for the pair and the triplet: the triplet does not count
    assert loss([[1.0, 2.0, 5.0], [1.5, 2.0, 5.0], [1.2, 2.5, 5.0]]) == 0.0
    # no triplets: zero, still attached to the graph
    d = torch.ones(3, 3, requires_grad=True)
    empty = torch.empty(0, dtype=torch.int64)
    out = hier_triplet_loss(d, empty, empty, empty)
    assert out.item() == 0.0 and out.requires_grad


def test_hier_triplet_loss_gradcheck():
    g = torch.Generator().manual_seed(5)
    d = (torch.rand(6, 4, generator=g, dtype=torch.float64) * 3).requires_grad_()
    a = torch.tensor([0, 1, 2, 3])
    p = torch.tensor([1, 0, 3, 2])
    n = torch.tensor([4, 5, 5, 4])
    fn = lambda x: hier_triplet_loss(x, a, p, n, margin=1.0, gumbel=False, straight_through=False)  # noqa: E731
    assert fn(d).item() > 0
    assert torch.autograd.gradcheck(fn, (d,))


def test_hier_loss_trains_and_reaches_proxies():
    torch.manual_seed(0)
    hier = HIERLoss(8, num_proxies=16, topk=4, triplets_per_anchor=5)
    assert hier.proxies.shape == (16, 8)
    assert (hier.proxies.norm(dim=1) < 1 / math.sqrt(C)).all()
    raw = torch.randn(24, 8, requires_grad=True)
    labels = torch.arange(6).repeat_interleave(4)
    loss = hier(to_poincare(raw), labels)
    assert loss.dim() == 0 and torch.isfinite(loss) and loss > 0
    loss.backward()
    assert raw.grad.abs().sum() > 0 and hier.proxy_tangents.grad.abs().sum() > 0
    # optimising HIER alone lowers it (averaged over triplet draws; deterministic LCA choice)
    hier.gumbel = False

    def mean_loss():
        with torch.no_grad():
            return sum(hier(to_poincare(raw), labels).item() for _ in range(10)) / 10

    before = mean_loss()
    opt = torch.optim.Adam([raw, *hier.parameters()], lr=0.05)
    for _ in range(40):
        loss = hier(to_poincare(raw), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert mean_loss() < 0.75 * before


def test_hier_loss_errors():
    hier = HIERLoss(4, num_proxies=8)
    with pytest.raises(ValueError, match="Poincare ball of radius"):
        hier(torch.full((3, 4), 10.0), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="dimension 5"):
        hier(torch.zeros(3, 5), torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match=r"labels must be an integer \(N,\) tensor"):
        hier(torch.zeros(3, 4), torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"labels has 2 entries but embeddings has 3"):
        hier(torch.zeros(3, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="curvature"):
        ToPoincare(curvature=0.0)
