"""A small real-input semantic segmentation set: Fashion-MNIST garments on photographs.

No segmentation dataset ships with the machines this project is tested on, so this one is
built from real images that do: each image is a crop of one of scikit-image's sample
photographs (astronaut, coffee, chelsea, rocket, ...) with one to three Fashion-MNIST
garments pasted at random positions and scales (the garment's silhouette, pixels above a
threshold, is the mask; its grey levels are tinted with a random colour). Labels: 0 =
background, ``1 + c`` = Fashion-MNIST class ``c`` (11 classes).

Held out: the ``'val'`` split takes its garments from Fashion-MNIST's test images and its
backgrounds from the bottom 30% of every photograph, which no ``'train'`` crop overlaps
(train crops come from the top 70%). Deterministic for a given ``seed``.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from hcast.data.fashion_mnist import FASHION_MNIST_CLASSES, FashionMNIST

__all__ = ["GarmentScenes", "GARMENT_SCENE_CLASSES", "BACKGROUND_PHOTOS"]

GARMENT_SCENE_CLASSES = ("background",) + tuple(FASHION_MNIST_CLASSES)
#: scikit-image sample photographs used as backgrounds (colour, or grey made RGB)
BACKGROUND_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field",
                     "colorwheel", "retina", "coins", "camera", "grass", "gravel", "brick", "moon", "clock")
_TRAIN_FRACTION = 0.7


def _photos(max_side: int = 256) -> list:
    """The photographs as RGB uint8, the longer side at most ``max_side`` (crops are small)."""
    from skimage import data as skdata

    out = []
    for name in BACKGROUND_PHOTOS:
        img = Image.fromarray(np.asarray(getattr(skdata, name)())).convert("RGB")
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        out.append(np.asarray(img, dtype=np.uint8))
    return out


class GarmentScenes(Dataset):
    """Fashion-MNIST garments pasted on crops of photographs (see the module docstring).

    Args:
        split: ``'train'`` or ``'val'`` (held-out garments and background regions).
        num_images: images to generate.
        size: side of the square images (pixels).
        garments: ``(min, max)`` garments per image.
        scale: ``(min, max)`` garment side as a fraction of ``size``.
        seed: generator seed.
        fashion_root: Fashion-MNIST IDX folder (default: Debian's).

    ``dataset[i]`` is ``(image (H, W, 3) uint8 numpy, labels (H, W) int64 numpy)``;
    ``dataset.images`` / ``dataset.labels`` hold them all; ``dataset.classes`` the 11 names.
    """

    classes = GARMENT_SCENE_CLASSES
    num_classes = len(GARMENT_SCENE_CLASSES)

    def __init__(self, split: str = "train", num_images: int = 1000, size: int = 64,
                 garments: Tuple[int, int] = (1, 3), scale: Tuple[float, float] = (0.4, 0.75),
                 seed: int = 0, fashion_root: Optional[str] = None) -> None:
        if split not in ("train", "val"):
            raise ValueError(f"split: expected 'train' or 'val', got {split!r}.")
        self.split, self.size = split, size
        rng = np.random.default_rng([seed, 0 if split == "train" else 1])
        fashion = FashionMNIST(root=fashion_root, split="train" if split == "train" else "test")
        photos = _photos()
        images = np.empty((num_images, size, size, 3), np.uint8)
        labels = np.zeros((num_images, size, size), np.int64)
        for i in range(num_images):
            images[i] = self._background(photos[rng.integers(len(photos))], rng)
            for _ in range(rng.integers(garments[0], garments[1] + 1)):
                k = int(rng.integers(len(fashion)))
                self._paste(images[i], labels[i], fashion.images[k], int(fashion.targets[k]) + 1, scale, rng)
        self.images, self.labels = images, labels

    def _background(self, photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        height, width = photo.shape[:2]
        cut = int(height * _TRAIN_FRACTION)
        top, bottom = (0, cut) if self.split == "train" else (cut, height)
        side = int(min(bottom - top, width) * rng.uniform(0.5, 1.0))
        y = int(rng.integers(top, bottom - side + 1))
        x = int(rng.integers(0, width - side + 1))
        crop = Image.fromarray(photo[y:y + side, x:x + side])
        return np.asarray(crop.resize((self.size, self.size), Image.Resampling.LANCZOS), dtype=np.uint8)

    def _paste(self, image: np.ndarray, labels: np.ndarray, garment: np.ndarray, label: int,
               scale: Sequence[float], rng: np.random.Generator) -> None:
        side = max(8, int(self.size * rng.uniform(*scale)))
        g = np.asarray(Image.fromarray(garment).resize((side, side), Image.Resampling.BILINEAR), np.float32) / 255.0
        mask = g > 0.12
        tint = rng.uniform(0.35, 1.0, size=3)
        colour = (g[..., None] * tint * 255).clip(0, 255).astype(np.uint8)
        y = int(rng.integers(0, self.size - side + 1))
        x = int(rng.integers(0, self.size - side + 1))
        region = image[y:y + side, x:x + side]
        region[mask] = colour[mask]
        labels[y:y + side, x:x + side][mask] = label

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], self.labels[index]

    def tensors(self, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)) -> Tuple[torch.Tensor, torch.Tensor]:
        """All images as a normalised (N, 3, H, W) float32 tensor and labels (N, H, W) int64."""
        x = torch.from_numpy(self.images).permute(0, 3, 1, 2).float() / 255.0
        x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        return x, torch.from_numpy(self.labels)
