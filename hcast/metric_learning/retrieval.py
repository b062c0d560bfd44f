"""Recall@K, the retrieval metric of deep metric learning.

For each query, Recall@K is 1 if at least one of its K nearest gallery items has
the query's label, else 0; the metric is the mean over queries. With no separate
gallery (the CUB-200 / Cars-196 / SOP protocol, and HIER's ``evaluate``), every
item is a query against all *other* items (leave-one-out). Definition as in Oh Song
et al., "Deep Metric Learning via Lifted Structured Feature Embedding" (CVPR 2016)
and HIER's ``hier/helpers.py`` ``get_recall``.

* :func:`recall_at_k`: functional form.
* :class:`RecallAtK`: a ``torchmetrics.Metric`` that gathers embeddings and labels
  over batches (and DDP processes, ``dist_reduce_fx="cat"``) and computes the
  leave-one-out Recall@K at the end. Needs torchmetrics (extra ``train``/``metric``).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from hcast import _validation as V
from hcast.metric_learning.hier import poincare_distance_matrix

__all__ = ["recall_at_k", "RecallAtK"]

_METRICS = ("cosine", "euclidean", "poincare")


def _check_ks(k: Union[int, Sequence[int]]) -> tuple[list[int], bool]:
    scalar = not isinstance(k, (list, tuple))
    ks = [k] if scalar else list(V.check_sequence("k", k, "one k >= 1 per recall"))
    return [V.check_int("k", v, 1) for v in ks], scalar


def _check_embeddings(x: Tensor, y: Tensor, arg: str, arg_labels: str) -> None:
    V.check_tensor(arg, x)
    V.check_floating(arg, x)
    V.check_rank(arg, x, 2, "(N, D)")
    V.check_labels(arg_labels, y, x.shape[0], arg)


def _similarity(q: Tensor, g: Tensor, metric: str, curvature: float) -> Tensor:
    if metric == "cosine":
        return F.normalize(q, dim=1) @ F.normalize(g, dim=1).t()
    if metric == "euclidean":
        return -torch.cdist(q, g)
    return -poincare_distance_matrix(q, g, curvature)


@torch.no_grad()
def recall_at_k(
    query: Tensor,
    query_labels: Tensor,
    gallery: Optional[Tensor] = None,
    gallery_labels: Optional[Tensor] = None,
    k: Union[int, Sequence[int]] = (1, 2, 4, 8),
    metric: str = "cosine",
    curvature: float = 0.1,
    chunk_size: int = 1024,
) -> Tensor:
    """Recall@K of a retrieval: share of queries with a same-label item among their K nearest.

    Args:
        query: (N, D) float query embeddings.
        query_labels: (N,) integer labels.
        gallery: (M, D) float gallery embeddings; ``None`` retrieves among the
            queries themselves, leaving each query out of its own results.
        gallery_labels: (M,) integer labels (required with ``gallery``).
        k: one K or a sequence of them (the CUB/Cars convention is 1, 2, 4, 8).
        metric: ``"cosine"`` (similarity of L2-normalised embeddings), ``"euclidean"``
            or ``"poincare"`` (geodesic distance in the ball of curvature
            ``-curvature``, for HIER's hyperbolic embeddings).
        curvature: ``c > 0`` for ``metric="poincare"``.
        chunk_size: queries per block, bounding memory to ``chunk_size * M`` scores.

    Returns:
        float32 tensor: a scalar for an int ``k``, else (len(k),), in ``[0, 1]``.
        Ties in similarity are broken by ``torch.topk``'s order.

    Raises:
        TypeError: embeddings not floating point tensors, labels not integer tensors,
            ``k`` not an int (or a list of ints).
        ValueError: bad shapes, a gallery without labels (or the reverse), an
            unknown metric, K below 1 or larger than the number of candidates, or no
            queries.
    """
    ks, scalar = _check_ks(k)
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}.")
    _check_embeddings(query, query_labels, "query", "query_labels")
    if (gallery is None) != (gallery_labels is None):
        raise ValueError("gallery and gallery_labels must be given together (or both left out for leave-one-out).")
    leave_one_out = gallery is None
    if leave_one_out:
        gallery, gallery_labels = query, query_labels
    else:
        _check_embeddings(gallery, gallery_labels, "gallery", "gallery_labels")
        if gallery.shape[1] != query.shape[1]:
            raise ValueError(f"query and gallery dimensions differ: {query.shape[1]} vs {gallery.shape[1]}.")
    n = query.shape[0]
    candidates = gallery.shape[0] - (1 if leave_one_out else 0)
    if n == 0:
        raise ValueError("query is empty; Recall@K needs at least one query.")
    if max(ks) > candidates:
        raise ValueError(f"k={max(ks)} exceeds the {candidates} gallery items each query can retrieve.")
    kmax = max(ks)
    hits = torch.zeros(len(ks), dtype=torch.float64, device=query.device)
    for start in range(0, n, chunk_size):
        q = query[start : start + chunk_size]
        sim = _similarity(q, gallery, metric, curvature)
        if leave_one_out:
            rows = torch.arange(q.shape[0], device=sim.device)
            sim[rows, rows + start] = float("-inf")
        nearest = sim.topk(kmax, dim=1).indices  # (n_chunk, kmax)
        match = gallery_labels[nearest] == query_labels[start : start + chunk_size, None]
        first = torch.where(match.any(1), match.float().argmax(1), torch.full_like(match[:, 0], kmax, dtype=torch.long))
        for i, kk in enumerate(ks):
            hits[i] += (first < kk).sum()
    out = (hits / n).to(torch.float32)
    return out[0] if scalar else out


try:
    from torchmetrics import Metric as _Metric
except ImportError:  # pragma: no cover - torchmetrics is in the "train"/"metric" extras
    _Metric = None


if _Metric is not None:

    class RecallAtK(_Metric):
        """Leave-one-out Recall@K over everything seen by :meth:`update` (torchmetrics).

        Embeddings and labels are kept (``dist_reduce_fx="cat"``, so gathered across
        DDP processes) and :func:`recall_at_k` runs in :meth:`compute`: every item is a
        query against all others, the CUB/Cars/SOP evaluation protocol.

        Args:
            k: one K or a sequence (default 1, 2, 4, 8).
            metric: ``"cosine"``, ``"euclidean"`` or ``"poincare"``.
            curvature: for ``"poincare"``.

        Example:
            >>> m = RecallAtK(k=(1, 2))
            >>> m.update(torch.randn(8, 4), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
            >>> m.compute().shape
            torch.Size([2])
        """

        is_differentiable = False
        higher_is_better = True
        full_state_update = False

        def __init__(
            self,
            k: Union[int, Sequence[int]] = (1, 2, 4, 8),
            metric: str = "cosine",
            curvature: float = 0.1,
            **kwargs: Any,
        ) -> None:
            super().__init__(**kwargs)
            _check_ks(k)
            if metric not in _METRICS:
                raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}.")
            self.k = k
            self.metric = metric
            self.curvature = curvature
            self.add_state("embeddings", default=[], dist_reduce_fx="cat")
            self.add_state("labels", default=[], dist_reduce_fx="cat")

        def update(self, embeddings: Tensor, labels: Tensor) -> None:  # type: ignore[override]
            """Add a batch: (B, D) float embeddings and (B,) integer labels."""
            _check_embeddings(embeddings, labels, "embeddings", "labels")
            self.embeddings.append(embeddings.detach())
            self.labels.append(labels.detach())

        def compute(self) -> Tensor:
            """Recall@K over all updates: scalar for an int ``k``, else (len(k),)."""
            emb = self.embeddings if torch.is_tensor(self.embeddings) else torch.cat(self.embeddings)
            lab = self.labels if torch.is_tensor(self.labels) else torch.cat(self.labels)
            return recall_at_k(emb, lab, k=self.k, metric=self.metric, curvature=self.curvature)

else:  # pragma: no cover

    class RecallAtK:  # type: ignore[no-redef]
        """Placeholder: :class:`RecallAtK` needs torchmetrics (``pip install 'hcast[train]'``)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise ImportError("RecallAtK needs torchmetrics: pip install 'hcast[train]' (or torchmetrics).")
