"""Hierarchical cross-entropy (HXE) of "Making Better Mistakes" (Bertinetto et al., CVPR 2020).

* :func:`hxe_edge_weights`: the per-level edge weights ``exp(-alpha * depth)``.
* :func:`hierarchical_cross_entropy` / :class:`HierarchicalCrossEntropyLoss`: the
  fine-class probability factorised along the taxonomy, one weighted conditional
  log-probability per edge.

Sources (read, not copied): Bertinetto, Mueller, Tertikas, Samangooei and Lord,
"Making Better Mistakes: Leveraging Class Hierarchies with Deep Networks", CVPR 2020,
code ``github:fiveai/making-better-mistakes`` (``better_mistakes/model/losses.py``
``HierarchicalLLLoss``/``HierarchicalCrossEntropyLoss``, ``better_mistakes/trees.py``
``get_exponential_weighting``). Integer targets outside the taxonomy raise
``ValueError`` naming the argument and the class id (checked when
``validate_args=True``, the default; switch it off to avoid the host sync on GPU).
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hcast import _validation as V
from hcast.hierarchy.taxonomy import Taxonomy
from hcast.hierarchy.losses._common import (
    REDUCTIONS,
    FINE_CLASSES,
    _reduce,
    _level_maps,
)

__all__ = ["hxe_edge_weights", "hierarchical_cross_entropy", "HierarchicalCrossEntropyLoss"]


def hxe_edge_weights(taxonomy: Taxonomy, alpha: float = 0.1, normalize: bool = True) -> Tensor:
    r"""Weights of the HXE edges, one per level: the edge from a level-``l`` class to its parent.

    The weight of a node :math:`C` is :math:`\lambda(C) = \exp(-\alpha\, h(C))` where,
    as in the reference code (``get_exponential_weighting``), :math:`h(C)` is the
    node's *depth*: its number of edges from the root. A class at level ``l`` of a
    taxonomy with ``L`` levels has depth ``L - l`` (coarsest classes depth 1, fine
    classes depth ``L``). The paper writes :math:`h(C)` and calls it the height; its
    text ("errors related to nodes further away from the root receive a lower loss")
    and the code agree on the depth reading, which this function follows. With
    ``normalize=True`` (the reference's default) the weights are divided by the sum
    of :math:`\lambda` over *all* nodes of the tree, root included
    (:math:`1 + \sum_l n_l e^{-\alpha (L-l)}`).

    Args:
        taxonomy: the class tree.
        alpha: decay :math:`\alpha \ge 0`; larger values favour coarse information.
        normalize: divide by the total weight of the tree, as the reference does.

    Returns:
        (num_levels,) float64 tensor, finest level first.
    Raises:
        TypeError: ``taxonomy`` not a :class:`~hcast.hierarchy.Taxonomy`.
        ValueError: ``alpha`` not finite.
    """
    V.check_instance("taxonomy", taxonomy, Taxonomy)
    alpha = V.check_number("alpha", alpha)
    L = taxonomy.num_levels
    depth = torch.arange(L, 0, -1, dtype=torch.float64)  # level l -> depth L - l
    weights = torch.exp(-alpha * depth)
    if normalize:
        counts = torch.tensor(taxonomy.num_classes, dtype=torch.float64)
        weights = weights / (1.0 + (counts * weights).sum())
    return weights


def _hxe(logits: Tensor, targets: Tensor, level_maps: Tensor, edge_weights: Tensor) -> Tensor:
    # log P(class at level l) = logsumexp of the fine log-probabilities under it; in log
    # space the conditional log-probabilities stay finite where the reference's
    # probability ratios would underflow.
    logp = F.log_softmax(logits, dim=1)
    ancestors = level_maps[:, targets]  # (L, N) ids of the target's ancestors
    log_marginals = []
    for l in range(level_maps.shape[0]):
        under = level_maps[l][None, :] == ancestors[l][:, None]  # (N, num_fine)
        log_marginals.append(torch.logsumexp(logp.masked_fill(~under, float("-inf")), dim=1))
    log_marginals.append(torch.zeros_like(log_marginals[0]))  # the root has probability one
    w = edge_weights.to(logits.dtype)
    loss = torch.zeros_like(log_marginals[0])
    for l in range(level_maps.shape[0]):
        loss = loss - w[l] * (log_marginals[l] - log_marginals[l + 1])
    return loss


def hierarchical_cross_entropy(
    logits: Tensor,
    targets: Tensor,
    taxonomy: Taxonomy,
    alpha: float = 0.1,
    normalize: bool = True,
    reduction: str = "mean",
    validate_args: bool = True,
) -> Tensor:
    r"""Hierarchical cross-entropy (HXE) of Bertinetto et al., CVPR 2020, Eq. 5.

    The softmax of the fine logits gives :math:`p(y)`; the probability of a class
    :math:`C` at a coarser level is the sum over the fine classes under it. With
    :math:`C^{(0)}` the target fine class and :math:`C^{(l)}` its ancestor at level
    :math:`l` (:math:`C^{(L)}` the root)

    .. math::
        \mathcal{L}_{HXE} = -\sum_{l=0}^{L-1} \lambda(C^{(l)})
            \log \frac{p(C^{(l)})}{p(C^{(l+1)})},

    the weighted sum of the conditional log-probabilities of the path's edges, with
    :math:`\lambda` from :func:`hxe_edge_weights` (``exp(-alpha * depth)``, divided
    by the tree's total weight when ``normalize``). ``alpha=0, normalize=False`` is
    the flat cross-entropy (the sum telescopes). Values equal the reference
    ``HierarchicalCrossEntropyLoss(hierarchy, classes, get_weighting(hierarchy,
    "exponential", value=alpha))`` on the same tree, except where a probability
    underflows to 0 in float32: the reference then drops that edge's term, this
    function (computing in log space) keeps its true value.

    Args:
        logits: (N, num_fine) float fine-class logits (not probabilities).
        targets: (N,) int64 fine class ids.
        taxonomy: the class tree (levels finest first).
        alpha: decay of the edge weights; the paper uses 0.1 to 0.9.
        normalize: normalise the weights by the tree's total weight (reference default).
        reduction: ``"mean"`` (reference), ``"sum"`` or ``"none"`` ((N,) per sample).
        validate_args: check that the target ids lie in the taxonomy (a host sync); type
            and shape checks always run.

    Returns:
        Scalar loss, or (N,) with ``reduction="none"``.

    Raises:
        TypeError: non-float logits, non-integer targets, or no Taxonomy.
        ValueError: ``logits`` not (N, num_fine); ``targets`` not (N,) or (with
            ``validate_args``) holding a class id outside ``[0, num_fine)`` (the message
            names the id); an unknown ``reduction``.
    """
    V.check_instance("taxonomy", taxonomy, Taxonomy)
    V.check_choice("reduction", reduction, REDUCTIONS)
    V.check_logits("logits", logits, taxonomy.num_fine)
    V.check_labels("targets", targets, logits.shape[0], num_classes=taxonomy.num_fine if validate_args else None,
                   where=FINE_CLASSES)
    maps = _level_maps(taxonomy).to(logits.device)
    loss = _hxe(logits, targets.long(), maps, hxe_edge_weights(taxonomy, alpha, normalize).to(logits.device))
    return _reduce(loss, reduction)


class HierarchicalCrossEntropyLoss(nn.Module):
    """Module form of :func:`hierarchical_cross_entropy` (HXE), with the tree kept as buffers.

    Args:
        taxonomy: the class tree (levels finest first).
        alpha: decay of the edge weights ``exp(-alpha * depth)``.
        normalize: divide the weights by the tree's total weight (reference default).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        validate_args: check the target ids on every call (a host sync); type and shape
            checks always run.

    Shape:
        ``forward(logits (N, num_fine) float, targets (N,) int64) -> scalar`` (or (N,)).

    Example:
        >>> tax = Taxonomy([[0, 0, 1]])
        >>> loss = HierarchicalCrossEntropyLoss(tax, alpha=0.5)(torch.zeros(2, 3), torch.tensor([0, 2]))
    """

    def __init__(
        self,
        taxonomy: Taxonomy,
        alpha: float = 0.1,
        normalize: bool = True,
        reduction: str = "mean",
        validate_args: bool = True,
    ) -> None:
        super().__init__()
        V.check_instance("taxonomy", taxonomy, Taxonomy)
        V.check_choice("reduction", reduction, REDUCTIONS)
        self.num_fine = taxonomy.num_fine
        self.alpha = float(alpha)
        self.normalize = normalize
        self.reduction = reduction
        self.validate_args = validate_args
        self.register_buffer("level_maps", _level_maps(taxonomy), persistent=False)
        self.register_buffer("edge_weights", hxe_edge_weights(taxonomy, alpha, normalize), persistent=False)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        V.check_logits("logits", logits, self.num_fine)
        V.check_labels("targets", targets, logits.shape[0], num_classes=self.num_fine if self.validate_args else None,
                       where=FINE_CLASSES)
        return _reduce(_hxe(logits, targets.long(), self.level_maps, self.edge_weights), self.reduction)

    def extra_repr(self) -> str:
        return f"num_fine={self.num_fine}, alpha={self.alpha}, normalize={self.normalize}, reduction={self.reduction!r}"
