"""Datasets and transforms that carry superpixels and per-level targets.

* :class:`FashionMNIST`: the built-in loader (Debian's ``dataset-fashion-mnist`` or
  torchvision's download); its taxonomy is
  :func:`hcast.hierarchy.fashion_mnist_taxonomy`.
* :class:`HierarchicalImageFolder`: your images, one sub-folder per fine class, labels
  in the taxonomy's fine class order.
* :func:`create_transform` / :class:`WithSuperpixels`: resize, augment, normalise, and
  compute superpixels in the DataLoader workers.
* :class:`SuperpixelCache`: images and superpixels computed once, for flip-only
  training.
* :func:`create_dataset` / :func:`create_train_val_datasets`: datasets from a
  ``--data`` argument (``"fashion-mnist"`` or a folder).
"""
from hcast.data.fashion_mnist import FASHION_MNIST_CLASSES, FashionMNIST, read_idx, stratified_indices
from hcast.data.image_folder import HierarchicalImageFolder
from hcast.data.transforms import ToRGB, WithSuperpixels, create_transform
from hcast.data.cache import SuperpixelCache
from hcast.data.dataset_factory import (
    create_dataset,
    create_train_val_datasets,
    dataset_targets,
    is_fashion_mnist,
)

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FashionMNIST",
    "HierarchicalImageFolder",
    "SuperpixelCache",
    "ToRGB",
    "WithSuperpixels",
    "create_dataset",
    "create_train_val_datasets",
    "create_transform",
    "dataset_targets",
    "is_fashion_mnist",
    "read_idx",
    "stratified_indices",
]
