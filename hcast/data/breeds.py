"""BREEDS (Santurkar, Tsipras and Madry, ICLR 2021) over an ImageNet-1k folder, as H-CAST uses it.

BREEDS regroups ImageNet-1k classes under WordNet superclasses. H-CAST (Park et al., ICLR
2025; github.com/ngocquanai/HiOT @ b1a222b) trains and evaluates on the *source* split of
four BREEDS tasks, two levels each:

==================  ===========================  =========================
subset              subclasses / superclasses    val images (50 per class)
==================  ===========================  =========================
``living17``        34 / 17                      1,700
``nonliving26``     52 / 26                      2,600
``entity13``        130 / 13                     6,500
``entity30``        120 / 30                     6,000
==================  ===========================  =========================

The authors list every image in ``data/<subset>_{train,val}_source.txt`` (path, subclass
id, superclass id). Those lists hold exactly the images of the source subclasses' ImageNet
folders, labelled in the authors' subclass order, so hcast derives them from the
subclasses' WordNet ids (shipped in :func:`hcast.hierarchy.benchmark_metadata`) and your
ImageNet folder instead of shipping 100 MB of lists. On-disk layout (ImageNet's usual
one, validation images sorted into class folders)::

    ROOT/train/n01631663/n01631663_2337.JPEG ...
    ROOT/val/n01631663/ILSVRC2012_val_00040592.JPEG ...
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Union

from hcast.data._benchmark import BenchmarkDataset, image_files, require_dir
from hcast.hierarchy import benchmark_metadata, benchmark_taxonomy

__all__ = ["BREEDS", "BREEDS_SUBSETS"]

#: The BREEDS tasks H-CAST released models for.
BREEDS_SUBSETS = ("living17", "nonliving26", "entity13", "entity30")

_LAYOUT = ("ROOT/train/<wnid>/*.JPEG and ROOT/val/<wnid>/*.JPEG (an ImageNet-1k folder with the validation "
           "images sorted into one folder per WordNet id, e.g. n01631663)")


class BREEDS(BenchmarkDataset):
    """One BREEDS task's source split, labels in the H-CAST authors' order.

    Args:
        root: the ImageNet-1k folder (holding ``train/`` and ``val/``).
        subset: ``"living17"``, ``"nonliving26"``, ``"entity13"`` or ``"entity30"``
            (``"breeds-"`` prefix allowed).
        split: ``"train"`` or ``"val"`` (H-CAST reports on ``val``).
        transform, target_transform: as for :class:`~hcast.data._benchmark.BenchmarkDataset`.

    ``dataset[i]`` is ``(transform(image), subclass id)``; ``dataset.taxonomy`` is
    :func:`hcast.hierarchy.benchmark_taxonomy` of the task (subclass -> superclass) and
    ``dataset.wnids`` the subclasses' WordNet ids in label order. Images are taken from
    ``ROOT/<split>/<wnid>/`` for every subclass, sorted by file name.

    Raises:
        ValueError: an unknown ``subset`` or ``split``.
        FileNotFoundError: ``ROOT/<split>`` or a subclass folder is missing (the message
            names it and the expected layout), or the split holds no image.
    """

    def __init__(self, root: Union[str, Path], subset: str = "living17", split: str = "val",
                 transform: Optional[Callable] = None, target_transform: Optional[Callable] = None) -> None:
        subset = str(subset).lower().replace("_", "-")
        subset = subset[len("breeds-"):] if subset.startswith("breeds-") else subset
        if subset not in BREEDS_SUBSETS:
            raise ValueError(f"subset: expected one of {', '.join(BREEDS_SUBSETS)}, got {subset!r}.")
        if split not in ("train", "val"):
            raise ValueError(f"split: BREEDS has 'train' and 'val' (ImageNet's), got {split!r}.")
        name = f"BREEDS {subset}"
        self.root, self.subset, self.split = Path(root), subset, split
        folder = require_dir(self.root / split, name, _LAYOUT)
        self.wnids = tuple(benchmark_metadata(f"breeds-{subset}")["wnids"])
        samples = []
        for label, wnid in enumerate(self.wnids):
            class_dir = require_dir(folder / wnid, name, _LAYOUT)
            samples += [(path, label) for path in image_files(class_dir)]
        if not samples:
            raise FileNotFoundError(f"{name}: no image in the {len(self.wnids)} class folders under {str(folder)!r}; "
                                    f"expected the layout {_LAYOUT}")
        super().__init__(samples, benchmark_taxonomy(f"breeds-{subset}"), transform, target_transform)
