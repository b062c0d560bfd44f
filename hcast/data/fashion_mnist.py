"""Fashion-MNIST, read from Debian's package or torchvision's download.

Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017) holds 70,000 grayscale 28x28 images of
ten garments (60,000 train, 10,000 test) in the IDX format of MNIST. Debian's
``dataset-fashion-mnist`` package installs the four gzipped IDX files under
``/usr/share/datasets/fashion-mnist/``; hcast reads them there first, then in
``root`` when one is given, and downloads with torchvision otherwise.

The two-level taxonomy hcast trains on (10 garments -> 5 groups) is
:func:`hcast.hierarchy.taxonomies.fashion_mnist_taxonomy`.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

# The ten garment names in label order 0..9, defined once beside the dataset's taxonomy.
from hcast.hierarchy.taxonomies import FASHION_MNIST_CLASSES

__all__ = [
    "FASHION_MNIST_CLASSES",
    "DEBIAN_FASHION_MNIST_DIR",
    "FashionMNIST",
    "read_idx",
    "stratified_indices",
]


#: Where Debian's ``dataset-fashion-mnist`` package puts the IDX files.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

# IDX magic numbers: 0x0000 08 0N, type 0x08 = unsigned byte, N = number of dimensions.
_IDX_UBYTE = 0x08


def read_idx(path: Union[str, Path]) -> np.ndarray:
    """Read one IDX file (plain or gzipped) of unsigned bytes.

    Args:
        path: the file, e.g. ``train-images-idx3-ubyte.gz``.

    Returns:
        ``np.ndarray`` of dtype uint8 with the file's shape: (N, 28, 28) for images,
        (N,) for labels.

    Raises:
        ValueError: when the header is not an IDX header of unsigned bytes or the
            payload size does not match the header.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != _IDX_UBYTE:
        raise ValueError(
            f"path {str(path)!r}: expected an IDX file of unsigned bytes (magic 0x0000080N), "
            f"got header bytes {data[:4]!r}; is this a Fashion-MNIST/MNIST file?"
        )
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape))
    if len(data) - offset != expected:
        raise ValueError(
            f"path {str(path)!r}: header says shape {shape} ({expected} bytes) but the file "
            f"holds {len(data) - offset} bytes after the header; the file is truncated or corrupt."
        )
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def _default_download_root() -> Path:
    return Path(os.environ.get("HCAST_DATA", Path.home() / ".cache" / "hcast" / "datasets"))


def _find_idx_dir(root: Optional[Union[str, Path]], split: str) -> Optional[Path]:
    candidates = []
    if root is not None:
        root = Path(root)
        # accept the folder itself and torchvision's layout <root>/FashionMNIST/raw
        candidates += [root, root / "FashionMNIST" / "raw"]
    candidates.append(DEBIAN_FASHION_MNIST_DIR)
    for folder in candidates:
        names = _FILES[split]
        # torchvision keeps un-gzipped copies next to the archives: accept either
        if all((folder / n).is_file() or (folder / n[:-3]).is_file() for n in names):
            return folder
    return None


def _load_arrays(folder: Path, split: str) -> Tuple[np.ndarray, np.ndarray]:
    paths = []
    for name in _FILES[split]:
        p = folder / name
        paths.append(p if p.is_file() else folder / name[:-3])
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"Fashion-MNIST files in {str(folder)!r}: expected (N,28,28) images and (N,) labels, "
            f"got {images.shape} and {labels.shape}."
        )
    return images, labels


