"""HIER: hierarchical proxies in the Poincare ball as a regulariser for metric learning.

HIER (Kim, Jeong and Kwak, "HIER: Metric Learning Beyond Class Labels via
Hierarchical Regularization", CVPR 2023; code ``github:tjddus9597/HIER-CVPR23``,
``hier/losses.py`` ``HIERLoss``, read, not copied) learns a latent hierarchy: a set
of *hierarchical proxies* in hyperbolic space act as the inner nodes of a tree whose
leaves are the samples. For a triplet ``(i, j, k)`` where ``i, j`` are reciprocal
nearest neighbours (or same-class) and ``k`` is not, it pulls ``i`` and ``j``
toward their lowest common ancestor (LCA) proxy and ``k`` toward the LCA of the
whole triplet, away from the pair's LCA. The same objective applied to the proxies
themselves builds the upper levels of the tree. HIER needs no taxonomy: it
*discovers* one. It is added to a metric-learning loss (the paper:
``lambda1 * ProxyAnchor + lambda2 * HIER``, lambda2 0.5 or 1).

Contents:

* :func:`to_poincare` / :class:`ToPoincare`: feature clipping and the exponential
  map at the origin (geoopt), the last layer of a hyperbolic embedding head.
* :func:`poincare_distance_matrix`: all pairwise geodesic distances.
* :func:`mine_reciprocal_triplets`: the triplet sampler of the reference.
* :func:`hier_triplet_loss`: the triplet-wise LCA objective on given triplets.
* :class:`HIERLoss`: the regulariser with its learnable proxies, paper defaults.

Hyperbolic maps come from geoopt (``geoopt.PoincareBall.expmap0``, ``projx``,
``egrad2rgrad``). The pairwise distance matrix is computed here from inner products
instead of geoopt's broadcast ``dist(x[:, None], y[None])``: for the reference's
sizes (90 embeddings + 512 proxies, 128 dims) that broadcast materialises an
(N, M, D) tensor and measured 6.8 s per forward+backward against 0.44 s for the
Gram form on 2 CPU cores; the tests check the two agree to 1e-10 in float64.
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hcast import _validation as V

__all__ = [
    "to_poincare",
    "ToPoincare",
    "poincare_distance_matrix",
    "mine_reciprocal_triplets",
    "hier_triplet_loss",
    "HIERLoss",
]


def _geoopt():
    try:
        import geoopt
    except ImportError as e:  # pragma: no cover - geoopt is in the "metric" extra
        raise ImportError("HIER needs geoopt for its hyperbolic maps: pip install 'hcast[metric]' (or geoopt).") from e
    return geoopt


@functools.lru_cache(maxsize=16)
def _ball(curvature: float):
    # geoopt's PoincareBall with c = curvature > 0 (sectional curvature -c), in float64 so that
    # float64 inputs keep full precision; a 0-dim float64 buffer does not promote float32 inputs.
    return _geoopt().PoincareBall(c=torch.tensor(curvature, dtype=torch.float64))


def _check_curvature(curvature: float) -> float:
    """``c > 0``: the ball has curvature ``-c``."""
    return V.check_number("curvature", curvature, low=0, low_open=True)


def _check_points(x: Tensor, arg: str) -> None:
    V.check_tensor(arg, x)
    V.check_floating(arg, x)
    V.check_rank(arg, x, 2, "(N, D)")


class _RiemannianGradient(torch.autograd.Function):
    """Identity whose backward turns the Euclidean gradient into the Riemannian one.

    The reference (hyptorch ``RiemannianGradient``) rescales the gradient at a ball
    point ``x`` by ``(1 - c|x|^2)^2 / 4``, the inverse metric; geoopt's
    ``egrad2rgrad`` computes exactly that.
    """

    @staticmethod
    def forward(ctx, x: Tensor, curvature: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.curvature = curvature
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return _ball(ctx.curvature).egrad2rgrad(x, grad), None


def to_poincare(x: Tensor, curvature: float = 0.1, clip_r: Optional[float] = 2.3, riemannian: bool = True) -> Tensor:
    r"""Map Euclidean vectors into the Poincare ball: clip, then the exponential map at 0.

    .. math::
        \tilde x = x \min\Big(1, \frac{r}{\lVert x\rVert}\Big), \qquad
        \exp_0^c(\tilde x) = \tanh(\sqrt c\, \lVert\tilde x\rVert) \frac{\tilde x}{\sqrt c\, \lVert\tilde x\rVert}

    The clipping to norm ``clip_r`` is the feature clipping of Guo et al. (CVPR 2022,
    "Clipped Hyperbolic Classifiers Are Super-Hyperbolic Classifiers") that HIER uses
    to keep points away from the boundary. ``riemannian=True`` rescales the gradient
    flowing back through the output to the Riemannian gradient, as hyptorch's
    ``ToPoincare(riemannian=True)`` in the reference does (so it is deliberately not
    the Euclidean gradient of this map).

    Args:
        x: (..., D) float tensor of Euclidean vectors.
        curvature: ``c > 0``; the ball has radius ``1 / sqrt(c)``. HIER uses 0.1.
        clip_r: clipping radius (HIER: 2.3), or ``None`` for no clipping.
        riemannian: apply the Riemannian gradient rescaling in backward.

    Returns:
        (..., D) points of the ball (same dtype as ``x``).
    """
    curvature = _check_curvature(curvature)
    if clip_r is not None:
        norm = x.norm(dim=-1, keepdim=True) + 1e-5
        x = x * torch.clamp(clip_r / norm, max=1.0)
    y = _ball(curvature).expmap0(x, project=True)
    if riemannian:
        y = _RiemannianGradient.apply(y, curvature)
    return y


class ToPoincare(nn.Module):
    """Module form of :func:`to_poincare`: the last layer of a hyperbolic embedding head.

    HIER's embedding head is ``LayerNorm(no affine) -> Linear(dim, emb) -> ToPoincare``.

    Args:
        curvature: ``c > 0`` (HIER: 0.1).
        clip_r: clipping radius (HIER: 2.3) or ``None``.
        riemannian: Riemannian gradient rescaling in backward (HIER: on).

    Shape:
        (..., D) float -> (..., D) points of the ball.
    """

    def __init__(self, curvature: float = 0.1, clip_r: Optional[float] = 2.3, riemannian: bool = True) -> None:
        super().__init__()
        self.curvature = _check_curvature(curvature)
        self.clip_r = clip_r
        self.riemannian = riemannian

    def forward(self, x: Tensor) -> Tensor:
        return to_poincare(x, self.curvature, self.clip_r, self.riemannian)

    def extra_repr(self) -> str:
        return f"curvature={self.curvature}, clip_r={self.clip_r}, riemannian={self.riemannian}"


def poincare_distance_matrix(x: Tensor, y: Tensor, curvature: float = 0.1) -> Tensor:
    r"""Geodesic distances between all points of ``x`` and ``y`` in the Poincare ball.

    .. math::
        d_c(x, y) = \frac{2}{\sqrt c} \operatorname{artanh}\big(\sqrt c\, \lVert (-x) \oplus_c y \rVert\big)

    with :math:`\oplus_c` the Mobius addition; geoopt's ``PoincareBall.dist`` for each
    pair. The norm of the Mobius sum is expanded in :math:`\lVert x\rVert^2`,
    :math:`\lVert y\rVert^2` and :math:`\langle x, y\rangle` so no (N, M, D) tensor is
    built (see the module docstring for the measured reason).

    Args:
        x: (N, D) points of the ball.
        y: (M, D) points of the ball.
        curvature: ``c > 0``.

    Returns:
        (N, M) distances, dtype of the inputs. The diagonal of ``x`` against itself is
        ~0 (not exactly: the square root is clamped at machine epsilon to keep its
        gradient finite).
    """
    curvature = _check_curvature(curvature)
    _check_points(x, "x")
    _check_points(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got {x.shape[1]} and {y.shape[1]}.")
    c = curvature
    x2 = (x * x).sum(-1, keepdim=True)  # (N, 1)
    y2 = (y * y).sum(-1, keepdim=True).t()  # (1, M)
    xy = x @ y.t()  # (N, M)
    # (-x) (+) y = (a (-x) + b y) / den with a = 1 - 2c<x,y> + c|y|^2, b = 1 - c|x|^2
    a = 1 - 2 * c * xy + c * y2
    b = 1 - c * x2
    num_sq = a * a * x2 - 2 * a * b * xy + b * b * y2
    den = 1 - 2 * c * xy + c * c * x2 * y2
    eps = torch.finfo(x.dtype).eps
    norm = num_sq.clamp_min(eps * eps).sqrt() / den
    arg = (math.sqrt(c) * norm).clamp(max=1 - eps)
    return 2 / math.sqrt(c) * torch.atanh(arg)


def mine_reciprocal_triplets(
    similarity: Tensor,
    topk: int = 20,
    triplets_per_anchor: int = 50,
    generator: Optional[torch.Generator] = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Sample HIER's triplets: reciprocal nearest neighbours as pairs, any other point as third.

    Following ``HIERLoss.get_reciprocal_triplets`` of the reference: ``i`` and ``j``
    are *reciprocal* neighbours when each is among the other's ``topk`` most similar
    points. Every anchor with at least two reciprocal neighbours gets
    ``triplets_per_anchor`` triplets ``(anchor, positive, negative)``: the positive
    drawn uniformly (with replacement) from its reciprocal neighbours, the negative
    from the remaining points. Unlike the reference, the anchor itself is never drawn
    as its own negative.

    Args:
        similarity: (N, N) float similarities (larger = closer); HIER uses
            ``exp(-distance)`` plus 1 for same-class pairs.
        topk: neighbourhood size (HIER's scripts: 20).
        triplets_per_anchor: triplets drawn per anchor (HIER: 50).
        generator: optional random generator.

    Returns:
        ``(anchors, positives, negatives)``, three (T,) int64 tensors of row indices
        (T = 0 when no point has two reciprocal neighbours).
    """
    if similarity.dim() != 2 or similarity.shape[0] != similarity.shape[1]:
        raise ValueError(f"similarity must be a square (N, N) tensor, got shape {tuple(similarity.shape)}.")
    if topk < 1 or triplets_per_anchor < 1:
        raise ValueError(f"topk and triplets_per_anchor must be >= 1, got {topk} and {triplets_per_anchor}.")
    n = similarity.shape[0]
    device = similarity.device
    idx = similarity.topk(min(topk, n), dim=1).indices
    knn = torch.zeros(n, n, dtype=torch.bool, device=device).scatter_(1, idx, True)
    reciprocal = knn & knn.t()
    reciprocal.fill_diagonal_(False)
    others = ~reciprocal
    others.fill_diagonal_(False)
    anchors = ((reciprocal.sum(1) >= 2) & (others.sum(1) >= 1)).nonzero().squeeze(1)
    if anchors.numel() == 0:
        empty = torch.empty(0, dtype=torch.int64, device=device)
        return empty, empty, empty
    t = triplets_per_anchor
    positives = torch.multinomial(reciprocal[anchors].float(), t, replacement=True, generator=generator)
    negatives = torch.multinomial(others[anchors].float(), t, replacement=True, generator=generator)
    return anchors[:, None].expand(-1, t).reshape(-1), positives.reshape(-1), negatives.reshape(-1)


