"""FGVC-Aircraft (Maji et al., 2013) with H-CAST's three levels: 100 variants / 70 families / 30 manufacturers.

Read from the dataset's own files, as ``fgvc-aircraft-2013b.tar.gz`` unpacks::

    ROOT/data/images_variant_trainval.txt       "<image id> <variant>"  (also _train, _val, _test)
    ROOT/data/images_family_trainval.txt        "<image id> <family>"   (names of level 1, optional)
    ROOT/data/images_manufacturer_trainval.txt  "<image id> <manufacturer>" (names of level 2, optional)
    ROOT/data/images/<image id>.jpg

``ROOT`` is the ``fgvc-aircraft-2013b`` folder (or the folder holding it, as H-CAST's
``--data-path``). Variant ids follow H-CAST's ``data/Air.csv`` (github.com/ngocquanai/HiOT
@ b1a222b), which is *not* the order of the dataset's ``variants.txt`` that torchvision's
``FGVCAircraft`` and :func:`hcast.hierarchy.fgvc_aircraft_taxonomy` use; families and
manufacturers follow the authors' tree (``deit/dataset/aircraft.py``). H-CAST trains on
``trainval`` (6,667 images) and reports on ``test`` (3,333). Images are used whole, with
the copyright banner at the bottom, as the authors do.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Union

from hcast.data._benchmark import BenchmarkDataset, require_file
from hcast.hierarchy import Taxonomy, benchmark_taxonomy

__all__ = ["FGVCAircraft"]

_SPLITS = ("train", "val", "trainval", "test")
_LAYOUT = ("ROOT/data/images_variant_<split>.txt and ROOT/data/images/<image id>.jpg, ROOT being the "
           "fgvc-aircraft-2013b folder of fgvc-aircraft-2013b.tar.gz (or the folder holding it)")


def _read_labels(path: Path) -> Dict[str, str]:
    out = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            image_id, sep, label = line.strip().partition(" ")
            if not sep:
                raise ValueError(f"FGVC-Aircraft: line {number} of {str(path)!r} is {line.strip()!r}; expected "
                                 "'<image id> <label>'.")
            out[image_id] = label.strip()
    return out


def _level_names(taxonomy: Taxonomy, fine_of: Dict[str, int], files: List[Path], level: int) -> Optional[List[str]]:
    """Names of ``level``'s classes from the dataset's per-image label files, when they
    map one-to-one onto the authors' ids (else ``None``, with a warning)."""
    names: Dict[int, set] = {}
    for path in files:
        for image_id, name in _read_labels(path).items():
            if image_id in fine_of:
                names.setdefault(taxonomy.ancestor(fine_of[image_id], level), set()).add(name)
    flat = [next(iter(names[c])) if len(names.get(c, ())) == 1 else None for c in range(taxonomy.num_classes[level])]
    if None in flat or len(set(flat)) != len(flat):
        if len(names) == taxonomy.num_classes[level]:  # every class seen, yet no one-to-one map
            warnings.warn(f"FGVC-Aircraft: the {taxonomy.level_names[level]} names of {[str(p) for p in files]} do not "
                          f"map one-to-one onto H-CAST's {taxonomy.level_names[level]} ids; that level keeps no names.",
                          UserWarning, stacklevel=3)
        return None
    return flat


class FGVCAircraft(BenchmarkDataset):
    """FGVC-Aircraft, labels in H-CAST's order.

    Args:
        root: the ``fgvc-aircraft-2013b`` folder (or its parent).
        split: ``"trainval"``, ``"train"``, ``"val"`` or ``"test"``.
        transform, target_transform: as for :class:`~hcast.data._benchmark.BenchmarkDataset`.

    ``dataset[i]`` is ``(transform(image), variant id)``; ``dataset.taxonomy`` is
    :func:`hcast.hierarchy.benchmark_taxonomy` ``("fgvc-aircraft")`` with the family and
    manufacturer names of the dataset's ``images_family_*`` / ``images_manufacturer_*``
    files filled in (when every class of the level occurs in the split and the names map
    one-to-one onto the authors' ids).

    Raises:
        ValueError: an unknown ``split``; a variant H-CAST does not know; malformed lines.
        FileNotFoundError: the split's label file is missing (the message names it and
            the expected layout).
    """

    def __init__(self, root: Union[str, Path], split: str = "test", transform: Optional[Callable] = None,
                 target_transform: Optional[Callable] = None) -> None:
        if split not in _SPLITS:
            raise ValueError(f"split: FGVC-Aircraft has {', '.join(_SPLITS)}, got {split!r}.")
        root = Path(root)
        if not (root / "data").is_dir() and (root / "fgvc-aircraft-2013b" / "data").is_dir():
            root = root / "fgvc-aircraft-2013b"
        self.root, self.split = root, split
        data = root / "data"
        labels_file = require_file(data / f"images_variant_{split}.txt", "FGVC-Aircraft", _LAYOUT)
        taxonomy = benchmark_taxonomy("fgvc-aircraft")
        index = {name: i for i, name in enumerate(taxonomy.names[0])}
        fine_of = {}
        for image_id, variant in _read_labels(labels_file).items():
            if variant not in index:
                raise ValueError(f"FGVC-Aircraft: {str(labels_file)!r} labels image {image_id} {variant!r}, a variant "
                                 f"H-CAST's 100 do not include; is this FGVC-Aircraft 2013b?")
            fine_of[image_id] = index[variant]
        names = list(taxonomy.names)
        for level, kind in ((1, "family"), (2, "manufacturer")):
            files = [data / f"images_{kind}_{split}.txt"]
            if all(p.is_file() for p in files):
                names[level] = _level_names(taxonomy, fine_of, files, level)
        if names != list(taxonomy.names):
            taxonomy = Taxonomy(taxonomy.parents, names=names, level_names=taxonomy.level_names)
        samples = [(data / "images" / f"{image_id}.jpg", label) for image_id, label in fine_of.items()]
        super().__init__(samples, taxonomy, transform, target_transform)
