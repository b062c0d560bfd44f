"""Deep metric learning: the HIER regulariser, Poincare-ball helpers and Recall@K.

Nothing here needs a taxonomy: HIER *learns* a latent hierarchy of proxies.

* :mod:`~hcast.metric_learning.hier`: :class:`HIERLoss` (Kim, Jeong and Kwak,
  CVPR 2023), :func:`to_poincare` / :class:`ToPoincare`,
  :func:`poincare_distance_matrix`, :func:`mine_reciprocal_triplets`,
  :func:`hier_triplet_loss` (needs ``geoopt``, extra ``metric``).
* :mod:`~hcast.metric_learning.retrieval`: :func:`recall_at_k` and the torchmetrics
  :class:`RecallAtK`.
"""
from hcast.metric_learning.hier import (
    HIERLoss,
    ToPoincare,
    hier_triplet_loss,
    mine_reciprocal_triplets,
    poincare_distance_matrix,
    to_poincare,
)


def __getattr__(name: str):
    # retrieval's RecallAtK imports torchmetrics (and through it scipy and matplotlib):
    # loaded when first used, so that `import hcast` stays light
    if name in ("RecallAtK", "recall_at_k"):
        from hcast.metric_learning import retrieval

        return getattr(retrieval, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "HIERLoss",
    "ToPoincare",
    "to_poincare",
    "poincare_distance_matrix",
    "mine_reciprocal_triplets",
    "hier_triplet_loss",
    "RecallAtK",
    "recall_at_k",
]