def _select_lca(scores: Tensor, gumbel: bool, straight_through: bool) -> Tensor:
    if gumbel:
        # As the reference: hard Gumbel-softmax (temperature 1) over -max_dist / tau,
        # with the straight-through gradient of the soft sample.
        sample = F.gumbel_softmax(scores, tau=1.0, hard=True, dim=1)
        return sample if straight_through else sample.detach()
    hard = F.one_hot(scores.argmax(1), scores.shape[1]).to(scores.dtype)
    if straight_through:
        soft = scores.softmax(1)
        return hard - soft.detach() + soft
    return hard


def hier_triplet_loss(
    distances: Tensor,
    anchors: Tensor,
    positives: Tensor,
    negatives: Tensor,
    margin: float = 0.1,
    tau: float = 0.1,
    gumbel: bool = True,
    straight_through: bool = True,
) -> Tensor:
    r"""HIER's triplet-wise LCA objective on given triplets (Kim et al., CVPR 2023, Eq. 3-5).

    With :math:`d(\cdot, p)` the hyperbolic distance of a point to proxy :math:`p`, the
    LCA of a pair is the proxy closest to *both* (smallest maximum distance),
    :math:`\mathrm{lca}_{ij} = \arg\min_p \max(d(i,p), d(j,p))`, picked with a hard
    Gumbel-softmax over :math:`-\max(\cdot)/\tau`; :math:`\mathrm{lca}_{ijk}` likewise
    for the triplet. The loss per triplet is

    .. math::
        [d(i, \mathrm{lca}_{ij}) - d(i, \mathrm{lca}_{ijk}) + \delta]_+
        + [d(j, \mathrm{lca}_{ij}) - d(j, \mathrm{lca}_{ijk}) + \delta]_+
        + [d(k, \mathrm{lca}_{ijk}) - d(k, \mathrm{lca}_{ij}) + \delta]_+ ,

    counted only when the two LCAs differ, averaged over all triplets.

    Args:
        distances: (N, P) float distances from the N points to the P proxies.
        anchors, positives, negatives: (T,) int64 row indices (:func:`mine_reciprocal_triplets`).
        margin: :math:`\delta` (HIER: 0.1).
        tau: temperature :math:`\tau` of the LCA selection (HIER: 0.1).
        gumbel: add Gumbel noise to the selection as the reference does; ``False``
            picks the argmin deterministically.
        straight_through: let gradients flow into the selection through the soft
            sample (straight-through estimator, as the reference's ``hard=True``);
            ``False`` treats the chosen LCAs as constants.

    Returns:
        Scalar loss (0, still attached to ``distances``, when T = 0).
    """
    _check_points(distances, "distances")
    if not (anchors.shape == positives.shape == negatives.shape) or anchors.dim() != 1:
        raise ValueError(
            f"anchors, positives and negatives must be (T,) tensors of equal length, got shapes "
            f"{tuple(anchors.shape)}, {tuple(positives.shape)}, {tuple(negatives.shape)}."
        )
    if anchors.numel() == 0:
        return distances.sum() * 0
    d_i, d_j, d_k = distances[anchors], distances[positives], distances[negatives]
    max_ij = torch.maximum(d_i, d_j)
    lca_ij = _select_lca(-max_ij / tau, gumbel, straight_through)
    lca_ijk = _select_lca(-torch.maximum(d_k, max_ij) / tau, gumbel, straight_through)
    i_ij, i_ijk = (d_i * lca_ij).sum(1), (d_i * lca_ijk).sum(1)
    j_ij, j_ijk = (d_j * lca_ij).sum(1), (d_j * lca_ijk).sum(1)
    k_ij, k_ijk = (d_k * lca_ij).sum(1), (d_k * lca_ijk).sum(1)
    loss = F.relu(i_ij - i_ijk + margin) + F.relu(j_ij - j_ijk + margin) + F.relu(k_ijk - k_ij + margin)
    distinct = (lca_ij.argmax(1) != lca_ijk.argmax(1)).to(loss.dtype)
    return (loss * distinct).mean()


