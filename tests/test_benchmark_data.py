"""The benchmark loaders on tiny copies in each dataset's exact layout: lengths, labels at every
level, the H-CAST authors' label order for named classes, split sizes, and wrong roots."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from timm.data import ImageNetInfo

from benchmark_fixtures import (CIFAR_NAMED, INAT_REAL, make_aircraft, make_breeds_imagenet, make_cifar100,
                                make_cub, make_inat, photo, write_jpeg)
from hcast.data import (BENCHMARK_DATASETS, BREEDS, CIFAR100, CUB200, FGVCAircraft, ImageNet1k, INat21Mini,
                        create_dataset, create_train_val_datasets)
from hcast.hierarchy import BENCHMARK_TAXONOMIES, Taxonomy, benchmark_metadata, benchmark_taxonomy

DATA = Path(__file__).parent / "data"


# ----------------------------------------------------------------------------- taxonomies

@pytest.mark.parametrize("name, counts", [
    ("breeds-living17", (34, 17)), ("breeds-nonliving26", (52, 26)), ("breeds-entity13", (130, 13)),
    ("breeds-entity30", (120, 30)), ("cub200", (200, 38, 13)), ("fgvc-aircraft", (100, 70, 30)),
    ("inat21-mini", (10000, 1103, 273)),
])
def test_benchmark_taxonomies_have_the_papers_class_counts_and_name_their_source(name, counts):
    assert benchmark_taxonomy(name).num_classes == counts
    meta = benchmark_metadata(name)
    assert "github.com/ngocquanai/HiOT@b1a222b" in meta["source"]
    assert set(BENCHMARK_TAXONOMIES) == {"breeds-living17", "breeds-nonliving26", "breeds-entity13",
                                         "breeds-entity30", "cub200", "fgvc-aircraft", "inat21-mini"}


def test_benchmark_taxonomy_names_and_errors():
    tax = benchmark_taxonomy("living17")  # alias
    assert tax.level_names == ("subclass", "superclass")
    with pytest.raises(ValueError, match="breeds-living17.*'imagenet-21k'"):
        benchmark_taxonomy("imagenet-21k")


def test_inat21_tree_numbers_families_and_orders_by_first_occurrence():
    """The authors' inat21_3tree.json, shipped gzipped: species = iNat21 category id; family and
    order ids count distinct families / orders in category order."""
    tax = benchmark_taxonomy("inat21-mini")
    assert tax.ancestors(0) == (0, 0, 0) and tax.ancestors(1) == (1, 1, 1)
    assert tax.ancestors(2) == (2, 2, 1) and tax.ancestors(3) == (3, 2, 1)
    assert tax.ancestors(9999) == (9999, 1102, 272)
    families = tax.level_map(1).tolist()
    assert families == sorted(families)  # contiguous blocks, numbered as they first occur


# ----------------------------------------------------------------------------- BREEDS

def test_breeds_labels_follow_the_authors_order(tmp_path):
    root = make_breeds_imagenet(tmp_path, "living17", {"n01631663": 2, "n01665541": 1, "n02493509": 3})
    ds = BREEDS(root, "living17", split="val")
    assert len(ds) == 6
    assert ds.wnids[:4] == ("n01631663", "n01632777", "n01669191", "n01665541")  # not sorted: BREEDS' own split
    by_class = {Path(p).parent.name: t for p, t in ds.samples}
    assert by_class == {"n01631663": 0, "n01665541": 3, "n02493509": 33}
    assert ds.level_targets.tolist() == [[0, 0]] * 2 + [[3, 1]] + [[33, 16]] * 3
    assert ds.taxonomy.names[0][33] == "titi, titi monkey" and ds.taxonomy.names[1][16] == "monkey"
    assert ds.taxonomy.names[1][1] == "turtle"
    image, label = ds[0]
    assert image.mode == "RGB" and label == 0


def test_entity13_labels(tmp_path):
    root = make_breeds_imagenet(tmp_path, "entity13", {"n04479046": 1, "n01817953": 1, "n07753113": 1})
    ds = create_dataset("breeds-entity13", root, split="val")
    assert ds.targets == [0, 10, 129]
    assert ds.level_targets[:, 1].tolist() == [0, 1, 12]
    assert [ds.taxonomy.names[1][c] for c in (0, 1)] == ["garment", "bird"]


@pytest.mark.parametrize("subset", ["living17", "nonliving26", "entity13", "entity30"])
def test_breeds_derivation_equals_the_authors_val_lists(tmp_path, subset):
    """Every line of the authors' data/<subset>_val_source.txt (path, subclass, superclass), and
    nothing else, comes out of an ImageNet-shaped folder holding those files plus others."""
    lists = json.loads(gzip.decompress((DATA / "breeds_val_source_lists.json.gz").read_bytes()))["lists"][subset]
    expected = set()
    for wnid, (fine, coarse, numbers) in lists.items():
        (tmp_path / "val" / wnid).mkdir(parents=True)
        for n in numbers:
            name = f"ILSVRC2012_val_{n:08d}.JPEG"
            (tmp_path / "val" / wnid / name).touch()  # never opened: the list is built from names
            expected.add((f"val/{wnid}/{name}", fine, coarse))
    other = next(w for w in ImageNetInfo("imagenet-1k").label_names() if w not in lists)  # not in this task
    (tmp_path / "val" / other).mkdir()
    (tmp_path / "val" / other / "ILSVRC2012_val_00000293.JPEG").touch()
    (tmp_path / "val" / next(iter(lists)) / "README.txt").touch()  # not an image
    ds = BREEDS(tmp_path, subset, split="val")
    got = {(str(Path(p).relative_to(tmp_path)), fine, int(ds.taxonomy.parent(fine))) for p, fine in ds.samples}
    assert got == expected
    assert len(ds) == 50 * ds.taxonomy.num_fine


def test_breeds_wrong_root_names_the_folder_and_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"val'.*ROOT/train/<wnid>/\*\.JPEG"):
        BREEDS(tmp_path, "living17", split="val")
    make_breeds_imagenet(tmp_path, "living17", {"n01631663": 1}, all_folders=False)
    with pytest.raises(FileNotFoundError, match="n01632777"):  # the second subclass's folder
        BREEDS(tmp_path, "living17", split="val")
    with pytest.raises(ValueError, match="subset"):
        BREEDS(tmp_path, "living18")
    with pytest.raises(ValueError, match="root: breeds-living17 needs"):
        create_dataset("breeds-living17", split="val")


# ----------------------------------------------------------------------------- CUB-200-2011

def test_cub_splits_and_levels(tmp_path):
    make_cub(tmp_path, [(1, True), (1, False), (84, False), (200, True), (200, False), (46, False)])
    test = CUB200(tmp_path, split="test")  # the parent of CUB_200_2011 works too
    train = CUB200(tmp_path / "CUB_200_2011", split="train")
    assert len(test) == 4 and len(train) == 2
    assert test.targets == [0, 83, 199, 45]
    tax = test.taxonomy
    assert test.level_targets.tolist() == [[0, 34, 11], [83, 7, 4], [199, 22, 7], [45, 0, 0]]
    assert [tax.names[1][f] for f in (34, 22, 0)] == ["Diomedeidae", "Parulidae", "Anatidae"]
    assert [tax.names[2][o] for o in (11, 7, 0)] == ["Procellariiformes", "Passeriformes", "Anseriformes"]
    assert tax.names[0][69] == "Green_Violetear" and tax.names[0][140] == "Artic_Tern"  # CUB's own spellings
    assert train.targets == [0, 199]
    assert test[1][0].size == (64, 48)


def test_cub_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="images.txt.*CUB_200_2011"):
        CUB200(tmp_path)
    cub = make_cub(tmp_path, [(1, True)])
    (cub / "classes.txt").write_text("1 001.Laysan_Albatross\n")
    with pytest.raises(ValueError, match="Black_footed_Albatross"):
        CUB200(cub)


# ----------------------------------------------------------------------------- FGVC-Aircraft

def test_aircraft_uses_hcasts_variant_order_and_the_datasets_names(tmp_path):
    rows = [("1025794", "A300B4", "A300", "Airbus"), ("1340192", "707-320", "Boeing 707", "Boeing"),
            ("0056978", "Yak-42", "Yak-42", "Yakovlev")]
    root = make_aircraft(tmp_path, {"trainval": rows[:2], "test": rows})
    test = FGVCAircraft(tmp_path, split="test")
    assert len(test) == 3 and len(FGVCAircraft(root, split="trainval")) == 2
    # H-CAST's data/Air.csv order, not variants.txt's (where 707-320 comes first)
    assert test.targets == [0, 20, 99]
    assert test.level_targets.tolist() == [[0, 0, 0], [20, 12, 4], [99, 69, 29]]
    # only 3 of 70 families occur: no names from the dataset for those levels
    assert test.taxonomy.names[1] is None and test.taxonomy.names[0][20] == "707-320"
    with pytest.raises(FileNotFoundError, match="images_variant_val.txt"):
        FGVCAircraft(root, split="val")
    (root / "data" / "images_variant_test.txt").write_text("1025794 A300B5\n")
    with pytest.raises(ValueError, match="A300B5"):
        FGVCAircraft(root, split="test")


def test_aircraft_fills_family_and_manufacturer_names_from_the_dataset(tmp_path):
    tax = benchmark_taxonomy("fgvc-aircraft")
    rows = []
    for v, variant in enumerate(tax.names[0]):  # one image per variant; names invented per authors' id
        rows.append((f"{v:07d}", variant, f"family{tax.ancestor(v, 1)}", f"maker{tax.ancestor(v, 2)}"))
    root = make_aircraft(tmp_path, {"test": rows})
    ds = FGVCAircraft(root, split="test")
    assert ds.taxonomy.names[1][12] == "family12" and ds.taxonomy.names[2][29] == "maker29"
    rows[0] = rows[0][:2] + ("family1", rows[0][3])  # variant 0 in another variant's family
    make_aircraft(tmp_path, {"test": rows})
    with pytest.warns(UserWarning, match="one-to-one"):
        assert FGVCAircraft(root, split="test").taxonomy.names[1] is None


# ----------------------------------------------------------------------------- iNat21-mini

def test_inat21_mini_levels_and_names(tmp_path):
    make_inat(tmp_path, {"train": [0, 1, 2, 9999], "val": [9999, 0, 3]})
    val = INat21Mini(tmp_path, split="val")
    assert len(val) == 3 and len(INat21Mini(tmp_path, split="train")) == 4
    assert val.level_targets.tolist() == [[9999, 1102, 272], [0, 0, 0], [3, 2, 1]]
    tax = val.taxonomy
    assert tax.names[0][0] == "Lumbricus terrestris" and tax.names[1][1102] == "Lygodiaceae"
    assert tax.names[2][272] == "Schizaeales" and tax.names[2][1] == "Sabellida"
    assert tuple(tax.parents) == tuple(benchmark_taxonomy("inat21-mini").parents)
    assert val[0][0].size == (64, 48)


def test_inat21_mini_checks_the_category_list(tmp_path):
    with pytest.raises(FileNotFoundError, match="val.json.*train_mini.json"):
        INat21Mini(tmp_path, split="val")
    make_inat(tmp_path, {"val": [0]})
    meta = json.loads((tmp_path / "val.json").read_text())
    meta["categories"][3]["family"] = "Lumbricidae"  # species 3 moved out of the authors' family 2
    (tmp_path / "val.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="category 3 .*family 2"):
        INat21Mini(tmp_path, split="val")
    meta["categories"] = meta["categories"][:100]
    (tmp_path / "val.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="100 categories"):
        INat21Mini(tmp_path, split="val")


# ----------------------------------------------------------------------------- ImageNet-1k

def test_imagenet1k_sorted_wnids(tmp_path):
    wnids = ImageNetInfo("imagenet-1k").label_names()
    for w in wnids:
        (tmp_path / "val" / w).mkdir(parents=True)
    write_jpeg(tmp_path / "val" / "n01440764" / "ILSVRC2012_val_00000293.JPEG")
    write_jpeg(tmp_path / "val" / "n15075141" / "ILSVRC2012_val_00000001.JPEG", index=1)
    ds = create_dataset("imagenet-1k", tmp_path, split="test")  # test -> val
    assert ds.targets == [0, 999] and ds.taxonomy.num_classes == (1000,)
    assert ds.taxonomy.names[0][0] == "tench, Tinca tinca"
    # the two "crane" synsets (bird, machine) keep apart by their WordNet ids
    names = ds.taxonomy.names[0]
    assert names[wnids.index("n02012849")] == "crane (n02012849)" and len(set(names)) == 1000
    (tmp_path / "val" / "n15075141").rename(tmp_path / "val" / "oops")
    with pytest.raises(ValueError, match="lacks 1 class folders.*n15075141.*'oops'"):
        ImageNet1k(tmp_path)
    with pytest.raises(FileNotFoundError, match="train"):
        ImageNet1k(tmp_path, split="train")


# ----------------------------------------------------------------------------- CIFAR-100

def test_cifar100_levels_from_the_files(tmp_path):
    make_cifar100(tmp_path, per_class=2)
    ds = CIFAR100(tmp_path, split="train")
    assert len(ds) == 200 and ds.taxonomy.num_classes == (100, 20)
    for fine, (name, coarse, coarse_name) in CIFAR_NAMED.items():
        assert ds.taxonomy.names[0][fine] == name and ds.taxonomy.parent(fine) == coarse
        assert ds.taxonomy.names[1][coarse] == coarse_name
    assert ds.level_targets[:3].tolist() == [[0, 4], [0, 4], [1, 1]]
    image, label = ds[0]
    assert image.size == (32, 32) and label == 0
    assert np.array_equal(np.asarray(image), np.asarray(photo(0, (32, 32))))
    assert len(create_dataset("cifar100", tmp_path / "cifar-100-python", split="val")) == 200  # val -> test


def test_cifar100_refuses_pickles_that_run_code(tmp_path):
    import pickle

    folder = make_cifar100(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (folder / "test").write_bytes(pickle.dumps({"data": Evil()}))
    with pytest.raises(ValueError, match="builtins.print is not allowed"):
        CIFAR100(tmp_path, split="test")
    with pytest.raises(FileNotFoundError, match="cifar-100-python/meta|cifar-100-python.*layout"):
        CIFAR100(tmp_path / "elsewhere")


# ----------------------------------------------------------------------------- create_dataset

def test_every_benchmark_name_is_reachable_and_checks_the_taxonomy(tmp_path):
    assert set(BENCHMARK_DATASETS) == {"breeds-living17", "breeds-nonliving26", "breeds-entity13",
                                       "breeds-entity30", "cub200", "fgvc-aircraft", "inat21-mini",
                                       "imagenet-1k", "cifar100"}
    make_cub(tmp_path, [(1, True), (2, False), (3, False)])
    with pytest.raises(ValueError, match="taxonomy: the given taxonomy"):
        create_dataset("cub200", tmp_path, split="test", taxonomy=Taxonomy([[0, 0, 1]]))
    ds = create_dataset("CUB200", tmp_path, split="test", taxonomy=benchmark_taxonomy("cub200"), num_samples=1)
    assert len(ds) == 1
    train, val = create_train_val_datasets("cub200", None, None, data_root=tmp_path)
    assert (len(train), len(val)) == (1, 2)
    with pytest.warns(DeprecationWarning, match="split='test'"):
        old = create_dataset("fashion-mnist", "test", None, num_samples=10)  # the former positional split
    assert len(old) == 10


def test_the_cli_finds_a_benchmarks_taxonomy(tmp_path):
    from hcast.cli import load_taxonomy

    assert load_taxonomy(data="breeds-entity30") == benchmark_taxonomy("breeds-entity30")
    assert load_taxonomy(data="cifar100") is None  # not shipped: read from the data
    make_cifar100(tmp_path)
    assert load_taxonomy(data="cifar100", data_root=str(tmp_path)).names[0][99] == "worm"


def test_finetune_and_evaluate_take_benchmark_names(tmp_path, capsys):
    """`--data cub200 --data-root DIR` in the CLI: trains on CUB's train split, validates on
    its test split, in the authors' label order, and the folder evaluates on the same names."""
    from hcast.cli import main

    make_cub(tmp_path, [(c, t) for c in (1, 2, 84, 200) for t in (True, True, True, True, False)])
    tiny = ["--model", "hcast_tiny", "--model-kwargs", "embed_dim=32", "depths=[1,1,1,1]", "num_heads=2",
            "--input-size", "32", "--num-segments", "16", "--superpixel-method", "slic"]
    assert main(["finetune", *tiny, "--data", "cub200", "--data-root", str(tmp_path), "--output", str(tmp_path / "o"),
                 "--epochs", "1", "--batch-size", "8", "--workers", "0", "--no-progress", "--device", "cpu"]) == 0
    config = json.loads((tmp_path / "o" / "config.json").read_text())
    assert config["taxonomy"] == benchmark_taxonomy("cub200").to_dict()
    assert (config["pretrained_cfg"]["crop_pct"], config["pretrained_cfg"]["crop_mode"]) == (1.0, "squash")
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "o"), "cub200", "--data-root", str(tmp_path), "--workers", "0",
                 "--no-progress", "--device", "cpu", "--json", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["num_samples"] == 4
