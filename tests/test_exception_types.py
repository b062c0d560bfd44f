"""One rule for exception types across hcast (issue 22), checked over every public op, loss,
metric and the CAST models: a wrong type or dtype raises ``TypeError``, a wrong value or shape
``ValueError``, and the message names the argument.

``CASES`` is the table: (id, the bad call, the exception type, a regular expression for the
argument named in the message). Each entry goes wrong in one way only, so the type tells which
kind of mistake it is. Inputs are tiny: the checks run before any computation.
"""
from __future__ import annotations

import functools

import pytest
import timm
import torch

import hcast  # noqa: F401  (registers the models with timm)
from hcast import _validation as V
from hcast.hierarchy import (
    FullPathAccuracy,
    HCASTLoss,
    HierarchicalCrossEntropyLoss,
    HierarchicalMetrics,
    HierarchicalMixup,
    LevelWeightedCrossEntropy,
    MistakeSeverity,
    SoftLabelCrossEntropyLoss,
    Taxonomy,
    TreeInconsistencyError,
    argmax_decode,
    average_hierarchical_distance,
    consistent_decode,
    full_path_accuracy,
    hierarchical_cross_entropy,
    hierarchical_precision_recall_f1,
    level_accuracy,
    mistake_severity,
    path_log_probs,
    soft_label_cross_entropy,
    tree_inconsistency_error,
    tree_path_kl,
)
from hcast.metric_learning import HIERLoss, recall_at_k
from hcast.ops import (
    SuperpixelTransform,
    enforce_connectivity,
    explained_variation,
    farthest_point_sampling,
    hierarchical_segmentation,
    max_superpixels,
    resize_segments,
    superpixel_pool,
    superpixels,
    torch_slic,
    upsampled_superpixel_pool,
)
from hcast.models.segmentation_heads import SoftmaxClassifier
from hcast.ops.segmentation_metrics import mean_iou, segmentation_confusion_matrix

TAX = Taxonomy([[0, 0, 1]])  # fine 0, 1 under coarse 0; fine 2 under coarse 1
LOGITS = [torch.zeros(2, 3), torch.zeros(2, 2)]
TARGETS = [torch.tensor([0, 2]), torch.tensor([0, 1])]
IMAGES = torch.rand(1, 3, 16, 16)
SEGMENTS = torch.zeros(1, 16, 16, dtype=torch.long)


@functools.lru_cache(maxsize=None)
def model(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, **kwargs).eval()


def cast(images, segments=None):
    with torch.no_grad():
        return model("cast_tiny")(images, segments)


def hcast_model(images, segments=None):
    with torch.no_grad():
        return model("hcast_tiny", level_classes=(3, 2))(images, segments)


def cast_seg(images, segments):
    with torch.no_grad():
        return model("cast_seg_tiny").forward_superpixels(images, segments)


def mixup(images, targets, segments=None):
    return HierarchicalMixup(level_classes=(3, 2))(images, targets, segments)


