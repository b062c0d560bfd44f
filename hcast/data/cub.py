"""CUB-200-2011 (Wah et al., 2011) with H-CAST's three levels: 200 species / 38 families / 13 orders.

Read from the dataset's own files, as it unpacks from ``CUB_200_2011.tgz``::

    ROOT/images.txt               "<image id> <path under images/>"
    ROOT/image_class_labels.txt   "<image id> <class id 1..200>"
    ROOT/train_test_split.txt     "<image id> <1: train, 0: test>"
    ROOT/classes.txt              "<class id> <NNN.Species_name>" (checked when present)
    ROOT/images/001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg ...

``ROOT`` is the ``CUB_200_2011`` folder (or the folder holding it). Species id = CUB's
class id - 1, the order H-CAST's ``ImageFolder`` over the authors' re-arranged copy gives
(``arrange_birds.py`` only copies the same split into train/test folders: not needed
here). Families and orders follow the authors' tree (github.com/ngocquanai/HiOT @ b1a222b,
``deit/dataset/birds_get_tree_target_2.py``, from PRIS-CV's "Fine-Grained or Not"); see
:func:`hcast.hierarchy.benchmark_taxonomy` ``("cub200")``. 5,994 train and 5,794 test images.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Optional, Union

from hcast.data._benchmark import BenchmarkDataset, require_file
from hcast.hierarchy import benchmark_taxonomy

__all__ = ["CUB200"]

_LAYOUT = ("ROOT/images.txt, ROOT/image_class_labels.txt, ROOT/train_test_split.txt and ROOT/images/<class>/*.jpg, "
           "ROOT being the CUB_200_2011 folder of CUB_200_2011.tgz (or the folder holding it)")


def _read_pairs(path: Path) -> Dict[str, str]:
    pairs = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            key, sep, value = line.strip().partition(" ")
            if not sep:
                raise ValueError(f"CUB-200-2011: line {number} of {str(path)!r} is {line.strip()!r}; expected "
                                 "'<image id> <value>'.")
            pairs[key] = value.strip()
    return pairs


class CUB200(BenchmarkDataset):
    """CUB-200-2011, labels in H-CAST's order (species = class id - 1).

    Args:
        root: the ``CUB_200_2011`` folder (or its parent).
        split: ``"train"`` (5,994 images) or ``"test"`` (5,794; H-CAST reports on it).
        transform, target_transform: as for :class:`~hcast.data._benchmark.BenchmarkDataset`.

    ``dataset[i]`` is ``(transform(image), species id)``; ``dataset.taxonomy`` is the
    3-level tree (species / family / order) with names.

    Raises:
        ValueError: an unknown ``split``; malformed lines; class ids outside 1..200; a
            ``classes.txt`` whose species differ from H-CAST's.
        FileNotFoundError: a listed file is missing (the message names it and the layout).
    """

    def __init__(self, root: Union[str, Path], split: str = "test", transform: Optional[Callable] = None,
                 target_transform: Optional[Callable] = None) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split: CUB-200-2011 has 'train' and 'test', got {split!r}.")
        root = Path(root)
        if not (root / "images.txt").is_file() and (root / "CUB_200_2011" / "images.txt").is_file():
            root = root / "CUB_200_2011"
        self.root, self.split = root, split
        name = "CUB-200-2011"
        images = _read_pairs(require_file(root / "images.txt", name, _LAYOUT))
        labels = _read_pairs(require_file(root / "image_class_labels.txt", name, _LAYOUT))
        is_train = _read_pairs(require_file(root / "train_test_split.txt", name, _LAYOUT))
        taxonomy = benchmark_taxonomy("cub200")
        if (root / "classes.txt").is_file():
            self._check_classes(root / "classes.txt", taxonomy.names[0])
        want = "1" if split == "train" else "0"
        samples = []
        for image_id, rel in images.items():
            if image_id not in labels or image_id not in is_train:
                raise ValueError(f"{name}: image id {image_id} of images.txt has no line in image_class_labels.txt "
                                 f"or train_test_split.txt under {str(root)!r}.")
            if is_train[image_id] != want:
                continue
            label = int(labels[image_id]) - 1
            if not 0 <= label < taxonomy.num_fine:
                raise ValueError(f"{name}: image {image_id} has class id {label + 1}; expected 1..{taxonomy.num_fine}.")
            samples.append((root / "images" / rel, label))
        super().__init__(samples, taxonomy, transform, target_transform)

    @staticmethod
    def _check_classes(path: Path, species) -> None:
        for class_id, folder in _read_pairs(path).items():
            index = int(class_id) - 1
            species_name = folder.split(".", 1)[-1]
            if not 0 <= index < len(species) or species_name != species[index]:
                raise ValueError(f"CUB-200-2011: {str(path)!r} names class {class_id} {folder!r}, but H-CAST's class "
                                 f"{class_id} is {species[index] if 0 <= index < len(species) else None!r}; is this "
                                 "CUB-200-2011?")
