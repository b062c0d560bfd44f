"""Taxonomies, hierarchical losses, metrics, consistent decoding and hierarchical mixup.

Levels are ordered finest first everywhere. Where each concept lives:

* :mod:`~hcast.hierarchy.taxonomy`: the class tree, :class:`Taxonomy`.
* :mod:`~hcast.hierarchy.taxonomies`: taxonomies of datasets (Fashion-MNIST,
  FGVC-Aircraft, iNaturalist 2021, WordNet).
* :mod:`~hcast.hierarchy.losses`: one module per loss family (H-CAST's tree-path
  objective, HXE, soft labels, level-weighted cross-entropy).
* :mod:`~hcast.hierarchy.metrics`: FPA, TICE, mistake severity, hierarchical
  distance and precision/recall, functional and as torchmetrics ``Metric`` classes.
* :mod:`~hcast.hierarchy.decoding`: per-level argmax and consistent decoding.
* :mod:`~hcast.hierarchy.mixup`: mixup/cutmix with per-level targets.

``torchmetrics`` (extra ``train``) is needed only for the ``Metric`` classes; the
functional metrics and everything else here work without it.

The metric-learning names (``HIERLoss``, Recall@K, Poincaré helpers) live in
:mod:`hcast.metric_learning`.
"""
from hcast.hierarchy.taxonomy import TAXONOMY_SCHEMA_VERSION, Taxonomy
from hcast.hierarchy.taxonomies import (
    fashion_mnist_taxonomy,
    fgvc_aircraft_taxonomy,
    inat21_taxonomy,
    wordnet_taxonomy,
)
from hcast.hierarchy.losses import (
    HCASTLoss,
    HierarchicalCrossEntropyLoss,
    LevelWeightedCrossEntropy,
    SoftLabelCrossEntropyLoss,
    hierarchical_cross_entropy,
    hxe_edge_weights,
    level_targets_to_probs,
    ramp_weight,
    soft_label_cross_entropy,
    soft_labels,
    tree_path_kl,
)
from hcast.hierarchy.mixup import HierarchicalMixup
from hcast.hierarchy.decoding import argmax_decode, consistent_decode, path_log_probs
# The metrics import torchmetrics (and through it scipy and matplotlib): loaded when first
# used, so that `import hcast` stays light.
_LAZY_METRICS = ("FullPathAccuracy", "HierarchicalMetrics", "MistakeSeverity", "TreeInconsistencyError", "average_hierarchical_distance", "full_path_accuracy", "hierarchical_precision_recall_f1", "level_accuracy", "mistake_severity", "tree_inconsistency_error")


def __getattr__(name: str):
    if name in _LAZY_METRICS:
        from hcast.hierarchy import metrics

        return getattr(metrics, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "Taxonomy",
    "TAXONOMY_SCHEMA_VERSION",
    "fashion_mnist_taxonomy",
    "fgvc_aircraft_taxonomy",
    "inat21_taxonomy",
    "wordnet_taxonomy",
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
    "HierarchicalMixup",
    "argmax_decode",
    "consistent_decode",
    "path_log_probs",
    "level_accuracy",
    "full_path_accuracy",
    "tree_inconsistency_error",
    "mistake_severity",
    "average_hierarchical_distance",
    "hierarchical_precision_recall_f1",
    "HierarchicalMetrics",
    "FullPathAccuracy",
    "TreeInconsistencyError",
    "MistakeSeverity",
]

from hcast.hierarchy.benchmark_taxonomies import BENCHMARK_TAXONOMIES, benchmark_metadata, benchmark_taxonomy  # noqa: E402
__all__ += ["BENCHMARK_TAXONOMIES", "benchmark_metadata", "benchmark_taxonomy"]
