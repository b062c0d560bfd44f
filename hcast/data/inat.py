"""iNat21-mini (Van Horn et al., CVPR 2021) with H-CAST's levels: 10,000 species / 1,103 families / 273 orders.

Read from the dataset's own files, as the 2021 competition archives unpack::

    ROOT/train_mini.json   COCO-style: "images" (id, file_name), "annotations" (image_id,
    ROOT/val.json          category_id), "categories" (id 0..9999, name, family, order, ...)
    ROOT/train_mini/00000_Animalia_..._Lumbricus_terrestris/<uuid>.jpg ...
    ROOT/val/00000_Animalia_..._Lumbricus_terrestris/<uuid>.jpg ...

Species ids are iNat21's category ids. Family and order ids are the authors' (github.com/
ngocquanai/HiOT @ b1a222b, ``data/inat21_3tree.json``, shipped compactly as
:func:`hcast.hierarchy.benchmark_taxonomy` ``("inat21-mini")``): the families and orders
numbered in the order they first occur in the category list. Their names come from the
JSON's ``categories`` and are checked against that tree. 500,000 train_mini and 100,000
val images; H-CAST reports on ``val``, normalising with iNat's own mean (0.466, 0.471,
0.380) and std (0.195, 0.194, 0.192) (see the ``hcast_small.inat21_mini`` pretrained cfg).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

from hcast.data._benchmark import BenchmarkDataset, require_file
from hcast.hierarchy import Taxonomy, benchmark_taxonomy

__all__ = ["INat21Mini", "inat21_mini_taxonomy"]

_FILES = {"train": "train_mini.json", "val": "val.json"}
_LAYOUT = ("ROOT/train_mini.json, ROOT/val.json and the image folders they list (ROOT/train_mini/<category>/*.jpg, "
           "ROOT/val/<category>/*.jpg), as the iNaturalist 2021 archives unpack")


def inat21_mini_taxonomy(categories: List[Dict[str, Any]], source: str = "categories") -> Taxonomy:
    """H-CAST's iNat21 tree (authors' ids) named from the dataset's ``categories`` records.

    Args:
        categories: the ``"categories"`` list of ``train_mini.json`` / ``val.json`` (10,000
            records with ``id``, ``name``, ``family`` and ``order``).
        source: the file the records come from, for messages.

    Returns:
        a 3-level :class:`Taxonomy` (species / family / order), names from the records.

    Raises:
        ValueError: records missing or not ids 0..9999, or families / orders that do not
            match the authors' tree (not iNat21's category list).
    """
    tree = benchmark_taxonomy("inat21-mini")
    n = tree.num_fine
    by_id = {}
    for rec in categories:
        try:
            by_id[int(rec["id"])] = rec
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"iNat21-mini: {source} holds a category without an integer 'id': {rec!r:.200}") from None
    if sorted(by_id) != list(range(n)):
        raise ValueError(f"iNat21-mini: {source} lists {len(by_id)} categories; expected ids 0..{n - 1} (iNat21's "
                         f"10,000 species).")
    names: List[List[Optional[str]]] = [[None] * c for c in tree.num_classes]
    for species in range(n):
        rec = by_id[species]
        path = (rec.get("name"), rec.get("family"), rec.get("order"))
        if None in path:
            raise ValueError(f"iNat21-mini: category {species} of {source} lacks 'name', 'family' or 'order'.")
        for level, (class_id, name) in enumerate(zip(tree.ancestors(species), path)):
            if names[level][class_id] is None:
                names[level][class_id] = str(name)
            elif names[level][class_id] != name:
                raise ValueError(
                    f"iNat21-mini: category {species} ({path[0]}) has {tree.level_names[level]} {name!r} in {source}, "
                    f"but H-CAST's tree puts it in {tree.level_names[level]} {class_id}, named "
                    f"{names[level][class_id]!r} by an earlier category; is this iNat21's category list?")
    return Taxonomy(tree.parents, names=names, level_names=tree.level_names)


class INat21Mini(BenchmarkDataset):
    """iNat21-mini, labels in H-CAST's order.

    Args:
        root: the folder holding ``train_mini.json``, ``val.json`` and the image folders.
        split: ``"train"`` (train_mini, 500,000 images) or ``"val"`` (100,000).
        transform, target_transform: as for :class:`~hcast.data._benchmark.BenchmarkDataset`.

    ``dataset[i]`` is ``(transform(image), species id)``; ``dataset.taxonomy`` is
    :func:`inat21_mini_taxonomy` of the split's JSON.

    Raises:
        ValueError: an unknown ``split``; a JSON file that is not iNat21's (see
            :func:`inat21_mini_taxonomy`); annotations naming unknown images or categories.
        FileNotFoundError: the split's JSON file is missing (the message names it and the
            expected layout).
    """

    def __init__(self, root: Union[str, Path], split: str = "val", transform: Optional[Callable] = None,
                 target_transform: Optional[Callable] = None) -> None:
        if split not in _FILES:
            raise ValueError(f"split: iNat21-mini has 'train' (train_mini.json) and 'val' (val.json), got {split!r}.")
        self.root, self.split = Path(root), split
        path = require_file(self.root / _FILES[split], "iNat21-mini", _LAYOUT)
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
        missing = [k for k in ("images", "annotations", "categories") if k not in meta]
        if missing:
            raise ValueError(f"iNat21-mini: {str(path)!r} has no {missing} entries; expected iNat21's COCO-style JSON.")
        taxonomy = inat21_mini_taxonomy(meta["categories"], source=str(path))
        files = {img["id"]: img["file_name"] for img in meta["images"]}
        samples = []
        for ann in meta["annotations"]:
            if ann["image_id"] not in files or not 0 <= int(ann["category_id"]) < taxonomy.num_fine:
                raise ValueError(f"iNat21-mini: annotation {ann!r:.200} of {str(path)!r} names an unknown image or "
                                 "category.")
            samples.append((self.root / files[ann["image_id"]], int(ann["category_id"])))
        super().__init__(samples, taxonomy, transform, target_transform)