class FashionMNIST(Dataset):
    """Fashion-MNIST as PIL images (mode ``"L"``, 28x28) and int garment labels 0..9.

    Args:
        root: a folder holding the four IDX files (gzipped or not), or torchvision's
            download root. ``None`` looks in Debian's ``/usr/share/datasets/fashion-mnist``
            only, then downloads.
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000 images).
        transform: applied to each PIL image (e.g. :func:`hcast.data.create_transform`).
        indices: optional subset of sample indices (e.g. from :func:`stratified_indices`).
        download: when no local copy is found, download with
            ``torchvision.datasets.FashionMNIST`` into ``root`` (default
            ``$HCAST_DATA`` or ``~/.cache/hcast/datasets``). ``False`` raises instead.

    ``dataset[i]`` returns ``(transform(image), label)`` with ``label`` an ``int``;
    ``dataset.targets`` is the (N,) int64 tensor of labels of the selected samples.

    Raises:
        ValueError: for an unknown ``split``.
        FileNotFoundError: when no copy is found and ``download=False``.
    """

    classes = FASHION_MNIST_CLASSES

    def __init__(
        self,
        root: Optional[Union[str, Path]] = None,
        split: str = "train",
        transform: Optional[Callable] = None,
        indices: Optional[Sequence[int]] = None,
        download: bool = True,
    ) -> None:
        if split not in _FILES:
            raise ValueError(f"split: expected 'train' or 'test', got {split!r}.")
        folder = _find_idx_dir(root, split)
        if folder is None:
            if not download:
                raise FileNotFoundError(
                    f"Fashion-MNIST {split} files not found in {str(root)!r} nor in "
                    f"{str(DEBIAN_FASHION_MNIST_DIR)!r}; install Debian's package "
                    "(apt-get install dataset-fashion-mnist), pass root=FOLDER holding "
                    f"{', '.join(_FILES[split])}, or set download=True."
                )
            folder = self._download(Path(root) if root is not None else _default_download_root())
        self.root = folder
        self.split = split
        self.transform = transform
        images, labels = _load_arrays(folder, split)
        if indices is not None:
            idx = np.asarray(indices, dtype=np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= len(labels)):
                raise ValueError(
                    f"indices: expected values in [0, {len(labels)}) for the {split} split, "
                    f"got min {idx.min()} and max {idx.max()}."
                )
            images, labels = images[idx], labels[idx]
        self.images = images
        self.targets = torch.from_numpy(labels.astype(np.int64))

    @staticmethod
    def _download(root: Path) -> Path:
        from torchvision.datasets import FashionMNIST as _TVFashionMNIST

        root.mkdir(parents=True, exist_ok=True)
        _TVFashionMNIST(str(root), train=True, download=True)
        _TVFashionMNIST(str(root), train=False, download=True)
        return root / "FashionMNIST" / "raw"

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def __getitem__(self, index: int):
        image = Image.fromarray(self.images[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])

    def __repr__(self) -> str:
        return f"FashionMNIST(split={self.split!r}, num_samples={len(self)}, root={str(self.root)!r})"


def stratified_indices(
    labels: Union[torch.Tensor, np.ndarray, Sequence[int]],
    num_samples: int,
    seed: int = 0,
    exclude: Optional[Sequence[int]] = None,
) -> np.ndarray:
    """Pick ``num_samples`` indices with (nearly) equal counts per class.

    Args:
        labels: (N,) int class labels.
        num_samples: how many indices to return; at most ``N - len(exclude)``.
        seed: seed of the random choice, so a subset is reproducible.
        exclude: indices never to pick (e.g. the training subset when choosing a
            validation subset).

    Returns:
        (num_samples,) int64 ``np.ndarray`` of sorted indices.

    Raises:
        ValueError: when ``num_samples`` is not positive or exceeds what is available.
    """
    labels = np.asarray(labels, dtype=np.int64)
    available = np.ones(labels.shape[0], dtype=bool)
    if exclude is not None:
        available[np.asarray(exclude, dtype=np.int64)] = False
    if num_samples <= 0 or num_samples > int(available.sum()):
        raise ValueError(
            f"num_samples: expected 1..{int(available.sum())} (samples available), got {num_samples}."
        )
    rng = np.random.default_rng(seed)
    classes = np.unique(labels[available])
    per_class = [rng.permutation(np.flatnonzero(available & (labels == c))) for c in classes]
    # round-robin over the shuffled classes keeps the counts within one of each other
    chosen = []
    depth = 0
    while len(chosen) < num_samples:
        for idx in per_class:
            if depth < len(idx):
                chosen.append(idx[depth])
                if len(chosen) == num_samples:
                    break
        depth += 1
    return np.sort(np.asarray(chosen, dtype=np.int64))
