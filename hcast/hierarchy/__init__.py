"""Taxonomies, hierarchical losses, metrics and consistent decoding.

Levels are ordered finest first everywhere. ``torchmetrics`` (extra ``train``) is
needed only for the ``Metric`` classes of :mod:`hcast.hierarchy.metrics`; the
functional metrics and everything else here work without it.
"""
from hcast.hierarchy.taxonomy import TAXONOMY_SCHEMA_VERSION, Taxonomy
from hcast.hierarchy.datasets import (
    fashion_mnist_taxonomy,
    fgvc_aircraft_taxonomy,
    inat21_taxonomy,
    wordnet_taxonomy,
)
from hcast.hierarchy.losses import HCASTLoss, tree_path_kl
from hcast.hierarchy.mixup import HierarchicalMixup
from hcast.hierarchy.decoding import argmax_decode, consistent_decode
from hcast.hierarchy.metrics import (
    FullPathAccuracy,
    HierarchicalMetrics,
    MistakeSeverity,
    TreeInconsistencyError,
    average_hierarchical_distance,
    full_path_accuracy,
    hierarchical_precision_recall_f1,
    level_accuracy,
    mistake_severity,
    tree_inconsistency_error,
)

__all__ = [
    "Taxonomy",
    "TAXONOMY_SCHEMA_VERSION",
    "fashion_mnist_taxonomy",
    "fgvc_aircraft_taxonomy",
    "inat21_taxonomy",
    "wordnet_taxonomy",
    "HCASTLoss",
    "tree_path_kl",
    "HierarchicalMixup",
    "argmax_decode",
    "consistent_decode",
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

# Making Better Mistakes (HXE, soft labels, level-weighted CE), HIER and Recall@K.
from hcast.hierarchy.better_mistakes import (
    HierarchicalCrossEntropyLoss,
    LevelWeightedCrossEntropy,
    SoftLabelCrossEntropyLoss,
    hierarchical_cross_entropy,
    soft_label_cross_entropy,
    soft_labels,
)
from hcast.hierarchy.hier import HIERLoss, ToPoincare, poincare_distance_matrix, to_poincare
from hcast.hierarchy.retrieval import RecallAtK, recall_at_k

__all__ += [
    "HierarchicalCrossEntropyLoss",
    "LevelWeightedCrossEntropy",
    "SoftLabelCrossEntropyLoss",
    "hierarchical_cross_entropy",
    "soft_label_cross_entropy",
    "soft_labels",
    "HIERLoss",
    "ToPoincare",
    "poincare_distance_matrix",
    "to_poincare",
    "RecallAtK",
    "recall_at_k",
]

from hcast.hierarchy.benchmark_taxonomies import BENCHMARK_TAXONOMIES, benchmark_metadata, benchmark_taxonomy  # noqa: E402
__all__ += ["BENCHMARK_TAXONOMIES", "benchmark_metadata", "benchmark_taxonomy"]
