"""What the benchmark loaders share: a list of (image file, fine label) plus a taxonomy.

Each loader (:mod:`hcast.data.breeds`, :mod:`~hcast.data.cub`, :mod:`~hcast.data.aircraft`,
:mod:`~hcast.data.inat`, :mod:`~hcast.data.imagenet`) reads its dataset's own files into
``samples`` and hands them to :class:`BenchmarkDataset`, which loads and transforms the
images as :class:`~hcast.data.image_folder.HierarchicalImageFolder` does.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS

from hcast.data.images import load_image
from hcast.hierarchy import Taxonomy

__all__ = ["BenchmarkDataset", "require_dir", "require_file", "image_files"]

PathLike = Union[str, Path]


def require_file(path: Path, dataset: str, layout: str) -> Path:
    """``path`` if it is a file, else ``FileNotFoundError`` naming it and the expected layout."""
    if not path.is_file():
        raise FileNotFoundError(f"{dataset}: {str(path)!r} not found; expected the layout {layout}")
    return path


def require_dir(path: Path, dataset: str, layout: str) -> Path:
    """``path`` if it is a folder, else ``FileNotFoundError`` naming it and the expected layout."""
    if not path.is_dir():
        raise FileNotFoundError(f"{dataset}: folder {str(path)!r} not found; expected the layout {layout}")
    return path


def image_files(folder: Path) -> List[Path]:
    """The image files of ``folder`` (torchvision's extensions, any case), sorted by name."""
    # os.scandir reads the file type with the name: no stat per file over ImageNet's 1.28M
    with os.scandir(folder) as entries:
        names = [e.name for e in entries if e.is_file() and e.name.lower().endswith(IMG_EXTENSIONS)]
    return [folder / name for name in sorted(names)]


class TaxonomyLabels:
    """What every labelled dataset of hcast.data exposes from ``self.taxonomy`` and
    ``self.targets`` (fine labels): class names and every level's labels."""

    taxonomy: Taxonomy
    targets: List[int]
    transform: Optional[Callable]
    target_transform: Optional[Callable]

    @property
    def classes(self) -> Optional[Tuple[str, ...]]:
        """Fine class names in label order (``None`` when the taxonomy has none)."""
        return self.taxonomy.names[0]

    @property
    def level_targets(self) -> torch.Tensor:
        """(N, num_levels) int64 labels of every image, finest first."""
        return self.taxonomy.paths()[torch.as_tensor(self.targets, dtype=torch.int64)]

    def _transformed(self, image, target: int):
        """``(transform(image), target_transform(target))``, each where set."""
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target


class BenchmarkDataset(TaxonomyLabels, Dataset):
    """Images listed with their fine labels, and the taxonomy of the labels.

    Args:
        samples: ``(image path, fine label)`` pairs; labels are fine class ids of ``taxonomy``.
        taxonomy: the class tree, levels finest first.
        transform: applied to each RGB PIL image (read by :func:`hcast.data.images.load_image`,
            which raises :class:`~hcast.data.images.UnreadableImageError` naming a file it
            cannot read).
        target_transform: applied to the fine label (an ``int``).

    ``dataset[i]`` returns ``(transform(image), fine_label)``; ``dataset.targets`` lists the
    fine labels and :attr:`level_targets` gives every level's, as
    :class:`~hcast.data.image_folder.HierarchicalImageFolder` does.
    """

    def __init__(self, samples: Sequence[Tuple[PathLike, int]], taxonomy: Taxonomy,
                 transform: Optional[Callable] = None, target_transform: Optional[Callable] = None) -> None:
        self.samples = [(str(p), int(t)) for p, t in samples]
        self.targets = [t for _, t in self.samples]
        self.taxonomy = taxonomy
        self.transform = transform
        self.target_transform = target_transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        return self._transformed(load_image(path), target)  # PIL RGB; an unreadable file is named

    def __repr__(self) -> str:
        extra = ", ".join(f"{k}={getattr(self, k)!r}" for k in ("split", "root") if hasattr(self, k))
        return f"{type(self).__name__}(num_samples={len(self)}, num_classes={self.taxonomy.num_classes}, {extra})"
