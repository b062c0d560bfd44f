"""CIFAR-100 (Krizhevsky, 2009) with its two levels: 100 classes / 20 superclasses.

The benchmark of the "Making Better Mistakes" follow-up (Bertinetto et al., CVPR 2020).
Read from the python version of the dataset, as ``cifar-100-python.tar.gz`` unpacks (and
torchvision's ``CIFAR100(download=True)`` leaves it)::

    ROOT/cifar-100-python/train   pickled dict: data (N, 3072) uint8, fine_labels, coarse_labels
    ROOT/cifar-100-python/test
    ROOT/cifar-100-python/meta    fine_label_names, coarse_label_names

``ROOT`` may also be the ``cifar-100-python`` folder itself. Labels are the dataset's own
ids; the superclass of each class is read from the labels and names from ``meta``. The
pickles are read with an unpickler that only rebuilds numpy arrays: nothing else in the
files can run.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from hcast.data._benchmark import TaxonomyLabels, require_file
from hcast.hierarchy import Taxonomy

__all__ = ["CIFAR100", "read_cifar_pickle"]

_LAYOUT = ("ROOT/cifar-100-python/{train,test,meta} (the python version, cifar-100-python.tar.gz), or ROOT being "
           "the cifar-100-python folder")

# What numpy arrays pickle to (numpy 1 and 2 module names); nothing else is rebuilt.
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype")}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-100 file")


def read_cifar_pickle(path: Union[str, Path]) -> Dict[str, Any]:
    """Read one file of CIFAR's python version (a pickled dict; Python 2 strings as latin-1).

    Raises:
        ValueError: the file is not such a pickle, or would rebuild anything but numpy arrays.
    """
    try:
        with open(path, "rb") as f:
            data = _ArrayUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError) as e:
        raise ValueError(f"CIFAR-100: {str(path)!r} is not a file of CIFAR-100's python version ({e}).") from None
    if not isinstance(data, dict):
        raise ValueError(f"CIFAR-100: {str(path)!r} holds a {type(data).__name__}, expected a dict.")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in data.items()}


class CIFAR100(TaxonomyLabels, Dataset):
    """CIFAR-100 as 32 x 32 RGB PIL images, fine labels 0..99, superclasses as level 1.

    Args:
        root: the folder holding ``cifar-100-python/`` (or that folder).
        split: ``"train"`` (50,000 images) or ``"test"`` (10,000).
        transform, target_transform: applied to the PIL image / the fine label.

    ``dataset[i]`` is ``(transform(image), fine label)``; ``dataset.taxonomy`` has levels
    ``("class", "superclass")`` named from ``meta``; ``dataset.targets`` and
    :attr:`level_targets` as for the other loaders.

    Raises:
        ValueError: an unknown ``split``; a file that is not CIFAR-100's; a class with two
            superclasses or a class missing from the split.
        FileNotFoundError: ``train``/``test``/``meta`` missing (the message names the file
            and the expected layout).
    """

    def __init__(self, root: Union[str, Path], split: str = "test", transform: Optional[Callable] = None,
                 target_transform: Optional[Callable] = None) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split: CIFAR-100 has 'train' and 'test', got {split!r}.")
        root = Path(root)
        folder = root if (root / "meta").is_file() and not (root / "cifar-100-python").is_dir() else root / "cifar-100-python"
        self.root, self.split = folder, split
        self.transform, self.target_transform = transform, target_transform
        data = read_cifar_pickle(require_file(folder / split, "CIFAR-100", _LAYOUT))
        meta = read_cifar_pickle(require_file(folder / "meta", "CIFAR-100", _LAYOUT))
        try:
            images = np.asarray(data["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            fine = np.asarray(data["fine_labels"], dtype=np.int64)
            coarse = np.asarray(data["coarse_labels"], dtype=np.int64)
            fine_names, coarse_names = list(meta["fine_label_names"]), list(meta["coarse_label_names"])
        except (KeyError, ValueError) as e:
            raise ValueError(f"CIFAR-100: {str(folder)!r} does not hold CIFAR-100's python version ({e!r}).") from None
        if len(images) != len(fine) or len(fine) != len(coarse):
            raise ValueError(f"CIFAR-100: {str(folder / split)!r} holds {len(images)} images but {len(fine)} labels.")
        parents = [-1] * len(fine_names)
        for f, c in set(zip(fine.tolist(), coarse.tolist())):
            if parents[f] not in (-1, c):
                raise ValueError(f"CIFAR-100: class {fine_names[f]!r} has two superclasses in {str(folder / split)!r}.")
            parents[f] = c
        if -1 in parents:
            raise ValueError(f"CIFAR-100: class {fine_names[parents.index(-1)]!r} has no image in "
                             f"{str(folder / split)!r}, so its superclass is unknown.")
        self.taxonomy = Taxonomy([parents], names=[fine_names, coarse_names], level_names=("class", "superclass"))
        self.images = images
        self.targets = fine.tolist()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return self._transformed(Image.fromarray(self.images[index]), self.targets[index])

    def __repr__(self) -> str:
        return f"CIFAR100(split={self.split!r}, num_samples={len(self)}, root={str(self.root)!r})"
