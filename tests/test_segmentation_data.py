"""Pascal VOC / ADE20K loaders on tiny copies of the native layouts, and the mIoU on a
hand-computed confusion matrix."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from hcast.data import create_dataset
from hcast.data.segmentation import VOC_CLASSES, SegmentationTransform
from segmentation_fixtures import make_voc, save_palette_png
from hcast.ops.segmentation_metrics import (
    SegmentationIoU,
    iou_from_confusion_matrix,
    mean_iou,
    segmentation_confusion_matrix,
)


@pytest.fixture()
def voc_root(tmp_path):
    voc, labels = make_voc(tmp_path)
    return tmp_path, voc, labels


def test_voc_reads_palette_indices(voc_root):
    root, _, labels = voc_root
    ds = create_dataset("voc2012", root, split="val")
    image, target = ds[0]
    assert len(ds) == 1 and image.shape == (3, 48, 64) and image.dtype == torch.float32
    assert target.dtype == torch.int64 and torch.equal(target, torch.from_numpy(labels.astype(np.int64)))
    assert ds.classes[15] == "person" and ds.num_classes == len(VOC_CLASSES) == 21


def test_voc_bad_labels_name_the_file(voc_root):
    root, voc, labels = voc_root
    label_path = voc / "SegmentationClass" / "2007_000032.png"
    rgb = np.stack([labels] * 3, -1)
    Image.fromarray(rgb).save(label_path)  # a colour rendering, not indices
    with pytest.raises(ValueError, match=r"2007_000032\.png.*mode 'RGB'"):
        create_dataset("voc2012", root, split="val")[0]
    save_palette_png(label_path, labels[:40])
    with pytest.raises(ValueError, match=r"2007_000032\.png.*64x40.*64x48"):
        create_dataset("voc2012", root, split="val")[0]
    bad = labels.copy()
    bad[0, 0] = 21
    save_palette_png(label_path, bad)
    with pytest.raises(ValueError, match=r"2007_000032\.png.*\[21\].*21 classes"):
        create_dataset("voc2012", root, split="val")[0]
    (voc / "JPEGImages" / "2007_000032.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="2007_000032.jpg"):
        create_dataset("voc2012", root, split="val")


def test_ade20k_ignores_label_zero(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    (base / "images" / "validation").mkdir(parents=True)
    (base / "annotations" / "validation").mkdir(parents=True)
    Image.fromarray(skdata.astronaut()[:32, :40]).save(base / "images" / "validation" / "ADE_val_00000001.jpg")
    labels = np.zeros((32, 40), np.uint8)
    labels[:, 10:] = 1
    labels[:, 30:] = 150
    Image.fromarray(labels, mode="L").save(base / "annotations" / "validation" / "ADE_val_00000001.png")
    ds = create_dataset("ade20k", tmp_path, split="val")
    _, target = ds[0]
    assert target[0, :10].eq(255).all() and target[0, 10:30].eq(0).all() and target[0, 30:].eq(149).all()


def test_train_transform_crops_pairs_consistently():
    image = Image.fromarray(skdata.chelsea()[:40, :50])
    labels = np.arange(40 * 50).reshape(40, 50) % 7
    x, y = SegmentationTransform(train=True, crop_size=64, scale_range=(1.0, 1.0))(image, labels)
    assert x.shape == (3, 64, 64) and y.shape == (64, 64)
    assert (y == 255).sum() == 64 * 64 - 40 * 50  # padding is ignored, nothing else


def test_miou_hand_computed_confusion_matrix():
    target = torch.tensor([[[0, 0, 1, 1], [2, 2, 255, 1]]])
    preds = torch.tensor([[[0, 1, 1, 1], [2, 0, 2, 1]]])
    confmat = segmentation_confusion_matrix(preds, target, num_classes=4)
    # rows = targets: class 0 -> (0, 1); class 1 -> 1, 1, 1; class 2 -> 2, 0; the 255 pixel left out
    assert confmat.tolist() == [[1, 1, 0, 0], [0, 3, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    # IoU: class 0: 1 / (2 + 2 - 1) = 1/3; class 1: 3 / (3 + 4 - 3) = 3/4; class 2: 1 / 2; class 3: empty
    iou = iou_from_confusion_matrix(confmat, "mmseg")
    torch.testing.assert_close(iou[:3], torch.tensor([1 / 3, 3 / 4, 1 / 2], dtype=torch.float64))
    assert torch.isnan(iou[3])
    torch.testing.assert_close(mean_iou(confmat, "mmseg"), torch.tensor((1 / 3 + 3 / 4 + 1 / 2) / 3, dtype=torch.float64))
    torch.testing.assert_close(mean_iou(confmat, "spml"), torch.tensor((1 / 3 + 3 / 4 + 1 / 2) / 4, dtype=torch.float64))


def test_miou_metric_equals_functional_and_merges_like_ddp():
    gen = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (4, 16, 16), generator=gen)
    target[:, :2] = 255
    logits = torch.randn(4, 5, 16, 16, generator=gen)
    whole = segmentation_confusion_matrix(logits, target, 5)
    single = SegmentationIoU(5)
    ranks = [SegmentationIoU(5), SegmentationIoU(5)]
    for i in range(4):
        single.update(logits[i:i + 1], target[i:i + 1])
        ranks[i % 2].update(logits[i:i + 1], target[i:i + 1])
    assert torch.equal(single.compute()["confusion_matrix"], whole)
    ranks[0].merge_state(ranks[1])  # the states' dist_reduce_fx, as DDP's sync applies it
    assert torch.equal(ranks[0].compute()["confusion_matrix"], whole)
    torch.testing.assert_close(ranks[0].compute()["miou"], mean_iou(whole))
    with pytest.raises(ValueError, match=r"outside \[0, 5\)"):
        single.update(logits[:1], torch.full((1, 16, 16), 7))
