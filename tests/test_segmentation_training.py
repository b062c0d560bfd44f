"""Segmentation fine-tuning through hcast.train (the segmentation task of finetune) on
GarmentScenes (real photos and Fashion-MNIST garments), and `hcast finetune` on it."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import hcast  # noqa: F401
from hcast.data.fashion_mnist import DEBIAN_FASHION_MNIST_DIR
from hcast.data.garment_scenes import GARMENT_SCENE_CLASSES, GarmentScenes
from hcast.models.segmentation_heads import CASTSegmenter
from hcast.ops import superpixels
from hcast.train import FinetuneConfig, PolyLR, SegmentationTask, SegmentationTensors, finetune, get_recipe
from hcast.train.segmentation import evaluate_segmentation, load_segmenter

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")]

TINY = dict(embed_dim=96, depths=(1, 1, 1, 1), num_clusters=(16, 8, 4, 2), img_size=32)


@pytest.fixture(scope="module")
def data():
    scenes = GarmentScenes("train", 8, 32, seed=1)
    images, labels = scenes.tensors()
    return SegmentationTensors(images, superpixels(images, num_segments=25, method="seeds"), labels, flip=True)


def _config(**changes):
    return get_recipe("garment-scenes").config.replace(
        **{"input_size": 32, "num_segments": 25, "time_budget": None, "device": "cpu", "workers": 0, **changes})


def test_loss_falls_and_metric_is_computed(data, tmp_path):
    torch.manual_seed(0)
    model = CASTSegmenter(timm.create_model("cast_seg_tiny", num_classes=0, **TINY), 11)
    task = SegmentationTask(11, list(GARMENT_SCENE_CLASSES), model_name="cast_seg_tiny")
    result = finetune(model, data, SegmentationTensors(data.images, data.segments, data.labels), task,
                      _config(steps=8, batch_size=8), output=tmp_path / "seg", model_args=TINY)
    losses = [record["train"]["loss"] for record in result.history]
    assert result.num_updates == 8 and len(losses) == 8 and losses[-1] < 0.9 * losses[0], losses
    # validated once, after the last update: the saved folder holds the final weights
    assert [("val" in r) for r in result.history] == [False] * 7 + [True] and result.best_epoch == 8
    metric = evaluate_segmentation(model, SegmentationTensors(data.images, data.segments, data.labels), 11)
    assert int(metric.compute()["confusion_matrix"].sum()) == (data.labels != 255).sum()
    assert result.metrics["miou"] == pytest.approx(float(metric.compute()["miou"]))
    loaded, names = load_segmenter(str(tmp_path / "seg"))
    assert names == list(GARMENT_SCENE_CLASSES)
    x, s = data.images[:2], data.segments[:2]
    torch.testing.assert_close(loaded(x, s), model.eval()(x, s))


def test_poly_schedule_matches_the_recipe_formula():
    # warm-up lr * (t + 1) / warmup, then lr * (1 - t / total) ** 0.9, the head at its lr_scale
    params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))]
    optimizer = torch.optim.SGD([dict(params=params[:1]), dict(params=params[1:], lr_scale=10.0)], lr=3e-3)
    scheduler = PolyLR(optimizer, t_initial=100, power=0.9, warmup_t=10)
    for t in (0, 4, 9, 10, 50, 99, 100):
        scheduler.step_update(t)
        want = 3e-3 * (t + 1) / 10 if t < 10 else 3e-3 * max(0.0, 1 - t / 100) ** 0.9
        assert math.isclose(optimizer.param_groups[0]["lr"], want, rel_tol=1e-12)
        assert math.isclose(optimizer.param_groups[1]["lr"], 10 * want, rel_tol=1e-12)


def test_recipes_and_bad_settings(data):
    voc = get_recipe("cast-seg-voc").config
    assert (voc.task, voc.steps, voc.batch_size, voc.input_size, voc.opt, voc.sched, voc.lr, voc.weight_decay) == \
        ("segmentation", 30000, 4, 512, "momentum", "poly", 3e-3, 1e-4)
    ade = get_recipe("cast-seg-ade20k").config
    assert (ade.epochs, ade.steps, ade.batch_size, ade.input_size, ade.opt, ade.sched, ade.lr) == \
        (64, None, 8, 512, "momentum", "poly", 1e-3)
    with pytest.raises(ValueError, match="budget_clock"):
        FinetuneConfig(budget_clock="gpu")
    with pytest.raises(ValueError, match="task"):
        FinetuneConfig(task="detection")
    model = CASTSegmenter(timm.create_model("cast_seg_tiny", num_classes=0, **TINY), 11)
    with pytest.raises(ValueError, match="config.task is 'classification'"):
        finetune(model, data, data, SegmentationTask(11), FinetuneConfig())
    with pytest.raises(ValueError, match="12 classes"):
        finetune(model, data, data, SegmentationTask(12), _config())
    with pytest.raises(ValueError, match="must agree"):
        SegmentationTensors(data.images, data.segments[:2], data.labels)


def test_cli_finetunes_a_segmenter_that_hcast_segment_loads(tmp_path, capsys):
    from hcast.cli import main

    out = tmp_path / "run"
    assert main(["finetune", "--recipe", "garment-scenes", "--data", "garment-scenes", "--train-samples", "16",
                 "--val-samples", "8", "--input-size", "32", "--num-segments", "16", "--steps", "3",
                 "--batch-size", "8", "--time-budget", "none", "--device", "cpu", "--threads", "1",
                 "--model-kwargs", "embed_dim=32", "num_heads=2", "depths=[1,1,1,1]", "num_clusters=[8,4,2,2]",
                 "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "segmentation, 11 classes" in printed and "mIoU" in printed
    config = json.loads((out / "config.json").read_text())
    assert config["format"] == "hcast-segmenter" and config["class_names"] == list(GARMENT_SCENE_CLASSES)
    assert config["training"]["best_epoch"] == 2 and "val_miou" in config["training"]
    assert json.loads((out / "finetune_config.json").read_text())["steps"] == 3
    image = tmp_path / "scene.png"
    Image.fromarray(GarmentScenes("val", 1, 32, seed=3).images[0]).save(image)
    assert main(["segment", str(out), str(image), "--out", str(tmp_path / "segments")]) == 0
    labels = np.array(Image.open(tmp_path / "segments" / "scene_labels.png"))
    assert labels.shape == (32, 32) and labels.max() < 11


def test_a_resumed_segmentation_run_ends_where_an_uninterrupted_one_does(data, tmp_path):
    task = SegmentationTask(11, list(GARMENT_SCENE_CLASSES), model_name="cast_seg_tiny")
    val = SegmentationTensors(data.images, data.segments, data.labels)
    config = _config(steps=4, batch_size=8, warmup_steps=1)

    def run(output, resume=None, stop_after=None):
        torch.manual_seed(0)
        model = CASTSegmenter(timm.create_model("cast_seg_tiny", num_classes=0, **TINY), 11)
        return finetune(model, data, val, task, config, output=output, resume=resume, model_args=TINY,
                        on_epoch_end=(lambda record: record["epoch"] == stop_after) if stop_after else None)

    whole = run(tmp_path / "whole")
    first = run(tmp_path / "cut", stop_after=2)
    assert first.num_updates == 2 and first.stopped_early and first.best_epoch == 0  # not validated yet
    resumed = run(tmp_path / "cut", resume="auto")
    assert resumed.num_updates == whole.num_updates == 4
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert [r["train"]["loss"] for r in resumed.history] == [r["train"]["loss"] for r in whole.history]
    assert resumed.metrics["miou"] == whole.metrics["miou"]
