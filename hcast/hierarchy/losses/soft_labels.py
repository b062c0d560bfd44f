"""Soft labels of "Making Better Mistakes" (Bertinetto et al., CVPR 2020, Eq. 6).

* :func:`soft_labels`: the (num_fine, num_fine) target matrix that puts mass on
  classes close to the true class in the taxonomy.
* :func:`soft_label_cross_entropy` / :class:`SoftLabelCrossEntropyLoss`: cross-entropy
  against those targets.

Source (read, not copied): ``github:fiveai/making-better-mistakes``
(``better_mistakes/model/labels.py`` ``make_all_soft_labels``). Integer targets
outside the taxonomy raise ``ValueError`` naming the argument and the class id
(checked when ``validate_args=True``, the default).
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
)

__all__ = ["soft_labels", "soft_label_cross_entropy", "SoftLabelCrossEntropyLoss"]


def soft_labels(taxonomy: Taxonomy, beta: float = 10.0) -> Tensor:
    r"""Soft-label matrix of Bertinetto et al. (CVPR 2020, Eq. 6): row ``t`` is the target for class ``t``.

    .. math::
        y_t(c) = \frac{\exp(-\beta\, d(t, c) / d_{max})}{\sum_{c'} \exp(-\beta\, d(t, c') / d_{max})}

    with :math:`d` the height of the lowest common ancestor
    (:meth:`Taxonomy.lca_height_matrix`, the paper's mistake severity) and
    :math:`d_{max}` its maximum over all pairs, the normalisation of the reference
    ``make_all_soft_labels``. (The reference stores the transposed matrix and reads
    column ``t``; the matrix is symmetric in :math:`d`, so row ``t`` here equals
    their column ``t``.) Larger ``beta`` is closer to one-hot; the paper uses 4 to 30.

    Args:
        taxonomy: the class tree.
        beta: hardness :math:`\beta` (finite).

    Returns:
        (num_fine, num_fine) float32 tensor whose rows sum to one.

    Raises:
        TypeError: ``taxonomy`` not a :class:`~hcast.hierarchy.Taxonomy`.
        ValueError: ``beta`` not finite.
    """
    V.check_instance("taxonomy", taxonomy, Taxonomy)
    beta = V.check_number("beta", beta)
    dist = taxonomy.lca_height_matrix().to(torch.float64)
    d_max = dist.max()
    if d_max > 0:  # a one-class taxonomy has only zero distances
        dist = dist / d_max
    return torch.softmax(-beta * dist, dim=1).to(torch.float32)


def _soft_ce(logits: Tensor, targets: Tensor, matrix: Tensor) -> Tensor:
    return -(matrix.to(logits.dtype)[targets] * F.log_softmax(logits, dim=1)).sum(dim=1)


def soft_label_cross_entropy(
    logits: Tensor,
    targets: Tensor,
    taxonomy: Taxonomy,
    beta: float = 10.0,
    reduction: str = "mean",
    validate_args: bool = True,
) -> Tensor:
    r"""Cross-entropy against the soft labels :func:`soft_labels` of the targets.

    :math:`\mathcal{L} = -\sum_c y_t(c) \log \operatorname{softmax}(z)_c`. The
    reference trains with ``nn.KLDivLoss()`` (``reduction="mean"``, i.e. divided by
    ``N * num_fine``) on the log-softmax; that equals ``(this - H(y_t)) / num_fine``
    averaged over the batch: the same minimiser and gradients up to the constant
    factor ``num_fine``.

    Args:
        logits: (N, num_fine) float fine-class logits.
        targets: (N,) int64 fine class ids.
        taxonomy: the class tree.
        beta: hardness of the soft labels.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        validate_args: check that the target ids lie in the taxonomy (a host sync); type and
            shape checks always run.

    Raises:
        TypeError: ``taxonomy`` not a :class:`~hcast.hierarchy.Taxonomy`, ``logits`` not a
            floating tensor, ``targets`` not an integer tensor.
        ValueError: an unknown ``reduction``, bad shapes, a non-finite ``beta``, or (with
            ``validate_args``) a target id outside ``[0, num_fine)`` (named in the message).
    """
    V.check_choice("reduction", reduction, REDUCTIONS)
    matrix = soft_labels(taxonomy, beta)
    V.check_logits("logits", logits, taxonomy.num_fine)
    V.check_labels("targets", targets, logits.shape[0], num_classes=taxonomy.num_fine if validate_args else None,
                   where=FINE_CLASSES)
    matrix = matrix.to(logits.device)
    return _reduce(_soft_ce(logits, targets.long(), matrix), reduction)


class SoftLabelCrossEntropyLoss(nn.Module):
    """Module form of :func:`soft_label_cross_entropy`; the soft-label matrix is a buffer.

    Args:
        taxonomy: the class tree.
        beta: hardness of the soft labels (larger: closer to one-hot).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        validate_args: check the target ids on every call (a host sync); type and shape
            checks always run.

    Shape:
        ``forward(logits (N, num_fine) float, targets (N,) int64) -> scalar`` (or (N,)).
        ``soft_targets(targets (N,) int64) -> (N, num_fine)`` float rows of :func:`soft_labels`.
    """

    def __init__(
        self, taxonomy: Taxonomy, beta: float = 10.0, reduction: str = "mean", validate_args: bool = True
    ) -> None:
        super().__init__()
        V.check_choice("reduction", reduction, REDUCTIONS)
        self.num_fine = taxonomy.num_fine
        self.beta = float(beta)
        self.reduction = reduction
        self.validate_args = validate_args
        self.register_buffer("soft_labels", soft_labels(taxonomy, beta), persistent=False)

    def soft_targets(self, targets: Tensor) -> Tensor:
        """(N, num_fine) soft targets for (N,) int64 fine class ids."""
        V.check_labels("targets", targets, num_classes=self.num_fine if self.validate_args else None,
                       where=FINE_CLASSES)
        return self.soft_labels[targets.long()]

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        V.check_logits("logits", logits, self.num_fine)
        V.check_labels("targets", targets, logits.shape[0], num_classes=self.num_fine if self.validate_args else None,
                       where=FINE_CLASSES)
        return _reduce(_soft_ce(logits, targets.long(), self.soft_labels), self.reduction)

    def extra_repr(self) -> str:
        return f"num_fine={self.num_fine}, beta={self.beta}, reduction={self.reduction!r}"
