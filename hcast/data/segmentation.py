"""Semantic segmentation datasets in their native layouts, and their paired transform.

* :class:`PascalVOC` (``VOCdevkit/VOC2012``): 21 classes (background + 20), palette PNG
  labels read as palette indices (the colours are VOC's colour map, not the classes),
  255 = ignored (object borders). ``split='train_aug'`` reads the 10,582-image train+
  set (SBD's extra annotations) from DeepLab's ``SegmentationClassAug`` layout, as SPML
  (CAST's VOC code) trains on.
* :class:`ADE20K` (``ADEChallengeData2016``): 150 classes; label 0 ("other") is ignored
  and the rest shifted down by one (MMSegmentation's ``reduce_zero_label``, as Segmenter
  evaluates), so targets are ``[0, 150)`` plus 255.
* :class:`SegmentationTransform`: the same random scale / crop / flip on the image and
  its label map, then normalisation.

Items are ``(image, target)``: by default a (3, H, W) float tensor normalised with
ImageNet's mean/std and an (H, W) int64 tensor. Labels that cannot be right are errors
naming the file: an RGB label PNG (a colour rendering, not indices), a label map whose
size differs from its image, class ids beyond the dataset's classes.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from hcast.data._benchmark import require_dir, require_file

__all__ = ["PascalVOC", "ADE20K", "SegmentationDataset", "SegmentationTransform", "read_label_png",
           "VOC_CLASSES", "ADE20K_NUM_CLASSES", "IGNORE_INDEX"]

IGNORE_INDEX = 255
VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
ADE20K_NUM_CLASSES = 150
PathLike = Union[str, Path]


def read_label_png(path: PathLike, num_classes: int, image_size: Optional[Tuple[int, int]] = None,
                   ignore_index: int = IGNORE_INDEX, reduce_zero_label: bool = False) -> np.ndarray:
    """A label map as (H, W) int64 class ids.

    Palette (``P``) PNGs are read as palette indices, grayscale (``L``) ones as values.

    Args:
        path: the PNG.
        num_classes: ids must be ``< num_classes`` or ``ignore_index`` (after reduction).
        image_size: ``(width, height)`` of the image it labels (PIL's order), checked.
        reduce_zero_label: 0 -> ``ignore_index``, every other id - 1 (ADE20K).

    Raises:
        ValueError: an RGB(A) or other non-index PNG, a size that differs from the
            image's, or ids out of range; each names the file.
    """
    with Image.open(path) as img:
        if img.mode not in ("P", "L", "I;16", "I"):
            raise ValueError(f"{str(path)!r}: label PNGs must hold class indices (palette 'P' or grayscale 'L' mode), "
                             f"got mode {img.mode!r}: an RGB rendering of the labels cannot be read as classes. Use "
                             f"the dataset's original SegmentationClass PNGs.")
        if image_size is not None and img.size != tuple(image_size):
            raise ValueError(f"{str(path)!r}: label map is {img.size[0]}x{img.size[1]} (WxH) but its image is "
                             f"{image_size[0]}x{image_size[1]}; each label map must have its image's size.")
        labels = np.array(img, dtype=np.int64)
    if reduce_zero_label:
        labels = np.where(labels == 0, ignore_index, labels - 1)
    bad = (labels >= num_classes) & (labels != ignore_index)
    if bad.any():
        raise ValueError(f"{str(path)!r}: class ids {sorted(set(np.unique(labels[bad]).tolist()))[:10]} are beyond the "
                         f"{num_classes} classes of the dataset (ignored value {ignore_index}); check the dataset "
                         f"(or the head's num_classes).")
    return labels


class SegmentationTransform:
    """Paired transform of an image (PIL) and its (H, W) label map (numpy int64).

    Training (``train=True``): resize by a random factor in ``scale_range`` (bilinear image,
    nearest labels), pad to ``crop_size`` (image 0 after normalisation, labels
    ``ignore_index``), random crop, random horizontal flip. Evaluation: with ``resize``
    (int) the image is scaled so that its longer side is ``resize``, else kept at its size.
    Then ToTensor and normalisation with ``mean``/``std``.

    Returns ``(image (3, H, W) float32, target (H, W) int64)``.
    """

    def __init__(self, train: bool = False, crop_size: Optional[int] = None,
                 scale_range: Tuple[float, float] = (0.5, 2.0), flip: bool = True, resize: Optional[int] = None,
                 mean: Sequence[float] = IMAGENET_DEFAULT_MEAN, std: Sequence[float] = IMAGENET_DEFAULT_STD,
                 ignore_index: int = IGNORE_INDEX) -> None:
        self.train, self.crop_size, self.scale_range, self.flip = train, crop_size, scale_range, flip
        self.resize, self.ignore_index = resize, ignore_index
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __call__(self, image: Image.Image, target: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
        y = torch.from_numpy(np.asarray(target, dtype=np.int64))
        scale = None
        if self.train and self.scale_range is not None:
            scale = random.uniform(*self.scale_range)
        elif self.resize:
            scale = self.resize / max(x.shape[-2:])
        if scale is not None and scale != 1.0:
            size = (max(1, round(x.shape[-2] * scale)), max(1, round(x.shape[-1] * scale)))
            x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0].clamp(0, 1)
            y = F.interpolate(y[None, None].float(), size=size, mode="nearest")[0, 0].long()
        x = (x - self.mean) / self.std
        if self.train and self.crop_size:
            c = self.crop_size
            pad_h, pad_w = max(0, c - x.shape[-2]), max(0, c - x.shape[-1])
            if pad_h or pad_w:
                x = F.pad(x, (0, pad_w, 0, pad_h), value=0.0)
                y = F.pad(y, (0, pad_w, 0, pad_h), value=self.ignore_index)
            top, left = random.randint(0, x.shape[-2] - c), random.randint(0, x.shape[-1] - c)
            x, y = x[:, top:top + c, left:left + c], y[top:top + c, left:left + c]
        if self.train and self.flip and random.random() < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        return x.contiguous(), y.contiguous()


class SegmentationDataset(Dataset):
    """``(image path, label path)`` pairs read as ``transform(PIL image, labels)``.

    Args:
        samples: the pairs.
        num_classes: class count (ids checked against it).
        class_names: names in id order.
        transform: ``(PIL image, (H, W) int64 array) -> item``; default
            :class:`SegmentationTransform` (evaluation: normalised tensors).
        reduce_zero_label: ADE20K's label shift (see :func:`read_label_png`).
    """

    def __init__(self, samples: Sequence[Tuple[PathLike, PathLike]], num_classes: int,
                 class_names: Optional[Sequence[str]] = None, transform: Optional[Callable] = None,
                 reduce_zero_label: bool = False, ignore_index: int = IGNORE_INDEX) -> None:
        self.samples = [(Path(i), Path(t)) for i, t in samples]
        self.num_classes, self.ignore_index, self.reduce_zero_label = num_classes, ignore_index, reduce_zero_label
        self.classes = tuple(class_names) if class_names is not None else tuple(str(i) for i in range(num_classes))
        self.transform = transform if transform is not None else SegmentationTransform()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        image_path, label_path = self.samples[index]
        with Image.open(image_path) as img:
            image = img.convert("RGB")
        labels = read_label_png(label_path, self.num_classes, image.size, self.ignore_index, self.reduce_zero_label)
        return self.transform(image, labels)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_samples={len(self)}, num_classes={self.num_classes})"


_VOC_LAYOUT = ("ROOT/VOCdevkit/VOC2012/{JPEGImages/<id>.jpg, SegmentationClass/<id>.png, "
               "ImageSets/Segmentation/<split>.txt} (ROOT may also be VOCdevkit or VOC2012 itself); train_aug: "
               "SegmentationClassAug/<id>.png and ImageSets/Segmentation/train_aug.txt (DeepLab's SBD layout)")


def _voc_dir(root: Path) -> Path:
    for candidate in (root / "VOCdevkit" / "VOC2012", root / "VOC2012", root):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    return require_dir(root / "VOCdevkit" / "VOC2012" / "JPEGImages", "Pascal VOC 2012", _VOC_LAYOUT).parent


class PascalVOC(SegmentationDataset):
    """Pascal VOC 2012 segmentation (Everingham et al.), 21 classes, 255 ignored.

    Args:
        root: the folder holding ``VOCdevkit`` (or ``VOCdevkit`` / ``VOC2012`` itself).
        split: ``'train'`` (1,464), ``'val'`` (1,449; the published numbers),
            ``'trainval'``, or ``'train_aug'`` (10,582, SBD's train+).
        transform: see :class:`SegmentationDataset`.

    Raises:
        ValueError: an unknown split. FileNotFoundError: a missing list, image or label
            (named, with the layout).
    """

    SPLITS = ("train", "val", "trainval", "train_aug")

    def __init__(self, root: PathLike, split: str = "val", transform: Optional[Callable] = None) -> None:
        if split not in self.SPLITS:
            raise ValueError(f"split: Pascal VOC 2012 has {self.SPLITS}, got {split!r}.")
        voc = _voc_dir(Path(root))
        listing = require_file(voc / "ImageSets" / "Segmentation" / f"{split}.txt", "Pascal VOC 2012", _VOC_LAYOUT)
        label_dir = "SegmentationClassAug" if split == "train_aug" else "SegmentationClass"
        samples: List[Tuple[Path, Path]] = []
        for line in listing.read_text().split():
            samples.append((require_file(voc / "JPEGImages" / f"{line}.jpg", "Pascal VOC 2012", _VOC_LAYOUT),
                            require_file(voc / label_dir / f"{line}.png", "Pascal VOC 2012", _VOC_LAYOUT)))
        super().__init__(samples, len(VOC_CLASSES), VOC_CLASSES, transform)
        self.root, self.split = voc, split


_ADE_LAYOUT = ("ROOT/ADEChallengeData2016/{images,annotations}/{training,validation}/<name>.{jpg,png} "
               "(ROOT may also be ADEChallengeData2016 itself)")


class ADE20K(SegmentationDataset):
    """ADE20K SceneParsing (ADEChallengeData2016), 150 classes: label 0 ("other") is
    ignored (255) and ids 1..150 become 0..149, as MMSegmentation's ``reduce_zero_label``.

    Args:
        root: the folder holding ``ADEChallengeData2016`` (or that folder).
        split: ``'training'`` (20,210) or ``'validation'`` (2,000; the published numbers).

    Raises:
        ValueError: an unknown split. FileNotFoundError: missing folders or a label PNG.
    """

    SPLITS = ("training", "validation")

    def __init__(self, root: PathLike, split: str = "validation", transform: Optional[Callable] = None) -> None:
        if split not in self.SPLITS:
            raise ValueError(f"split: ADE20K has {self.SPLITS}, got {split!r}.")
        root = Path(root)
        base = root / "ADEChallengeData2016" if (root / "ADEChallengeData2016").is_dir() else root
        images = require_dir(base / "images" / split, "ADE20K", _ADE_LAYOUT)
        labels = require_dir(base / "annotations" / split, "ADE20K", _ADE_LAYOUT)
        samples = [(p, require_file(labels / f"{p.stem}.png", "ADE20K", _ADE_LAYOUT))
                   for p in sorted(images.glob("*.jpg"))]
        super().__init__(samples, ADE20K_NUM_CLASSES, None, transform, reduce_zero_label=True)
        self.root, self.split = base, split