class HIERLoss(nn.Module):
    r"""The HIER regulariser with learnable hierarchical proxies (Kim et al., CVPR 2023).

    ``forward(embeddings, labels)`` mines triplets among the embeddings (reciprocal
    ``topk`` neighbours under :math:`\exp(-d)`, same-class pairs boosted by +1, see
    :func:`mine_reciprocal_triplets`) and applies :func:`hier_triplet_loss` with the
    proxies as candidate LCAs; then the same among the proxies themselves (no labels),
    which shapes the upper levels of the latent tree. Total: the sum of both terms.

    Use it beside a metric-learning loss on the same hyperbolic embeddings, e.g. with
    pytorch-metric-learning (cosine-based losses see only the direction, which
    :func:`to_poincare` keeps)::

        head = nn.Sequential(nn.LayerNorm(dim, elementwise_affine=False), nn.Linear(dim, 128), ToPoincare())
        metric_loss = pytorch_metric_learning.losses.ProxyAnchorLoss(num_classes, 128, margin=0.1, alpha=32)
        hier = HIERLoss(128)
        z = head(backbone.forward_head(backbone.forward_features(x), pre_logits=True))
        loss = metric_loss(z, y) + 0.5 * hier(z, y)

    The reference trains the proxies with a 50x larger learning rate than the
    backbone (and Proxy-Anchor's proxies with 1e4x); give ``hier.parameters()`` their
    own optimizer parameter group.

    Args:
        embedding_dim: D, the embedding size.
        num_proxies: number of hierarchical proxies (HIER: 512).
        margin: :math:`\delta` (HIER: 0.1).
        tau: LCA-selection temperature (HIER: 0.1).
        curvature: ball curvature ``c`` (HIER ``hyp_c``: 0.1).
        clip_r: feature-clipping radius for the proxies (HIER: 2.3).
        topk: reciprocal-neighbour size (HIER's scripts: 20; its code default 30).
        triplets_per_anchor: triplets per anchor (HIER: 50).
        gumbel: Gumbel noise in the LCA selection (HIER: on).

    Shape:
        ``forward(embeddings (N, D) float points of the ball, labels (N,) int64 or None) -> scalar``.
        Labels are only compared for equality (any integer ids; there is no taxonomy
        to fall outside of).

    Raises:
        TypeError: embeddings not a floating point tensor, labels not an integer tensor.
        ValueError: embeddings not (N, D), outside the ball of radius ``1/sqrt(c)``
            (map them with :class:`ToPoincare` first), or labels not (N,).
    """

    def __init__(
        self,
        embedding_dim: int,
        num_proxies: int = 512,
        margin: float = 0.1,
        tau: float = 0.1,
        curvature: float = 0.1,
        clip_r: float = 2.3,
        topk: int = 20,
        triplets_per_anchor: int = 50,
        gumbel: bool = True,
    ) -> None:
        super().__init__()
        if embedding_dim < 1 or num_proxies < 2:
            raise ValueError(f"need embedding_dim >= 1 and num_proxies >= 2, got {embedding_dim} and {num_proxies}.")
        self.embedding_dim = embedding_dim
        self.num_proxies = num_proxies
        self.margin = margin
        self.tau = tau
        self.curvature = _check_curvature(curvature)
        self.clip_r = clip_r
        self.topk = topk
        self.triplets_per_anchor = triplets_per_anchor
        self.gumbel = gumbel
        # Tangent vectors at the origin, norm ~0.9 * clip_r as in the reference's init.
        init = torch.randn(num_proxies, embedding_dim) / math.sqrt(embedding_dim) * clip_r * 0.9
        self.proxy_tangents = nn.Parameter(init)

    @property
    def proxies(self) -> Tensor:
        """(num_proxies, D) proxy points in the ball."""
        return to_poincare(self.proxy_tangents, self.curvature, self.clip_r, riemannian=True)

    def forward(self, embeddings: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        _check_points(embeddings, "embeddings")
        if embeddings.shape[1] != self.embedding_dim:
            raise ValueError(
                f"embeddings have dimension {embeddings.shape[1]} but HIERLoss was built for {self.embedding_dim}."
            )
        radius = 1 / math.sqrt(self.curvature)
        if bool((embeddings.detach().norm(dim=1) >= radius).any()):
            raise ValueError(
                f"embeddings must lie in the Poincare ball of radius {radius:.4g} (curvature {self.curvature}); "
                f"map them with hcast.metric_learning.ToPoincare(curvature={self.curvature}) first."
            )
        n = embeddings.shape[0]
        if labels is not None:
            V.check_labels("labels", labels, n, "embeddings")
        proxies = self.proxies.to(embeddings.dtype)
        c = self.curvature
        with torch.no_grad():
            sim = torch.exp(-poincare_distance_matrix(embeddings, embeddings, c))
            if labels is not None:
                sim = sim + (labels[:, None] == labels[None, :]).to(sim.dtype)
            sim_proxies = torch.exp(-poincare_distance_matrix(proxies, proxies, c))
        triplets = mine_reciprocal_triplets(sim, self.topk, self.triplets_per_anchor)
        triplets_proxies = mine_reciprocal_triplets(sim_proxies, self.topk, self.triplets_per_anchor)
        loss = hier_triplet_loss(
            poincare_distance_matrix(embeddings, proxies, c), *triplets, self.margin, self.tau, self.gumbel
        )
        return loss + hier_triplet_loss(
            poincare_distance_matrix(proxies, proxies, c), *triplets_proxies, self.margin, self.tau, self.gumbel
        )

    def extra_repr(self) -> str:
        return (
            f"embedding_dim={self.embedding_dim}, num_proxies={self.num_proxies}, margin={self.margin}, "
            f"tau={self.tau}, curvature={self.curvature}, clip_r={self.clip_r}, topk={self.topk}"
        )
