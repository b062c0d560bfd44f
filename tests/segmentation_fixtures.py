"""Tiny copies of the segmentation datasets' native layouts, for the data and CLI tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data as skdata


def voc_palette() -> list:
    """Pascal VOC's colour map (bit-interleaved), 256 RGB triples flattened."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def save_palette_png(path: Path, labels: np.ndarray) -> None:
    img = Image.fromarray(labels.astype(np.uint8), mode="P")
    img.putpalette(voc_palette())
    img.save(path)


def make_voc(root: Path):
    """root/VOCdevkit/VOC2012 with one 48 x 64 val image (a person box, a 255 border);
    returns (the VOC2012 folder, its label map)."""
    voc = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    photo = skdata.coffee()[:48, :64]
    labels = np.zeros((48, 64), np.uint8)
    labels[10:30, 20:40] = 15  # person
    labels[10:30, 19] = 255  # border
    Image.fromarray(photo).save(voc / "JPEGImages" / "2007_000032.jpg")
    save_palette_png(voc / "SegmentationClass" / "2007_000032.png", labels)
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000032\n")
    return voc, labels
