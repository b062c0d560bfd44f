"""Tiny copies of the benchmarks in their exact on-disk layouts, for the loader and CLI tests.

Images are real photos (scikit-image samples), shrunk so that a fixture costs milliseconds;
the metadata files follow each dataset's own format line for line.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Dict, Iterable, List, Sequence

import numpy as np
from PIL import Image
from skimage import data as skdata

from hcast.hierarchy import benchmark_metadata, benchmark_taxonomy

_PHOTOS = (skdata.astronaut, skdata.coffee, skdata.chelsea, skdata.rocket)


def photo(index: int = 0, size=(64, 48)) -> Image.Image:
    """A real RGB photo (astronaut, coffee, chelsea, rocket, cycling), ``size`` = (W, H)."""
    return Image.fromarray(_PHOTOS[index % len(_PHOTOS)]()).resize(size, Image.BILINEAR)


def write_jpeg(path: Path, index: int = 0, size=(64, 48)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    photo(index, size).save(path, quality=90)
    return path


def make_breeds_imagenet(root: Path, subset: str, images: Dict[str, int], split: str = "val",
                         all_folders: bool = True) -> Path:
    """An ImageNet-shaped folder ``root/<split>/<wnid>/`` with ``images[wnid]`` photos per class,
    empty folders for the subset's other classes (``all_folders``) and a distractor class."""
    wnids = benchmark_metadata(f"breeds-{subset}")["wnids"]
    for wnid in (wnids if all_folders else images):
        (root / split / wnid).mkdir(parents=True, exist_ok=True)
    for k, (wnid, count) in enumerate(images.items()):
        for i in range(count):
            write_jpeg(root / split / wnid / f"ILSVRC2012_val_{1000 * k + i + 1:08d}.JPEG", index=k + i)
    write_jpeg(root / split / "n99999999" / "ILSVRC2012_val_09999999.JPEG")  # not a BREEDS class
    return root


