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
* :func:`load_image`: the one image-file reader (8-bit RGB, 16-bit images scaled); an
  unreadable file raises :class:`UnreadableImageError` naming it, and the training and
  evaluation loaders leave it out with a warning (:class:`SkipUnreadable`,
  :func:`collate_readable`).
* The benchmarks H-CAST's released models were made for, each in its native on-disk
  layout with labels in the authors' order: :class:`BREEDS` (Entity-13/30,
  Living-17, Non-Living-26 over ImageNet-1k), :class:`CUB200`, :class:`FGVCAircraft`,
  :class:`INat21Mini`, :class:`ImageNet1k`, :class:`CIFAR100`.
* Semantic segmentation in native layouts: :class:`PascalVOC` (``VOCdevkit/VOC2012``),
  :class:`ADE20K` (``ADEChallengeData2016``), with :class:`SegmentationTransform`
  (:mod:`hcast.data.segmentation`).
* :func:`create_dataset` / :func:`create_train_val_datasets`: datasets from a
  ``--data`` argument (a benchmark name, ``"fashion-mnist"`` or a folder), e.g.
  ``create_dataset("breeds-living17", "/data/imagenet", split="val", transform=tf)``.
"""
from hcast.data.images import (SkipUnreadable, UnreadableImageError, UnreadableImageWarning, collate_readable,
                               load_image, to_rgb)
from hcast.data.fashion_mnist import FASHION_MNIST_CLASSES, FashionMNIST, read_idx, stratified_indices
from hcast.data.image_folder import HierarchicalImageFolder
from hcast.data.transforms import (ToRGB, WithSuperpixels, create_eval_transform, create_transform,
                                   resolve_superpixel_settings)
from hcast.data.cache import SuperpixelCache
from hcast.data.breeds import BREEDS
from hcast.data.cub import CUB200
from hcast.data.aircraft import FGVCAircraft
from hcast.data.inat import INat21Mini
from hcast.data.imagenet import ImageNet1k
from hcast.data.cifar import CIFAR100
from hcast.data.segmentation import ADE20K, PascalVOC, SegmentationTransform
from hcast.data.dataset_factory import (
    BENCHMARK_DATASETS,
    benchmark_dataset_name,
    create_benchmark_dataset,
    create_dataset,
    create_train_val_datasets,
    dataset_targets,
    is_fashion_mnist,
)

__all__ = [
    "BENCHMARK_DATASETS",
    "ADE20K",
    "BREEDS",
    "PascalVOC",
    "SegmentationTransform",
    "CIFAR100",
    "CUB200",
    "FGVCAircraft",
    "INat21Mini",
    "ImageNet1k",
    "benchmark_dataset_name",
    "create_benchmark_dataset",
    "create_eval_transform",
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
    "resolve_superpixel_settings",
    "stratified_indices",
    "load_image",
    "to_rgb",
    "UnreadableImageError",
    "UnreadableImageWarning",
    "SkipUnreadable",
    "collate_readable",
]
