"""Semantic segmentation metrics from one dataset-level confusion matrix.

Per-class IoU = TP / (TP + FP + FN) over every pixel of the dataset (not averaged per
image), with pixels whose target is ``ignore_index`` left out. The mean over classes has
two conventions, both named here because papers use both:

* ``'mmseg'`` (MMSegmentation's ``mean_iou``, the ADE20K / Pascal Context numbers of
  CAST through Segmenter): classes whose union is empty (absent from both targets and
  predictions) get IoU NaN and are left out of the mean (``nanmean``).
* ``'spml'`` (SPML's ``pyscripts/benchmark/benchmark_by_mIoU.py``, CAST's VOC numbers):
  ``TP / (union + 1e-12)`` for every class, an empty class counts as 0, the mean divides by
  the number of classes.

The two agree whenever every class occurs. :class:`SegmentationIoU` keeps only the
summed confusion matrix (``dist_reduce_fx="sum"``), so it is exact under DDP; it and the
functional :func:`segmentation_confusion_matrix` share one update.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from hcast import _validation as V

__all__ = ["segmentation_confusion_matrix", "iou_from_confusion_matrix", "mean_iou", "SegmentationIoU",
           "MIOU_CONVENTIONS"]

MIOU_CONVENTIONS = ("mmseg", "spml")

try:  # torchmetrics is an optional dependency (extra "train")
    from torchmetrics import Metric as _Metric

    _TORCHMETRICS_AVAILABLE = True
except ImportError:  # pragma: no cover - exercised only without torchmetrics
    _Metric = object
    _TORCHMETRICS_AVAILABLE = False


def segmentation_confusion_matrix(preds: torch.Tensor, target: torch.Tensor, num_classes: int,
                                  ignore_index: Optional[int] = 255, validate_args: bool = True) -> torch.Tensor:
    """Confusion matrix of per-pixel labels: rows are targets, columns predictions.

    Args:
        preds (Tensor[B, H, W] int64 labels or Tensor[B, K, H, W] float scores).
        target (Tensor[B, H, W], int64): class ids in ``[0, num_classes)`` or ``ignore_index``.
        num_classes: K.
        ignore_index: target value that is not scored (255 for VOC; ADE20K's label 0 after
            :class:`hcast.data.ADE20K` maps it to 255).
        validate_args: check value ranges (a host sync).

    Returns:
        Tensor[K, K], int64.

    Raises:
        TypeError: ``preds`` or ``target`` not a tensor, ``target`` (or label ``preds``)
            not integer.
        ValueError: shapes that differ, or (``validate_args``) targets or predictions
            outside ``[0, K)`` other than ``ignore_index``.
    """
    V.check_tensor("preds", preds)
    V.check_tensor("target", target)
    V.check_integer("target", target)
    if preds.is_floating_point():
        V.check_rank("preds", preds, 4, "(B, K, H, W) scores")
        preds = preds.argmax(dim=1)
    V.check_integer("preds", preds)
    if preds.shape != target.shape:
        raise ValueError(f"preds and target must have the same (B, H, W) shape, got {tuple(preds.shape)} and "
                         f"{tuple(target.shape)}.")
    target = target.long().reshape(-1)
    preds = preds.long().reshape(-1)
    keep = target != ignore_index if ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
    target, preds = target[keep], preds[keep]
    if validate_args and target.numel():
        if int(target.min()) < 0 or int(target.max()) >= num_classes:
            raise ValueError(f"target holds class ids outside [0, {num_classes}) (and not ignore_index="
                             f"{ignore_index}): range [{int(target.min())}, {int(target.max())}]; check the "
                             f"dataset's label encoding or num_classes.")
        if int(preds.min()) < 0 or int(preds.max()) >= num_classes:
            raise ValueError(f"preds hold class ids outside [0, {num_classes}): range [{int(preds.min())}, "
                             f"{int(preds.max())}].")
    return torch.bincount(target * num_classes + preds, minlength=num_classes * num_classes).view(
        num_classes, num_classes)


def iou_from_confusion_matrix(confmat: torch.Tensor, convention: str = "mmseg") -> torch.Tensor:
    """Per-class IoU (K,) float64 in [0, 1] from a (K, K) confusion matrix (rows targets).

    ``'mmseg'``: NaN where the union is empty; ``'spml'``: ``TP / (union + 1e-12)`` (0 there)."""
    V.check_choice("convention", convention, MIOU_CONVENTIONS)
    confmat = confmat.to(torch.float64)
    tp = confmat.diagonal()
    union = confmat.sum(0) + confmat.sum(1) - tp
    if convention == "spml":
        return tp / (union + 1e-12)
    return tp / union  # 0 / 0 = NaN for classes in neither targets nor predictions


def mean_iou(confmat: torch.Tensor, convention: str = "mmseg") -> torch.Tensor:
    """Mean IoU (0-d float64, in [0, 1]): ``nanmean`` of the per-class IoU (``'mmseg'``) or
    its sum over all K classes / K (``'spml'``)."""
    iou = iou_from_confusion_matrix(confmat, convention)
    return iou.nanmean() if convention == "mmseg" else iou.sum() / iou.numel()


class SegmentationIoU(_Metric):
    """Dataset-level per-class IoU and mIoU as a torchmetrics ``Metric`` (DDP-exact).

    Args:
        num_classes: K.
        ignore_index: target value left out (255).
        convention: ``'mmseg'`` or ``'spml'`` (module docstring).
        class_names: optional names for :meth:`table`.

    ``update(preds, target)`` with (B, H, W) labels or (B, K, H, W) scores; ``compute()``
    returns ``{'miou', 'iou' (K,), 'pixel_accuracy', 'confusion_matrix'}``.
    """

    full_state_update = False

    def __init__(self, num_classes: int, ignore_index: Optional[int] = 255, convention: str = "mmseg",
                 class_names: Optional[list] = None, validate_args: bool = True, **kwargs: Any) -> None:
        if not _TORCHMETRICS_AVAILABLE:
            raise ImportError("SegmentationIoU needs torchmetrics; pip install hcast[train]. "
                              "segmentation_confusion_matrix and mean_iou work without it.")
        super().__init__(**kwargs)
        V.check_choice("convention", convention, MIOU_CONVENTIONS)
        self.num_classes, self.ignore_index, self.convention = num_classes, ignore_index, convention
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        self.validate_args = validate_args
        self.add_state("confmat", default=torch.zeros(num_classes, num_classes, dtype=torch.int64),
                       dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        self.confmat += segmentation_confusion_matrix(preds, target, self.num_classes, self.ignore_index,
                                                      self.validate_args).to(self.confmat.device)

    def compute(self) -> Dict[str, torch.Tensor]:
        confmat = self.confmat
        total = confmat.sum().clamp(min=1).to(torch.float64)
        return dict(miou=mean_iou(confmat, self.convention), iou=iou_from_confusion_matrix(confmat, self.convention),
                    pixel_accuracy=confmat.diagonal().sum() / total, confusion_matrix=confmat)

    def table(self) -> str:
        """Per-class IoU and the mean, in percent, one line each."""
        out = self.compute()
        width = max(len(n) for n in self.class_names)
        lines = [f"{name:<{width}}  {100 * float(v):5.1f}" for name, v in zip(self.class_names, out["iou"])]
        lines.append(f"mIoU ({self.convention}): {100 * float(out['miou']):.1f}")
        return "\n".join(lines)
