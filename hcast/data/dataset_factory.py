"""Build train / validation / test datasets from a ``--data`` argument.

``data`` is one of

* a benchmark name (:data:`BENCHMARK_DATASETS`): ``"breeds-living17"``,
  ``"breeds-nonliving26"``, ``"breeds-entity13"``, ``"breeds-entity30"``, ``"cub200"``,
  ``"fgvc-aircraft"``, ``"inat21-mini"``, ``"imagenet-1k"``, ``"cifar100"``, read from
  ``root`` in the dataset's native layout, labels in the H-CAST authors' order
  (:mod:`hcast.data.breeds`, :mod:`~hcast.data.cub`, :mod:`~hcast.data.aircraft`,
  :mod:`~hcast.data.inat`, :mod:`~hcast.data.imagenet`, :mod:`~hcast.data.cifar`);
* a segmentation dataset name (:data:`SEGMENTATION_DATASETS`): ``"voc2012"``,
  ``"voc2012-aug"`` (SBD's train+), ``"ade20k"`` (:mod:`hcast.data.segmentation`);
* ``"fashion-mnist"`` (the built-in loader, :class:`~hcast.data.fashion_mnist.FashionMNIST`);
* a folder of images laid out as :class:`~hcast.data.image_folder.HierarchicalImageFolder`
  expects, optionally split into ``train/`` and ``val/`` (or ``test/``) sub-folders.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from hcast.data.aircraft import FGVCAircraft
from hcast.data.breeds import BREEDS
from hcast.data.cifar import CIFAR100
from hcast.data.cub import CUB200
from hcast.data.fashion_mnist import FashionMNIST, stratified_indices
from hcast.data.image_folder import HierarchicalImageFolder
from hcast.data.imagenet import ImageNet1k
from hcast.data.inat import INat21Mini
from hcast.data.segmentation import ADE20K, PascalVOC
from hcast.hierarchy import Taxonomy

__all__ = ["BENCHMARK_DATASETS", "SEGMENTATION_DATASETS", "FASHION_MNIST", "benchmark_dataset_name",
           "segmentation_dataset_name", "create_benchmark_dataset", "is_fashion_mnist", "create_dataset", "create_train_val_datasets", "dataset_targets"]

FASHION_MNIST = "fashion-mnist"
_SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "validation", "test"), "test": ("test", "val", "validation")}


#: Benchmark names for ``data``: (loader class, fixed arguments, hcast split -> the dataset's
#: split). H-CAST trains on the first split and reports on the second; ``"val"`` and
#: ``"test"`` both name the split the authors report on.
BENCHMARK_DATASETS: Dict[str, Tuple[type, Dict[str, Any], Dict[str, str]]] = {
    **{f"breeds-{subset}": (BREEDS, {"subset": subset}, {"train": "train", "val": "val", "test": "val"})
       for subset in ("living17", "nonliving26", "entity13", "entity30")},
    "cub200": (CUB200, {}, {"train": "train", "val": "test", "test": "test"}),
    "fgvc-aircraft": (FGVCAircraft, {}, {"train": "trainval", "val": "test", "test": "test"}),
    "inat21-mini": (INat21Mini, {}, {"train": "train", "val": "val", "test": "val"}),
    "imagenet-1k": (ImageNet1k, {}, {"train": "train", "val": "val", "test": "val"}),
    "cifar100": (CIFAR100, {}, {"train": "train", "val": "test", "test": "test"}),
}

#: Semantic segmentation datasets for ``data`` (:mod:`hcast.data.segmentation`), as
#: :data:`BENCHMARK_DATASETS`: items are ``(image, (H, W) int64 label map)``, no taxonomy.
SEGMENTATION_DATASETS: Dict[str, Tuple[type, Dict[str, Any], Dict[str, str]]] = {
    "voc2012": (PascalVOC, {}, {"train": "train", "val": "val", "test": "val"}),
    "voc2012-aug": (PascalVOC, {}, {"train": "train_aug", "val": "val", "test": "val"}),
    "ade20k": (ADE20K, {}, {"train": "training", "val": "validation", "test": "validation"}),
}
_SEGMENTATION_ALIASES = {"voc": "voc2012", "pascal-voc": "voc2012", "voc-aug": "voc2012-aug", "ade": "ade20k"}
_BENCHMARK_ALIASES = {
    "living17": "breeds-living17", "nonliving26": "breeds-nonliving26", "entity13": "breeds-entity13",
    "entity30": "breeds-entity30", "cub": "cub200", "cub-200-2011": "cub200", "aircraft": "fgvc-aircraft",
    "inat21": "inat21-mini", "imagenet": "imagenet-1k", "imagenet1k": "imagenet-1k", "in1k": "imagenet-1k",
    "cifar-100": "cifar100",
}


def benchmark_dataset_name(data: Union[str, Path]) -> Optional[str]:
    """The :data:`BENCHMARK_DATASETS` name ``data`` stands for (case, ``_`` and aliases such
    as ``"living17"`` folded), or ``None`` when it names no benchmark."""
    if not isinstance(data, str):
        return None
    key = data.strip().lower().replace("_", "-")
    key = _BENCHMARK_ALIASES.get(key, key)
    return key if key in BENCHMARK_DATASETS else None


def segmentation_dataset_name(data: Union[str, Path]) -> Optional[str]:
    """The :data:`SEGMENTATION_DATASETS` name ``data`` stands for, or ``None``."""
    if not isinstance(data, str):
        return None
    key = data.strip().lower().replace("_", "-")
    key = _SEGMENTATION_ALIASES.get(key, key)
    return key if key in SEGMENTATION_DATASETS else None


def create_benchmark_dataset(name: str, root: Optional[Union[str, Path]], split: str = "test",
                             transform: Optional[Callable] = None) -> Dataset:
    """One split of a benchmark in its native layout under ``root``.

    Args:
        name: a :data:`BENCHMARK_DATASETS` name (or alias).
        root: the dataset's folder (see each loader for the layout it expects).
        split: ``"train"``, ``"val"`` or ``"test"``; ``val`` and ``test`` both give the split
            the H-CAST authors report on (BREEDS and ImageNet ``val``, CUB, Aircraft and
            CIFAR ``test``, iNat21 ``val``), ``train`` the one they train on (Aircraft
            ``trainval``).
        transform: PIL image -> tensor (or (image, segments)).

    Returns:
        the loader's dataset: ``(transform(image), fine label)`` items, ``.taxonomy``,
        ``.targets``, ``.level_targets``.

    Raises:
        ValueError: unknown name or split, or no ``root``.
        FileNotFoundError: ``root`` does not hold the dataset (the message names the file
            looked for and the layout expected).
    """
    key = benchmark_dataset_name(name) or segmentation_dataset_name(name)
    if key is None:
        raise ValueError(f"data: expected one of {', '.join(list(BENCHMARK_DATASETS) + list(SEGMENTATION_DATASETS))}, "
                         f"got {name!r}.")
    cls, fixed, splits = BENCHMARK_DATASETS.get(key) or SEGMENTATION_DATASETS[key]
    if split not in splits:
        raise ValueError(f"split: expected 'train', 'val' or 'test', got {split!r}.")
    if root is None:
        raise ValueError(f"root: {key} needs the folder holding the dataset (CLI: --data-root DIR); "
                         f"see `help(hcast.data.{cls.__name__})` for the layout it expects.")
    return cls(root, split=splits[split], transform=transform, **fixed)


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
            f"data: expected a benchmark name ({', '.join(BENCHMARK_DATASETS)}), 'fashion-mnist' or a folder of "
            f"images with one sub-folder per fine class, got {str(data)!r} (no such folder)."
        )
    return root


def _check_taxonomy(dataset: Dataset, taxonomy: Optional[Taxonomy], data: str) -> None:
    """A given taxonomy (e.g. the model's) must have the benchmark's tree, or labels would be misread."""
    own = dataset.taxonomy  # type: ignore[attr-defined]
    if taxonomy is not None and tuple(taxonomy.parents) != tuple(own.parents):
        raise ValueError(
            f"taxonomy: the given taxonomy ({taxonomy.num_classes} classes per level) is not the tree of {data} "
            f"({own.num_classes}); evaluate a model trained on {data}, or drop --taxonomy.")


def create_dataset(
    data: Union[str, Path],
    root: Optional[Union[str, Path]] = None,
    split: str = "test",
    transform: Optional[Callable] = None,
    taxonomy: Optional[Taxonomy] = None,
    num_samples: Optional[int] = None,
    seed: int = 0,
    data_root: Optional[Union[str, Path]] = None,
) -> Dataset:
    """One split of ``data`` for evaluation.

    ``create_dataset("breeds-living17", "/data/imagenet", split="val", transform=tf)``.

    Args:
        data: a benchmark name (:data:`BENCHMARK_DATASETS`), ``"fashion-mnist"`` or an
            image folder (``DIR`` itself, or its ``test/`` or ``val/`` sub-folder when
            ``split`` names one that exists).
        root: the benchmark's folder in its native layout; for Fashion-MNIST a folder with
            the IDX files (default: Debian's); unused for an image folder.
        split: ``"train"``, ``"val"`` or ``"test"`` (see :func:`create_benchmark_dataset`
            for benchmarks). Fashion-MNIST has ``train`` and ``test`` (``val`` reads ``test``).
        transform: PIL image -> tensor (or (image, segments)).
        taxonomy: required for an image folder (its fine names are the folder names); for
            a benchmark it is checked to be the benchmark's tree.
        num_samples: optional class-balanced subset size (seeded by ``seed``).
        data_root: the former name of ``root`` (kept working).

    Returns:
        a ``Dataset`` of ``(transform(image), fine_label)``.

    Raises:
        ValueError: unknown ``split``, missing folder, an image folder without a taxonomy,
            or a taxonomy that is not the benchmark's.
        FileNotFoundError: a benchmark's files are not under ``root``.
    """
    if isinstance(root, str) and root in _SPLIT_FOLDERS and not Path(root).is_dir():
        # the signature before benchmarks: create_dataset(data, split, transform, ...)
        warnings.warn("create_dataset(data, split, ...) is deprecated: the second argument is now the dataset root; "
                      f"pass split={root!r} as a keyword.", DeprecationWarning, stacklevel=2)
        transform = split if not isinstance(split, str) else transform
        root, split = None, root
    root = root if root is not None else data_root
    if split not in _SPLIT_FOLDERS:
        raise ValueError(f"split: expected 'train', 'val' or 'test', got {split!r}.")
    benchmark = benchmark_dataset_name(data)
    if segmentation_dataset_name(data) is not None:
        dataset: Dataset = create_benchmark_dataset(segmentation_dataset_name(data), root, split, transform)
    elif benchmark is not None:
        dataset = create_benchmark_dataset(benchmark, root, split, transform)
        _check_taxonomy(dataset, taxonomy, benchmark)
    elif is_fashion_mnist(data):
        fm_split = "train" if split == "train" else "test"
        dataset = FashionMNIST(root=root, split=fm_split, transform=transform)
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

    * A benchmark (:data:`BENCHMARK_DATASETS`, read from ``data_root``): its training split
      and the split the H-CAST authors report on (they validate on it), optionally
      subsampled (class-balanced).
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
    benchmark = benchmark_dataset_name(data)
    if benchmark is not None:
        # H-CAST trains on the benchmark's training split and validates on the split it reports on
        train = create_benchmark_dataset(benchmark, data_root, "train", train_transform)
        val = create_benchmark_dataset(benchmark, data_root, "val", val_transform)
        _check_taxonomy(train, taxonomy, benchmark)
        if train_samples is not None and train_samples < len(train):
            train = Subset(train, stratified_indices(dataset_targets(train), train_samples, seed=seed).tolist())
        if val_samples is not None and val_samples < len(val):
            val = Subset(val, stratified_indices(dataset_targets(val), val_samples, seed=seed + 1).tolist())
        return train, val
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
