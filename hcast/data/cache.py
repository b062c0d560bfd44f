"""Superpixels computed once and kept in memory, for short training runs.

SEEDS on a 64 x 64 image costs about as much CPU time as a quarter of an H-CAST-tiny
training step on it, and a DataLoader worker computing it competes with the training
threads for the same cores. When the training augmentation is a horizontal flip only,
the superpixels of every image can be computed once, before the first epoch: the
superpixels of a flipped image are then the flipped superpixels (a valid segmentation
of the flipped image; not bit-equal to SEEDS run on it, since SEEDS scans in a fixed
direction). :class:`SuperpixelCache` does that.
"""
from __future__ import annotations

import sys
from typing import Any, Tuple

import torch
from torch.utils.data import DataLoader, Dataset

from hcast.data.images import collate_readable

__all__ = ["SuperpixelCache"]


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr is not None and bool(sys.stderr.isatty())
    except (AttributeError, OSError, ValueError):
        return False


class SuperpixelCache(Dataset):
    """A dataset of ``((image, superpixels), label)`` computed once and held in memory.

    Args:
        dataset: yields ``((image (3,H,W) float, superpixels (H,W) int), label)`` with a
            deterministic transform, e.g. a Fashion-MNIST or image-folder dataset with
            ``WithSuperpixels(create_transform(size, False), SuperpixelTransform(...))``.
            All images must have the same size.
        hflip: probability of flipping an image and its superpixels left-right together
            on each read (0.5 for training, 0 for evaluation).
        num_workers: DataLoader worker processes used to build the cache (0: this one).
        batch_size: images per worker batch while building.
        progress: show a tqdm bar while building.

    Memory: ``4 * 3 * H * W + 2 * H * W`` bytes per image (float32 image, int16 ids; int32
    when an image has 32,768 or more superpixels), 56 KiB at 64 x 64, 0.7 MiB at 224 x 224.

    ``cache[i]`` returns ``((image (3,H,W) float32, superpixels (H,W) int64), label int)``;
    ``cache.targets`` is the (N,) int64 label tensor.

    A dataset of plain ``(image, label)`` items (for a patch model such as Hier-ViT, which
    reads no superpixels) is cached the same way without superpixels: ``cache[i]`` is then
    ``(image, label)`` and ``cache.segments`` is ``None``.

    Raises:
        ValueError: when ``hflip`` is not a probability, when the dataset is empty, or
            when its items are not ``((image, superpixels), label)`` or ``(image, label)``
            of one size.
    """

    def __init__(self, dataset: Dataset, hflip: float = 0.5, num_workers: int = 0, batch_size: int = 256,
                 progress: bool = False) -> None:
        if not 0.0 <= hflip <= 1.0:
            raise ValueError(f"hflip: expected a probability in [0, 1], got {hflip}.")
        if len(dataset) == 0:  # type: ignore[arg-type]
            raise ValueError("dataset: expected at least one image to cache, got an empty dataset.")
        self.hflip = float(hflip)
        # items a SkipUnreadable dataset could not read (None) are left out, as in training
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                            collate_fn=collate_readable)
        if progress and _stderr_is_terminal():  # as hcast.train's bars: none without a terminal (or a stderr)
            from tqdm.auto import tqdm

            loader = tqdm(loader, desc="superpixels", leave=False, dynamic_ncols=True)
        images, segments, labels = [], [], []
        for batch in loader:
            if batch is None:  # no readable image in this batch
                continue
            inputs, label = batch
            if isinstance(inputs, torch.Tensor) and inputs.dim() == 4:
                image, segment = inputs, None  # a patch model's images, no superpixels
            elif isinstance(inputs, (list, tuple)) and len(inputs) == 2:
                image, segment = inputs
            else:
                raise ValueError(
                    "dataset: expected items ((image, superpixels), label), as WithSuperpixels gives, or "
                    f"(image, label) with a (3,H,W) image; got {type(inputs).__name__} inputs. For a "
                    "superpixel model wrap the transform: WithSuperpixels(transform, SuperpixelTransform(...))."
                )
            if segments and (segment is None) != (segments[0] is None):
                raise ValueError("dataset: expected every item with superpixels or every item without; got both.")
            if images and image.shape[1:] != images[0].shape[1:]:
                raise ValueError(
                    f"dataset: expected images of one size to cache, got {tuple(images[0].shape[1:])} and "
                    f"{tuple(image.shape[1:])}; resize them in the transform."
                )
            images.append(image.float())
            segments.append(segment)
            labels.append(torch.as_tensor(label, dtype=torch.int64))
        self.images = torch.cat(images)
        self.segments = None
        if segments[0] is not None:
            ids = torch.cat(segments)
            self.segments = ids.to(torch.int16 if int(ids.max()) < 2 ** 15 else torch.int32)
        self.targets = torch.cat(labels)

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def __getitem__(self, index: int) -> Tuple[Any, int]:
        flip = self.hflip > 0 and bool(torch.rand(()) < self.hflip)
        image = self.images[index].flip(-1) if flip else self.images[index]
        if self.segments is None:
            return image, int(self.targets[index])
        segments = self.segments[index].long()
        return (image, segments.flip(-1) if flip else segments), int(self.targets[index])

    def __repr__(self) -> str:
        return (f"SuperpixelCache(num_samples={len(self)}, image_size={tuple(self.images.shape[-2:])}, "
                f"hflip={self.hflip})")