def make_cub(root: Path, images: Sequence[tuple]) -> Path:
    """``CUB_200_2011`` with ``images`` = [(class id 1..200, is_train), ...] and all 200 classes listed."""
    cub = root / "CUB_200_2011"
    species = benchmark_taxonomy("cub200").names[0]
    lines, labels, split = [], [], []
    for image_id, (class_id, is_train) in enumerate(images, 1):
        folder = f"{class_id:03d}.{species[class_id - 1]}"
        rel = f"{folder}/{species[class_id - 1]}_{image_id:04d}_{100 + image_id}.jpg"
        write_jpeg(cub / "images" / rel, index=image_id)
        lines.append(f"{image_id} {rel}")
        labels.append(f"{image_id} {class_id}")
        split.append(f"{image_id} {int(is_train)}")
    (cub / "images.txt").write_text("\n".join(lines) + "\n")
    (cub / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (cub / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (cub / "classes.txt").write_text("".join(f"{i + 1} {i + 1:03d}.{s}\n" for i, s in enumerate(species)))
    return cub


def make_aircraft(root: Path, splits: Dict[str, List[tuple]]) -> Path:
    """``fgvc-aircraft-2013b`` with ``splits[split]`` = [(image id, variant, family, manufacturer), ...]."""
    data = root / "fgvc-aircraft-2013b" / "data"
    data.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        for column, kind in ((1, "variant"), (2, "family"), (3, "manufacturer")):
            (data / f"images_{kind}_{split}.txt").write_text("".join(f"{r[0]} {r[column]}\n" for r in rows))
        for k, row in enumerate(rows):
            write_jpeg(data / "images" / f"{row[0]}.jpg", index=k)
    return root / "fgvc-aircraft-2013b"


#: Real iNat21 categories (image_dir_name fields of the 2021 release) for the ids they hold.
INAT_REAL = {
    0: ("Animalia", "Annelida", "Clitellata", "Haplotaxida", "Lumbricidae", "Lumbricus", "terrestris"),
    1: ("Animalia", "Annelida", "Polychaeta", "Sabellida", "Sabellidae", "Sabella", "spallanzanii"),
    9999: ("Plantae", "Tracheophyta", "Polypodiopsida", "Schizaeales", "Lygodiaceae", "Lygodium", "japonicum"),
}


def inat_categories() -> List[dict]:
    """iNat21's 10,000 category records in the dataset's schema: real ones for :data:`INAT_REAL`,
    the others named after the authors' tree (``Family<f>``, ``Order<o>``)."""
    tree = benchmark_taxonomy("inat21-mini")
    real_family = {tree.ancestor(c, 1): rec[4] for c, rec in INAT_REAL.items()}
    real_order = {tree.ancestor(c, 2): rec[3] for c, rec in INAT_REAL.items()}
    out = []
    for c in range(tree.num_fine):
        f, o = tree.ancestor(c, 1), tree.ancestor(c, 2)
        kingdom, phylum, cls, order, family, genus, epithet = INAT_REAL.get(
            c, ("Animalia", "Chordata", "Aves", real_order.get(o, f"Order{o}"), real_family.get(f, f"Family{f}"),
                f"Genus{c}", f"species{c}"))
        out.append({"id": c, "name": f"{genus} {epithet}", "common_name": "", "supercategory": "Animals",
                    "kingdom": kingdom, "phylum": phylum, "class": cls, "order": order, "family": family,
                    "genus": genus, "specific_epithet": epithet,
                    "image_dir_name": f"{c:05d}_{kingdom}_{phylum}_{cls}_{order}_{family}_{genus}_{epithet}"})
    return out


def make_inat(root: Path, splits: Dict[str, Iterable[int]]) -> Path:
    """``train_mini.json`` / ``val.json`` (all 10,000 categories) with one image per listed category id."""
    categories = inat_categories()
    by_id = {c["id"]: c for c in categories}
    image_id = 0
    for split, ids in splits.items():
        folder = "train_mini" if split == "train" else "val"
        images, annotations = [], []
        for k, cat in enumerate(ids):
            rel = f"{folder}/{by_id[cat]['image_dir_name']}/{image_id:08x}-0000.jpg"
            write_jpeg(root / rel, index=k)
            images.append({"id": image_id, "width": 64, "height": 48, "file_name": rel, "license": 0})
            annotations.append({"id": image_id, "image_id": image_id, "category_id": cat})
            image_id += 1
        meta = {"info": {"year": 2021}, "images": images, "annotations": annotations, "categories": categories,
                "licenses": []}
        (root / f"{folder if split == 'train' else 'val'}.json").write_text(json.dumps(meta))
    return root


def make_cifar100(root: Path, per_class: int = 1) -> Path:
    """``cifar-100-python/{train,test,meta}`` pickles in the python version's format (numpy arrays
    of uint8 rows, label lists), ``per_class`` images of each of the 100 classes per split, with
    CIFAR-100's class -> superclass map for the classes named in :data:`CIFAR_NAMED`."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    fine_names = [f"class{i}" for i in range(100)]
    coarse_names = [f"superclass{i}" for i in range(20)]
    coarse_of = [i % 20 for i in range(100)]
    for fine, (name, coarse, coarse_name) in CIFAR_NAMED.items():
        fine_names[fine], coarse_of[fine], coarse_names[coarse] = name, coarse, coarse_name
    pixels = np.asarray(photo(0, (32, 32)), dtype=np.uint8).transpose(2, 0, 1).reshape(-1)
    for split, count in (("train", per_class), ("test", per_class)):
        fine = [c for c in range(100) for _ in range(count)]
        blob = {"filenames": [f"img_{i}.png" for i in range(len(fine))], "batch_label": f"{split} batch",
                "fine_labels": fine, "coarse_labels": [coarse_of[c] for c in fine],
                "data": np.stack([np.roll(pixels, i) for i in range(len(fine))])}
        with open(folder / split, "wb") as f:
            pickle.dump(blob, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": fine_names, "coarse_label_names": coarse_names}, f)
    return folder


#: CIFAR-100 facts (the dataset's meta and labels): class id -> (name, superclass id, superclass name).
CIFAR_NAMED = {0: ("apple", 4, "fruit_and_vegetables"), 1: ("aquarium_fish", 1, "fish"),
               4: ("beaver", 0, "aquatic_mammals"), 99: ("worm", 13, "non-insect_invertebrates")}
