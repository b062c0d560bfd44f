"""Hierarchical classification losses, one module per family.

* :mod:`~hcast.hierarchy.losses.tree_path`: H-CAST's objective, per-level
  cross-entropy plus the tree-path KL term (:class:`HCASTLoss`, :func:`tree_path_kl`,
  :func:`level_targets_to_probs`).
* :mod:`~hcast.hierarchy.losses.hierarchical_cross_entropy`: HXE of "Making Better
  Mistakes" (:class:`HierarchicalCrossEntropyLoss`, :func:`hierarchical_cross_entropy`,
  :func:`hxe_edge_weights`).
* :mod:`~hcast.hierarchy.losses.soft_labels`: soft labels of the same paper
  (:func:`soft_labels`, :func:`soft_label_cross_entropy`, :class:`SoftLabelCrossEntropyLoss`).
* :mod:`~hcast.hierarchy.losses.level_weighted`: per-level weighted and scheduled
  cross-entropy (:class:`LevelWeightedCrossEntropy`, :func:`ramp_weight`).

The metric-learning regulariser HIER needs no taxonomy and lives in
:mod:`hcast.metric_learning`.
"""
from hcast.hierarchy.losses.hierarchical_cross_entropy import (
    HierarchicalCrossEntropyLoss,
    hierarchical_cross_entropy,
    hxe_edge_weights,
)
from hcast.hierarchy.losses.level_weighted import LevelWeightedCrossEntropy, ramp_weight
from hcast.hierarchy.losses.soft_labels import SoftLabelCrossEntropyLoss, soft_label_cross_entropy, soft_labels
from hcast.hierarchy.losses.tree_path import HCASTLoss, level_targets_to_probs, tree_path_kl

__all__ = [
    "HCASTLoss",
    "tree_path_kl",
    "level_targets_to_probs",
    "HierarchicalCrossEntropyLoss",
    "hierarchical_cross_entropy",
    "hxe_edge_weights",
    "SoftLabelCrossEntropyLoss",
    "soft_label_cross_entropy",
    "soft_labels",
    "LevelWeightedCrossEntropy",
    "ramp_weight",
]