# (id, call, error, the argument the message names)
CASES = [
    # ---------------------------------------------------------------- ops
    ("superpixels-list", lambda: superpixels([[1, 2, 3]], 4), TypeError, "images"),
    ("superpixels-int32", lambda: superpixels(torch.zeros(1, 3, 16, 16, dtype=torch.int32), 4), TypeError, "images"),
    ("superpixels-3d", lambda: superpixels(torch.rand(3, 16, 16), 4), ValueError, "images"),
    ("superpixels-float-count", lambda: superpixels(IMAGES, 4.0, method="torch_slic"), TypeError, "num_segments"),
    ("superpixels-zero-count", lambda: superpixels(IMAGES, 0, method="torch_slic"), ValueError, "num_segments"),
    ("superpixels-method", lambda: superpixels(IMAGES, 4, method="quickshift"), ValueError, "method"),
    ("transform-uint8", lambda: SuperpixelTransform(4, "torch_slic")(torch.zeros(3, 8, 8, dtype=torch.uint8)),
     TypeError, "image"),
    ("transform-4d", lambda: SuperpixelTransform(4, "torch_slic")(IMAGES), ValueError, "image"),
    ("max-superpixels-float", lambda: max_superpixels(16.5, 16), TypeError, "height"),
    ("max-superpixels-zero", lambda: max_superpixels(0, 16), ValueError, "height"),
    ("torch-slic-uint8", lambda: torch_slic(torch.zeros(1, 3, 8, 8, dtype=torch.uint8)), TypeError, "images"),
    ("torch-slic-4-channels", lambda: torch_slic(torch.rand(1, 4, 8, 8)), ValueError, "images"),
    ("torch-slic-compactness", lambda: torch_slic(IMAGES, 4, compactness=0.0), ValueError, "compactness"),
    ("torch-slic-float-downsample", lambda: torch_slic(IMAGES, 4, downsample=1.5), TypeError, "downsample"),
    ("connectivity-float", lambda: enforce_connectivity(torch.zeros(1, 4, 4)), TypeError, "segments"),
    ("connectivity-2d", lambda: enforce_connectivity(torch.zeros(4, 4, dtype=torch.long)), ValueError, "segments"),
    ("ev-int-images", lambda: explained_variation(IMAGES.long(), SEGMENTS), TypeError, "images"),
    ("ev-float-segments", lambda: explained_variation(IMAGES, SEGMENTS.float()), TypeError, "segments"),
    ("ev-shape", lambda: explained_variation(IMAGES, SEGMENTS[:, :8]), ValueError, "segments"),
    ("pool-int-features", lambda: superpixel_pool(torch.zeros(1, 4, 4, 2, dtype=torch.long), SEGMENTS),
     TypeError, "features"),
    ("pool-float-segments", lambda: superpixel_pool(torch.zeros(1, 4, 4, 2), SEGMENTS.float()), TypeError, "segments"),
    ("pool-3d-features", lambda: superpixel_pool(torch.zeros(4, 4, 2), SEGMENTS), ValueError, "features"),
    ("pool-negative-id", lambda: superpixel_pool(torch.zeros(1, 4, 4, 2), -SEGMENTS - 1), ValueError, "segments"),
    ("resize-float-segments", lambda: resize_segments(SEGMENTS.float(), (4, 4)), TypeError, "segments"),
    ("resize-zero-size", lambda: resize_segments(SEGMENTS, (0, 4)), ValueError, r"size\[0\]"),
    ("upsampled-float-segments", lambda: upsampled_superpixel_pool(torch.zeros(1, 4, 4, 2), SEGMENTS.float()),
     TypeError, "segments"),
    ("upsampled-mode", lambda: upsampled_superpixel_pool(torch.zeros(1, 4, 4, 2), SEGMENTS, "nearest"),
     ValueError, "mode"),
    ("fps-int-points", lambda: farthest_point_sampling(torch.zeros(1, 4, 2, dtype=torch.long), 2), TypeError, "points"),
    ("fps-2d-points", lambda: farthest_point_sampling(torch.zeros(4, 2), 2), ValueError, "points"),
    ("fps-float-count", lambda: farthest_point_sampling(torch.zeros(1, 4, 2), 2.0), TypeError, "num_samples"),
    ("fps-too-many", lambda: farthest_point_sampling(torch.zeros(1, 4, 2), 5), ValueError, "num_samples"),
    ("hseg-tensor", lambda: hierarchical_segmentation(torch.zeros(1, 4, 2), SEGMENTS), TypeError, "assignments"),
    ("hseg-int-logits", lambda: hierarchical_segmentation([torch.zeros(1, 4, 2, dtype=torch.long)], SEGMENTS),
     TypeError, r"assignments\[0\]"),
    ("hseg-float-segments", lambda: hierarchical_segmentation([torch.zeros(1, 4, 2)], SEGMENTS.float()),
     TypeError, "segments"),
    ("hseg-4d", lambda: hierarchical_segmentation([torch.zeros(1, 4, 2, 1)], SEGMENTS), ValueError,
     r"assignments\[0\]"),
    ("confmat-float-target", lambda: segmentation_confusion_matrix(SEGMENTS, SEGMENTS.float(), 2), TypeError, "target"),
    ("confmat-shape", lambda: segmentation_confusion_matrix(SEGMENTS, SEGMENTS[:, :8], 2), ValueError, "preds"),
    ("miou-convention", lambda: mean_iou(torch.eye(2), "voc"), ValueError, "convention"),
    # ---------------------------------------------------------------- losses
    ("hcast-loss-tensor", lambda: HCASTLoss()(torch.zeros(2, 3), TARGETS), TypeError, "logits"),
    ("hcast-loss-int-logits", lambda: HCASTLoss()([LOGITS[0].long(), LOGITS[1]], TARGETS), TypeError, r"logits\[0\]"),
    ("hcast-loss-float-labels", lambda: HCASTLoss()(LOGITS, [TARGETS[0].float(), TARGETS[1]]), TypeError,
     r"targets\[0\]"),
    ("hcast-loss-label-range", lambda: HCASTLoss()(LOGITS, [TARGETS[0] + 1, TARGETS[1]]), ValueError, r"targets\[0\]"),
    ("hcast-loss-label-smoothing", lambda: HCASTLoss(label_smoothing=1.0), ValueError, "label_smoothing"),
    ("hcast-loss-str-kl-weight", lambda: HCASTLoss(kl_weight="0.5"), TypeError, "kl_weight"),
    ("tree-path-kl-levels", lambda: tree_path_kl(LOGITS, TARGETS[:1]), ValueError, "targets"),
    ("hxe-taxonomy", lambda: hierarchical_cross_entropy(LOGITS[0], TARGETS[0], {"parents": [[0, 0, 1]]}),
     TypeError, "taxonomy"),
    ("hxe-int-logits", lambda: hierarchical_cross_entropy(LOGITS[0].long(), TARGETS[0], TAX), TypeError, "logits"),
    ("hxe-float-targets", lambda: hierarchical_cross_entropy(LOGITS[0], TARGETS[0].float(), TAX), TypeError,
     "targets"),
    ("hxe-classes", lambda: hierarchical_cross_entropy(torch.zeros(2, 4), TARGETS[0], TAX), ValueError, "logits"),
    ("hxe-nan-alpha", lambda: HierarchicalCrossEntropyLoss(TAX, alpha=float("nan")), ValueError, "alpha"),
    ("hxe-reduction", lambda: HierarchicalCrossEntropyLoss(TAX, reduction="avg"), ValueError, "reduction"),
    ("hxe-module-float-targets", lambda: HierarchicalCrossEntropyLoss(TAX, validate_args=False)(
        LOGITS[0], TARGETS[0].float()), TypeError, "targets"),
    ("soft-float-targets", lambda: soft_label_cross_entropy(LOGITS[0], TARGETS[0].float(), TAX), TypeError, "targets"),
    ("soft-module-batch", lambda: SoftLabelCrossEntropyLoss(TAX)(LOGITS[0], TARGETS[0][:1]), ValueError, "targets"),
    ("level-weighted-int-logits", lambda: LevelWeightedCrossEntropy()([LOGITS[0].long(), LOGITS[1]], TARGETS),
     TypeError, r"logits\[0\]"),
    ("level-weighted-float-paths", lambda: LevelWeightedCrossEntropy()(LOGITS, torch.zeros(2, 2)), TypeError,
     "targets"),
    ("level-weighted-levels", lambda: LevelWeightedCrossEntropy()(LOGITS[:1], TARGETS), ValueError, "logits"),
    ("level-weighted-negative-weight", lambda: LevelWeightedCrossEntropy((1.0, -0.5)), ValueError,
     r"level_weights\[1\]"),
    ("level-weighted-coarse-logits", lambda: LevelWeightedCrossEntropy(coarse_logits="max"), ValueError,
     "coarse_logits"),
    ("hier-float-labels", lambda: HIERLoss(4, num_proxies=8)(torch.zeros(3, 4), torch.zeros(3)), TypeError, "labels"),
    ("hier-int-embeddings", lambda: HIERLoss(4, num_proxies=8)(torch.zeros(3, 4, dtype=torch.long),
                                                               torch.zeros(3, dtype=torch.long)),
     TypeError, "embeddings"),
    # ---------------------------------------------------------------- metrics and decoding
    ("fpa-tensor", lambda: full_path_accuracy(LOGITS[0], TARGETS), TypeError, "preds"),
    ("fpa-float-targets", lambda: full_path_accuracy(LOGITS, [t.float() for t in TARGETS]), TypeError,
     r"targets\[0\]"),
    ("fpa-float-ids", lambda: full_path_accuracy([t.float() for t in TARGETS], TARGETS), TypeError, r"preds\[0\]"),
    ("fpa-levels", lambda: full_path_accuracy(LOGITS[:1], TARGETS), ValueError, "preds"),
    ("level-acc-float-k", lambda: level_accuracy(LOGITS, TARGETS, top_k=1.5), TypeError, "top_k"),
    ("level-acc-float-targets", lambda: level_accuracy(LOGITS, [t.float() for t in TARGETS]), TypeError,
     r"targets\[0\]"),
    ("tice-taxonomy", lambda: tree_inconsistency_error(TARGETS, "tree"), TypeError, "taxonomy"),
    ("tice-classes", lambda: tree_inconsistency_error([torch.zeros(2, 4), LOGITS[1]], TAX), ValueError, r"preds\[0\]"),
    ("severity-taxonomy", lambda: mistake_severity(TARGETS, TARGETS, None), TypeError, "taxonomy"),
    ("severity-float-targets", lambda: mistake_severity(TARGETS, TARGETS[0].float(), TAX), TypeError, "targets"),
    ("ahd-float-k", lambda: average_hierarchical_distance(LOGITS, TARGETS, TAX, k=1.0), TypeError, "k"),
    ("ahd-k-range", lambda: average_hierarchical_distance(LOGITS, TARGETS, TAX, k=4), ValueError, "k"),
    ("hprf-ids-range", lambda: hierarchical_precision_recall_f1([TARGETS[0] + 1, TARGETS[1]], TARGETS, TAX),
     ValueError, r"preds\[0\]"),
    ("metrics-taxonomy", lambda: HierarchicalMetrics([[0, 0, 1]]), TypeError, "taxonomy"),
    ("metrics-float-top-k", lambda: HierarchicalMetrics(TAX, top_k=(1.0,)), TypeError, r"top_k\[0\]"),
    ("metrics-float-targets", lambda: HierarchicalMetrics(TAX).update(LOGITS, [t.float() for t in TARGETS]),
     TypeError, r"targets\[0\]"),
    ("fpa-metric-batch", lambda: FullPathAccuracy().update(LOGITS, [TARGETS[0][:1], TARGETS[1]]), ValueError,
     r"targets\[0\]"),
    ("tice-metric-levels", lambda: TreeInconsistencyError(TAX).update(LOGITS[:1]), ValueError, "preds"),
    ("severity-metric-float-ids", lambda: MistakeSeverity(TAX).update(TARGETS[0].float(), TARGETS[0]), TypeError,
     "preds"),
    ("recall-float-labels", lambda: recall_at_k(torch.zeros(4, 2), torch.zeros(4)), TypeError, "query_labels"),
    ("recall-float-k", lambda: recall_at_k(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), k=1.0), TypeError,
     "k"),
    ("argmax-decode-1d", lambda: argmax_decode([torch.zeros(2)]), ValueError, r"logits\[0\]"),
    ("path-log-probs-taxonomy", lambda: path_log_probs(LOGITS, TAX.num_classes), TypeError, "taxonomy"),
    ("consistent-decode-classes", lambda: consistent_decode([torch.zeros(2, 4), LOGITS[1]], TAX), ValueError,
     r"logits\[0\]"),
    ("mixup-float-targets", lambda: mixup(torch.rand(2, 3, 8, 8), [t.float() for t in TARGETS]), TypeError,
     r"targets\[0\]"),
    ("mixup-uint8-images", lambda: mixup(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), TARGETS), TypeError, "images"),
    ("mixup-float-segments", lambda: mixup(torch.rand(2, 3, 8, 8), TARGETS, torch.zeros(2, 8, 8)), TypeError,
     "segments"),
    ("mixup-label-range", lambda: mixup(torch.rand(2, 3, 8, 8), [TARGETS[0] + 5, TARGETS[1]]), ValueError,
     r"targets\[0\]"),
    # ---------------------------------------------------------------- models
    ("cast-float-num-classes", lambda: timm.create_model("cast_tiny", num_classes=10.0), TypeError, "num_classes"),
    ("cast-negative-num-classes", lambda: timm.create_model("cast_tiny", num_classes=-1), ValueError, "num_classes"),
    ("cast-float-max-tokens", lambda: timm.create_model("cast_tiny", max_tokens=64.0), TypeError, "max_tokens"),
    ("cast-zero-max-tokens", lambda: timm.create_model("cast_tiny", max_tokens=0), ValueError, "max_tokens"),
    ("hier-vit-float-num-classes", lambda: timm.create_model("hier_vit_small", num_classes=1.5), TypeError,
     "num_classes"),
    ("cast-list-images", lambda: cast(IMAGES.tolist()), TypeError, "images"),
    ("cast-uint8-images", lambda: cast(IMAGES.to(torch.uint8)), TypeError, "images"),
    ("cast-float64-images", lambda: cast(IMAGES.double(), SEGMENTS), TypeError, "images"),
    ("cast-3d-images", lambda: cast(IMAGES[0], SEGMENTS), ValueError, "images"),
    ("cast-float-segments", lambda: cast(IMAGES, SEGMENTS.float()), TypeError, "segments"),
    ("cast-list-segments", lambda: cast(IMAGES, SEGMENTS.tolist()), TypeError, "segments"),
    ("cast-2d-segments", lambda: cast(IMAGES, SEGMENTS[0]), ValueError, "segments"),
    ("cast-segment-id-range", lambda: cast(IMAGES, SEGMENTS + 256), ValueError, "segments"),
    ("hcast-float-segments", lambda: hcast_model(IMAGES, SEGMENTS.float()), TypeError, "segments"),
    ("hcast-size", lambda: hcast_model(torch.rand(1, 3, 12, 16)), ValueError, "images"),
    ("cast-seg-float-segments", lambda: cast_seg(IMAGES, SEGMENTS.float()), TypeError, "segments"),
    ("cast-seg-int-images", lambda: cast_seg(IMAGES.long(), SEGMENTS), TypeError, "images"),
    ("softmax-head-int-tokens", lambda: SoftmaxClassifier(8, 3)(torch.zeros(1, 4, 8, dtype=torch.long), SEGMENTS),
     TypeError, "tokens"),
    ("softmax-head-float-segments", lambda: SoftmaxClassifier(8, 3)(torch.zeros(1, 4, 8), SEGMENTS.float()),
     TypeError, "segments"),
    ("cast-seg-negative", lambda: cast_seg(IMAGES, SEGMENTS - 1), ValueError, "segments"),
]


