"""hcast.train.segmentation's loop on GarmentScenes (real photos and garments)."""
from __future__ import annotations

import pytest
import timm
import torch

import hcast  # noqa: F401
from hcast.data.garment_scenes import GarmentScenes
from hcast.models.segmentation_heads import CASTSegmenter
from hcast.ops import superpixels
from hcast.train.segmentation import SegmentationConfig, SegmentationTensors, evaluate_segmentation, finetune_segmentation


@pytest.fixture(scope="module")
def data():
    scenes = GarmentScenes("train", 8, 32, seed=1)
    images, labels = scenes.tensors()
    return SegmentationTensors(images, superpixels(images, num_segments=25, method="seeds"), labels, flip=True)


def test_loss_falls_and_metric_is_computed(data):
    torch.manual_seed(0)
    encoder = timm.create_model("cast_seg_tiny", num_classes=0, embed_dim=96, depths=(1, 1, 1, 1),
                                num_clusters=(16, 8, 4, 2), img_size=32)
    model = CASTSegmenter(encoder, 11)
    config = SegmentationConfig(steps=8, batch_size=8, lr=2e-3, log_every=1, time_budget_s=1e6, budget_clock="cpu")
    result = finetune_segmentation(model, data, config, log=None)
    losses = [loss for _, loss in result["losses"]]
    assert result["steps"] == 8 and losses[-1] < 0.9 * losses[0], losses
    metric = evaluate_segmentation(model, SegmentationTensors(data.images, data.segments, data.labels), 11)
    assert int(metric.compute()["confusion_matrix"].sum()) == (data.labels != 255).sum()


def test_bad_settings(data):
    model = CASTSegmenter(timm.create_model("cast_seg_tiny", num_classes=0), 11)
    with pytest.raises(ValueError, match="optimizer"):
        finetune_segmentation(model, data, SegmentationConfig(optimizer="lamb"), log=None)
    with pytest.raises(ValueError, match="budget_clock"):
        finetune_segmentation(model, data, SegmentationConfig(budget_clock="gpu"), log=None)
    with pytest.raises(ValueError, match="must agree"):
        SegmentationTensors(data.images, data.segments[:2], data.labels)
