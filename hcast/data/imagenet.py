"""ImageNet-1k (ILSVRC 2012) in its usual folder layout, for ``cast_small.deit_in1k``'s top-1.

::

    ROOT/train/n01440764/n01440764_10026.JPEG ...
    ROOT/val/n01440764/ILSVRC2012_val_00000293.JPEG ...   (validation images sorted into class folders)

Class ``i`` is the ``i``-th WordNet id in sorted order, the order of torchvision's
``ImageFolder``, of timm's ImageNet metadata (:class:`timm.data.ImageNetInfo`, which
gives the names here) and of CAST's released classifier. The taxonomy has one level, so
:func:`hcast.train.evaluate`'s full-path accuracy is the top-1 accuracy.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Union

from timm.data import ImageNetInfo

from hcast.data._benchmark import BenchmarkDataset, image_files, require_dir
from hcast.hierarchy import Taxonomy

__all__ = ["ImageNet1k", "imagenet1k_taxonomy"]

_LAYOUT = ("ROOT/train/<wnid>/*.JPEG and ROOT/val/<wnid>/*.JPEG with one folder per ImageNet-1k WordNet id "
           "(n01440764 ...), the validation images sorted into them")


def imagenet1k_taxonomy() -> Taxonomy:
    """One-level taxonomy of the 1,000 ImageNet-1k classes in sorted-WordNet-id order, named
    by timm's descriptions (``"tench, Tinca tinca"``, ...); level name ``"class"``.

    Two synsets share the description ``"crane"`` (the bird n02012849 and the machine
    n03126707); names identify classes, so a repeated description gets its WordNet id
    appended (``"crane (n02012849)"``).
    """
    info = ImageNetInfo("imagenet-1k")
    descriptions = list(info.label_descriptions())
    repeated = {d for d in descriptions if descriptions.count(d) > 1}
    names = [f"{d} ({wnid})" if d in repeated else d for d, wnid in zip(descriptions, info.label_names())]
    return Taxonomy([], names=[names], level_names=("class",))


class ImageNet1k(BenchmarkDataset):
    """ImageNet-1k from ``ROOT/<split>/<wnid>/``.

    Args:
        root: the folder holding ``train/`` and ``val/``.
        split: ``"train"`` or ``"val"``.
        transform, target_transform: as for :class:`~hcast.data._benchmark.BenchmarkDataset`.

    ``dataset[i]`` is ``(transform(image), class id)``; ``dataset.wnids`` lists the 1,000
    WordNet ids in label order.

    Raises:
        ValueError: an unknown ``split``, or class folders that are not ImageNet-1k's.
        FileNotFoundError: ``ROOT/<split>`` missing, or holding no image (the message names
            the folder and the expected layout).
    """

    def __init__(self, root: Union[str, Path], split: str = "val", transform: Optional[Callable] = None,
                 target_transform: Optional[Callable] = None) -> None:
        if split not in ("train", "val"):
            raise ValueError(f"split: ImageNet-1k has 'train' and 'val', got {split!r}.")
        self.root, self.split = Path(root), split
        folder = require_dir(self.root / split, "ImageNet-1k", _LAYOUT)
        self.wnids = tuple(ImageNetInfo("imagenet-1k").label_names())
        present = {p.name for p in folder.iterdir() if p.is_dir()}
        missing = [w for w in self.wnids if w not in present]
        unknown = sorted(present - set(self.wnids))
        if missing or unknown:
            raise ValueError(f"ImageNet-1k: {str(folder)!r} lacks {len(missing)} class folders (e.g. {missing[:3]}) and "
                             f"has {len(unknown)} unknown ones (e.g. {unknown[:3]}); expected the layout {_LAYOUT}.")
        samples = [(path, label) for label, wnid in enumerate(self.wnids) for path in image_files(folder / wnid)]
        if not samples:
            raise FileNotFoundError(f"ImageNet-1k: no image under {str(folder)!r}; expected the layout {_LAYOUT}.")
        super().__init__(samples, imagenet1k_taxonomy(), transform, target_transform)