@pytest.mark.parametrize("call, error, name", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_wrong_type_is_type_error_wrong_value_is_value_error(call, error, name):
    with pytest.raises(Exception) as info:
        call()
    # exactly the documented type: a TypeError is not accepted where a ValueError is due, or the reverse
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
    assert __import__("re").match(name, str(info.value)), f"the message does not start with {name!r}: {info.value}"


def test_the_table_has_unique_ids():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))


# ------------------------------------------------------------------ the vocabulary itself

@pytest.mark.parametrize("check, args, error", [
    (V.check_tensor, ("x", [1.0]), TypeError),
    (V.check_floating, ("x", torch.zeros(2, dtype=torch.long)), TypeError),
    (V.check_integer, ("x", torch.zeros(2)), TypeError),
    (V.check_integer, ("x", torch.zeros(2, dtype=torch.bool)), TypeError),
    (V.check_rank, ("x", torch.zeros(2), 2, "(N, C)"), ValueError),
    (V.check_non_empty, ("x", torch.zeros(0, 2), "(N, C)"), ValueError),
    (V.check_non_negative, ("x", torch.tensor([0, -1])), ValueError),
    (V.check_finite, ("x", torch.tensor([0.0, float("inf")])), ValueError),
    (V.check_scores, ("x", torch.tensor([[0.0, float("nan")]])), ValueError),
    (V.check_labels, ("x", torch.zeros(2)), TypeError),
    (V.check_labels, ("x", torch.zeros(2, 1, dtype=torch.long)), ValueError),
    (V.check_class_ids, ("x", torch.tensor([0, 3]), 3), ValueError),
    (V.check_logits, ("x", torch.zeros(2, 3, dtype=torch.long)), TypeError),
    (V.check_logits, ("x", torch.zeros(2, 3), 4), ValueError),
    (V.as_levels, (torch.zeros(2, 3), "x"), TypeError),
    (V.as_levels, ([], "x"), ValueError),
    (V.check_level_count, ("x", 2, 3), ValueError),
    (V.check_int, ("x", 1.0, 0), TypeError),
    (V.check_int, ("x", True, 0), TypeError),
    (V.check_int, ("x", -1, 0), ValueError),
    (V.check_number, ("x", "1.0"), TypeError),
    (V.check_number, ("x", True), TypeError),
    (V.check_number, ("x", float("inf")), ValueError),
    (V.check_number, ("x", 0.0, 0.0, None, True), ValueError),
    (V.check_number, ("x", 1.0, 0.0, 1.0, False, True), ValueError),
    (V.check_sequence, ("x", torch.zeros(2)), TypeError),
    (V.check_sequence, ("x", ()), ValueError),
    (V.check_choice, ("x", "c", ("a", "b")), ValueError),
    (V.check_instance, ("taxonomy", {}, Taxonomy), TypeError),
])
def test_each_check_raises_its_type_and_names_the_argument(check, args, error):
    with pytest.raises(error, match=r"^(x|taxonomy)\b"):
        check(*args)


def test_checks_pass_good_values_through():
    assert V.check_int("x", torch.tensor(3), 0) == 3
    assert V.check_int("x", __import__("numpy").int64(3), 0) == 3
    assert V.check_labels("x", torch.tensor([0, 2]), 2, num_classes=3).tolist() == [0, 2]
    assert V.check_instance("taxonomy", TAX, Taxonomy) is TAX
    assert V.check_number("x", 1, 0.0, 1.0) == 1.0 and isinstance(V.check_number("x", 1), float)
    assert "hcast.hierarchy.Taxonomy" in _message(lambda: V.check_instance("taxonomy", 1, Taxonomy))
    assert _message(lambda: V.check_class_ids("y", torch.tensor([0, 1, 5]), 3)).startswith("y[2] is 5, outside [0, 3)")


def _message(call) -> str:
    try:
        call()
    except (TypeError, ValueError) as err:
        return str(err)
    raise AssertionError("no error")
