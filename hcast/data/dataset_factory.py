"""Build train / validation / test datasets from a ``--data`` argument.

``data`` is either the string ``"fashion-mnist"`` (the built-in loader,
:class:`~hcast.data.fashion_mnist.FashionMNIST`) or a folder of images laid out as
:class:`~hcast.data.image_folder.HierarchicalImageFolder` expects, optionally split
into ``train/`` and ``val/`` (or ``test/``) sub-folders.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from hcast.data.fashion_mnist import FashionMNIST, stratified_indices
from hcast.data.image_folder import HierarchicalImageFolder
from hcast.hierarchy import Taxonomy

__all__ = ["FASHION_MNIST", "is_fashion_mnist", "create_dataset", "create_train_val_datasets", "dataset_targets"]

FASHION_MNIST = "fashion-mnist"
_SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "validation", "test"), "test": ("test", "val", "validation")}


def is_fashion_mnist(data: Union[str, Path]) -> bool:
    """Whether ``data`` names the built-in Fashion-MNIST loader (``"fashion-mnist"``)."""
    return str(data).lower().replace("_", "-") in (FASHION_MNIST, "fashionmnist")


def dataset_targets(dataset: Dataset) -> torch.Tensor:
    """(N,) int64 fine labels of a dataset built here (also through ``Subset``)."""
    if isinstance(dataset, Subset):
        return dataset_targets(dataset.dataset)[torch.as_tensor(dataset.indices, dtype=torch.int64)]
    return torch.as_tensor(dataset.targets, dtype=torch.int64)


def _split_folder(root: Path, split: str) -> Optional[Path]:
    for name in _SPLIT_FOLDERS[split]:
        if (root / name).is_dir():
            return root / name
    return None


def _check_data_dir(data: Union[str, Path]) -> Path:
    root = Path(data)
    if not root.is_dir():
        raise ValueError(
            f"data: expected 'fashion-mnist' or a folder of images with one sub-folder per fine class, "
            f"got {str(data)!r} (no such folder)."
        )
    return root


def create_dataset(
    data: Union[str, Path],
    split: str = "test",
    transform: Optional[Callable] = None,
    taxonomy: Optional[Taxonomy] = None,
    num_samples: Optional[int] = None,
    seed: int = 0,
    data_root: Optional[Union[str, Path]] = None,
) -> Dataset:
    """One split of ``data`` for evaluation.

    Args:
        data: ``"fashion-mnist"`` or an image folder (``DIR`` itself, or its ``test/``
            or ``val/`` sub-folder when ``split`` names one that exists).
        split: ``"train"``, ``"val"`` or ``"test"``. Fashion-MNIST has ``train`` and
            ``test`` (``val`` reads ``test``).
        transform: PIL image -> tensor (or (image, segments)).
        taxonomy: required for an image folder (its fine names are the folder names).
        num_samples: optional class-balanced subset size (seeded by ``seed``).
        data_root: for Fashion-MNIST, a folder with the IDX files (default: Debian's).

    Returns:
        a ``Dataset`` of ``(transform(image), fine_label)``.

    Raises:
        ValueError: unknown ``split``, missing folder, or an image folder without a taxonomy.
    """
    if split not in _SPLIT_FOLDERS:
        raise ValueError(f"split: expected 'train', 'val' or 'test', got {split!r}.")
    if is_fashion_mnist(data):
        fm_split = "train" if split == "train" else "test"
        dataset: Dataset = FashionMNIST(root=data_root, split=fm_split, transform=transform)
    else:
        root = _check_data_dir(data)
        if taxonomy is None:
            raise ValueError(
                f"taxonomy: an image folder ({str(root)!r}) needs a taxonomy whose fine class names are its "
                "sub-folders; pass --taxonomy FILE (written by Taxonomy.save) or use a model that stores one."
            )
        root = _split_folder(root, split) or root
        dataset = HierarchicalImageFolder(root, taxonomy, transform=transform)
    if num_samples is not None and num_samples < len(dataset):
        dataset = Subset(dataset, stratified_indices(dataset_targets(dataset), num_samples, seed=seed).tolist())
    return dataset


def create_train_val_datasets(
    data: Union[str, Path],
    train_transform: Optional[Callable],
    val_transform: Optional[Callable],
    taxonomy: Optional[Taxonomy] = None,
    train_samples: Optional[int] = None,
    val_samples: Optional[int] = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    data_root: Optional[Union[str, Path]] = None,
) -> Tuple[Dataset, Dataset]:
    """Training set and a held-out validation set for fine-tuning.

    * Fashion-MNIST: both come from the 60k ``train`` split, disjoint and class-balanced:
      ``train_samples`` images (default all but the validation ones) and ``val_samples``
      (default 1,000) other images. The 10k ``test`` split stays untouched for
      ``hcast evaluate``.
    * Image folder with ``train/`` and ``val/`` (or ``test/``) sub-folders: those.
    * Image folder without them: a seeded class-balanced split of ``DIR`` with
      ``val_fraction`` of the images held out.

    Returns:
        ``(train_dataset, val_dataset)``, each of ``(transform(image), fine_label)``.

    Raises:
        ValueError: for bad sizes or folders (see :func:`create_dataset`).
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction: expected a fraction in (0, 1), got {val_fraction}.")
    if is_fashion_mnist(data):
        full = FashionMNIST(root=data_root, split="train")
        labels = full.targets
        n_val = 1000 if val_samples is None else val_samples
        val_idx = stratified_indices(labels, n_val, seed=seed + 1)
        n_train = len(labels) - n_val if train_samples is None else train_samples
        train_idx = stratified_indices(labels, n_train, seed=seed, exclude=val_idx)
        return (
            FashionMNIST(root=full.root, split="train", transform=train_transform, indices=train_idx),
            FashionMNIST(root=full.root, split="train", transform=val_transform, indices=val_idx),
        )
    root = _check_data_dir(data)
    if taxonomy is None:
        raise ValueError(
            f"taxonomy: an image folder ({str(root)!r}) needs --taxonomy FILE whose fine class names are its "
            "sub-folders (write one with Taxonomy.save)."
        )
    train_dir, val_dir = _split_folder(root, "train"), _split_folder(root, "val")
    if train_dir is not None and val_dir is not None:
        train = HierarchicalImageFolder(train_dir, taxonomy, transform=train_transform)
        val = HierarchicalImageFolder(val_dir, taxonomy, transform=val_transform)
        if train_samples is not None and train_samples < len(train):
            train = Subset(train, stratified_indices(dataset_targets(train), train_samples, seed=seed).tolist())
        if val_samples is not None and val_samples < len(val):
            val = Subset(val, stratified_indices(dataset_targets(val), val_samples, seed=seed + 1).tolist())
        return train, val
    train_view = HierarchicalImageFolder(root, taxonomy, transform=train_transform)
    val_view = HierarchicalImageFolder(root, taxonomy, transform=val_transform)
    labels = dataset_targets(train_view)
    n_val = val_samples if val_samples is not None else max(1, int(round(val_fraction * len(labels))))
    val_idx = stratified_indices(labels, n_val, seed=seed + 1)
    rest = len(labels) - len(val_idx)
    n_train = rest if train_samples is None else train_samples
    train_idx = stratified_indices(labels, n_train, seed=seed, exclude=val_idx)
    return Subset(train_view, train_idx.tolist()), Subset(val_view, np.asarray(val_idx).tolist())
