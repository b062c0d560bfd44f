"""Tests of hcast.hierarchy.Taxonomy and the dataset taxonomy builders."""
import json
import os
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hcast.hierarchy import Taxonomy
from hcast.hierarchy.taxonomies import fgvc_aircraft_taxonomy, inat21_taxonomy, wordnet_taxonomy

# 6 fine classes -> 3 mid -> 2 coarse:
#   coarse 0: mid 0 {0, 1}, mid 1 {2}
#   coarse 1: mid 2 {3, 4, 5}
PARENTS = [[0, 0, 1, 2, 2, 2], [0, 0, 1]]


@pytest.fixture
def tax():
    return Taxonomy(PARENTS, level_names=("fine", "mid", "coarse"))


# ----------------------------------------------------------------------------- construction


def test_basic_properties(tax):
    assert tax.num_levels == 3
    assert tax.num_classes == (6, 3, 2)
    assert tax.num_fine == 6
    assert tax.level_names == ("fine", "mid", "coarse")
    assert tax.names == (None, None, None)
    assert tax.parents == ((0, 0, 1, 2, 2, 2), (0, 0, 1))
    assert repr(tax) == "Taxonomy(fine=6, mid=3, coarse=2)"


def test_from_paths_matches_parents_and_accepts_hcast_one_based_trees(tax):
    # The form of the H-CAST code's `trees` lists: [fine, mid, coarse], 1-based, any order.
    trees = [[6, 3, 2], [1, 1, 1], [2, 1, 1], [3, 2, 1], [4, 3, 2], [5, 3, 2]]
    from_trees = Taxonomy.from_paths(trees, index_base=1, level_names=("fine", "mid", "coarse"))
    assert from_trees == tax
    zero_based = Taxonomy.from_paths(tax.paths().tolist(), level_names=("fine", "mid", "coarse"))
    assert zero_based == tax


def test_one_level_and_two_level():
    one = Taxonomy([], num_classes=(4,))
    assert one.num_classes == (4,)
    assert one.lca_height(0, 0) == 0 and one.lca_height(0, 3) == 1
    two = Taxonomy([[1, 0, 1]], names=[["a", "b", "c"], ["X", "Y"]])
    assert two.num_classes == (3, 2)
    assert two.class_index("c") == 2 and two.class_index("Y", level=1) == 1


def test_from_nested_uses_mapping_order_and_fine_order():
    tree = {"Animal": {"Dog": ["beagle", "pug"], "Cat": ["siamese"]}, "Vehicle": {"Car": ["sedan"]}}
    t = Taxonomy.from_nested(tree, level_names=("breed", "kind", "domain"))
    assert t.names == (("beagle", "pug", "siamese", "sedan"), ("Dog", "Cat", "Car"), ("Animal", "Vehicle"))
    assert t.parents == ((0, 0, 1, 2), (0, 0, 1))
    t2 = Taxonomy.from_nested(tree, fine_order=["sedan", "siamese", "pug", "beagle"])
    assert t2.names[0] == ("sedan", "siamese", "pug", "beagle")
    assert [t2.names[1][t2.ancestor(f, 1)] for f in range(4)] == ["Car", "Cat", "Dog", "Dog"]


def test_from_edges_builds_the_same_tree_as_from_nested():
    edges = [("beagle", "Dog"), ("pug", "Dog"), ("siamese", "Cat"), ("Dog", "Animal"), ("Cat", "Animal")]
    t = Taxonomy.from_edges(edges)
    assert t.num_classes == (3, 2, 1)
    assert t.names[0] == ("beagle", "pug", "siamese")
    assert t.ancestors(2) == (2, 1, 0)


def test_from_named_paths_deduplicates_per_image_tuples():
    rows = [("707-320", "Boeing 707", "Boeing"), ("A300B4", "A300", "Airbus"), ("707-320", "Boeing 707", "Boeing")]
    t = Taxonomy.from_named_paths(rows, orders=[["A300B4", "707-320"], None, None])
    assert t.names[0] == ("A300B4", "707-320")
    assert t.ancestors(0) == (0, 1, 1)  # A300 / Airbus appear second in the rows


# ----------------------------------------------------------------------------- invalid input


@pytest.mark.parametrize(
    "build, match",
    [
        # a child with two parents
        (lambda: Taxonomy.from_paths([[0, 0], [1, 0], [1, 1]]), r"class 1 at level 0 has two parents, 0 and 1 \(in paths\[1\] and paths\[2\]\)"),
        (lambda: Taxonomy.from_paths([[0, 0, 0], [1, 1, 0], [2, 1, 1]]), r"class 1 at level 1 has two parents, 0 and 1"),
        (lambda: Taxonomy.from_nested({"A": {"x": ["1"]}, "B": {"x": ["2"]}}), r"class 'x' at level 1 has two parents, 'A' and 'B' \(in tree\['A'\]\['x'\] and tree\['B'\]\['x'\]\)"),
        (lambda: Taxonomy.from_edges([("a", "X"), ("a", "Y")]), r"class 'a' at level 0 has two parents, 'X' and 'Y' \(in edges\[0\] and edges\[1\]\)"),
        # cycles
        (lambda: Taxonomy.from_edges([("a", "b"), ("b", "c"), ("c", "a")]), r"cycle"),
        (lambda: Taxonomy.from_edges([("a", "a")]), r"class 'a' is its own parent"),
        # gaps in ids
        (lambda: Taxonomy([[0, 2, 2]]), r"class 1 at level 1 has no child"),
        (lambda: Taxonomy.from_paths([[0, 0], [2, 0]]), r"fine class 1 is missing"),
        (lambda: Taxonomy.from_paths([[0, 0], [1, 2]]), r"class 1 at level 1 has no child"),
        (lambda: Taxonomy.from_paths([[0, 0, 0], [1, 2, 0]]), r"class 1 at level 1 has no child at level 0 \(a gap"),
        # paths of unequal depth
        (lambda: Taxonomy.from_paths([[0, 0, 0], [1, 0]]), r"fine class 1 has 2 levels up to its root but fine class 0 has 3 \(in paths\[1\] and paths\[0\]\)"),
        (lambda: Taxonomy.from_nested({"A": {"x": ["1"]}, "B": ["2"]}), r"fine class '2' has 2 levels .* \(in tree\['B'\]\[0\] and"),
        (lambda: Taxonomy.from_edges([("a", "X"), ("X", "R"), ("b", "R")]), r"fine class 'b' has 2 levels up to its root but fine class 'a' has 3"),
        # names not matching counts
        (lambda: Taxonomy([[0, 1, 1]], names=[["a", "b"], None]), r"names\[0\] has 2 names but level 0 has 3 classes"),
        (lambda: Taxonomy([[0, 1, 1]], level_names=("a", "b", "c")), r"level_names has 3 entries"),
        # parent ids out of range / negative
        (lambda: Taxonomy([[0, 1, 5]], num_classes=(3, 2)), r"parents\[0\]\[2\] \(the parent of class 2 at level 0\) is 5, outside \[0, 2\) at level 1"),
        (lambda: Taxonomy([[0, -1]]), r"parents\[0\]\[1\] \(the parent of class 1 at level 0\) is -1, below the first class id 0"),
        (lambda: Taxonomy.from_paths([[0, 0], [1, 0]], index_base=1), r"paths\[0\]\[0\] is 0, below the first class id 1 at level 0; class ids count from index_base=1"),
        (lambda: Taxonomy([[0, 1.0]]), r"parents\[0\]\[1\] must be an integer"),
    ],
)
def test_invalid_input_raises_value_error_naming_the_class(build, match):
    with pytest.raises(ValueError, match=match):
        build()


# ----------------------------------------------------------------------------- one validator for every format
# Every constructor parses its input into one intermediate form and hands it to one validator: the
# same defect gets the same message whatever the format; only "(in ...)", where the input states
# it, names the argument.


def _message(build):
    with pytest.raises(ValueError) as info:
        build()
    return str(info.value)


def _without_where(message):
    return re.sub(r" \(in [^)]*\)", "", message)


SAME_DEFECT = {
    "two parents": (
        "class 'x' at level 1 has two parents, 'A' and 'B'; every class needs exactly one parent: keep one of them.",
        [
            (lambda: Taxonomy.from_named_paths([("1", "x", "A"), ("2", "x", "B")]), "(in paths[0] and paths[1])"),
            (lambda: Taxonomy.from_nested({"A": {"x": ["1"]}, "B": {"x": ["2"]}}),
             "(in tree['A']['x'] and tree['B']['x'])"),
            (lambda: Taxonomy.from_edges([("1", "x"), ("x", "A"), ("2", "x"), ("x", "B")]),
             "(in edges[1] and edges[3])"),
        ],
    ),
    "unequal depth": (
        "fine class '2' has 2 levels up to its root but fine class '1' has 3; every fine class must sit at the "
        "same depth, with one class per level from the finest to the coarsest.",
        [
            (lambda: Taxonomy.from_named_paths([("1", "x", "A"), ("2", "B")]), "(in paths[1] and paths[0])"),
            (lambda: Taxonomy.from_nested({"A": {"x": ["1"]}, "B": ["2"]}), "(in tree['B'][0] and tree['A']['x'][0])"),
            (lambda: Taxonomy.from_edges([("1", "x"), ("x", "A"), ("2", "B")]), "(in edges[2][0] and edges[0][0])"),
        ],
    ),
    "fine class twice": (
        "fine class 'x' is listed twice; list every fine class once.",
        [
            (lambda: Taxonomy.from_nested({"A": ["x", "y", "x"]}), "(in tree['A'][0] and tree['A'][2])"),
            (lambda: Taxonomy.from_nested({"A": {"m": ["x"]}, "B": {"n": ["x"]}}), None),  # two parents first
        ],
    ),
    "gap": (
        "class 1 at level 1 has no child at level 0 (a gap in the class ids); ids at every level must be "
        "consecutive with every class used.",
        [
            (lambda: Taxonomy([[0, 2, 2]]), None),
            (lambda: Taxonomy.from_paths([[0, 0], [1, 2], [2, 2]]), None),
            (lambda: Taxonomy.from_dict({"format": "hcast.taxonomy", "version": 1, "parents": [[0, 2, 2]]}), None),
        ],
    ),
    "level names": (
        "level_names has 3 entries but the taxonomy has 2 levels; give one name per level, finest first.",
        [
            (lambda: Taxonomy([[0, 0]], level_names=("a", "b", "c")), None),
            (lambda: Taxonomy.from_paths([[0, 0], [1, 0]], level_names=("a", "b", "c")), None),
            (lambda: Taxonomy.from_named_paths([("x", "A"), ("y", "A")], level_names=("a", "b", "c")), None),
            (lambda: Taxonomy.from_nested({"A": ["x", "y"]}, level_names=("a", "b", "c")), None),
            (lambda: Taxonomy.from_edges([("x", "A"), ("y", "A")], level_names=("a", "b", "c")), None),
        ],
    ),
}


@pytest.mark.parametrize("defect", list(SAME_DEFECT))
def test_the_same_defect_gets_the_same_message_in_every_format(defect):
    expected, builds = SAME_DEFECT[defect]
    for build, where in builds:
        message = _message(build)
        if defect == "fine class twice" and where is None:  # a fine class under two groups has two parents
            assert message.startswith("class 'x' at level 0 has two parents, 'm' and 'n'"), message
            continue
        assert _without_where(message) == expected, message
        if where is not None:
            assert where in message, message


def test_the_two_parents_rule_is_one_rule_for_ids_and_names():
    ids = _message(lambda: Taxonomy.from_paths([[0, 0, 0], [1, 0, 1]]))
    names = _message(lambda: Taxonomy.from_named_paths([("0", "0", "0"), ("1", "0", "1")]))
    assert ids == names.replace("'", "") == (
        "class 0 at level 1 has two parents, 0 and 1 (in paths[0] and paths[1]); every class needs exactly one "
        "parent: keep one of them.")


def test_an_empty_or_blank_name_is_one_rule_in_every_format():
    tail = " is '': a class or level name must not be empty or blank; give it a name."
    assert _message(lambda: Taxonomy.from_named_paths([("", "A")])) == "paths[0][0]" + tail
    assert _message(lambda: Taxonomy.from_nested({"A": [""]})) == "tree['A'][0]" + tail
    assert _message(lambda: Taxonomy.from_edges([("", "A")])) == "edges[0][0]" + tail
    assert _message(lambda: Taxonomy([[0]], names=[[""], None])) == "names[0][0] (class 0 at level 0)" + tail


def test_a_file_names_itself_and_the_rule(tmp_path):
    path = tmp_path / "taxonomy.json"
    path.write_text(json.dumps({"format": "hcast.taxonomy", "version": 1, "parents": [[0, 2, 2]]}))
    message = _message(lambda: Taxonomy.load(path))
    assert message.startswith(f"taxonomy file '{path}' does not hold a valid taxonomy: class 1 at level 1 has no "
                              "child at level 0 (a gap in the class ids)")


def test_cycles_name_every_link_on_them():
    message = _message(lambda: Taxonomy.from_edges([("leaf", "a"), ("a", "b"), ("b", "c"), ("c", "a")]))
    assert message == ("class 'a' is its own ancestor (a cycle: 'a' -> 'b' -> 'c' -> 'a') (in edges[1] and edges[2] "
                       "and edges[3]); a taxonomy is a tree: remove one of these links.")


def test_every_constructor_and_dataset_builder_goes_through_the_one_validator(monkeypatch, tmp_path):
    import hcast.hierarchy.taxonomy as taxonomy_module
    from hcast.hierarchy import benchmark_taxonomy
    from hcast.hierarchy.taxonomies import fashion_mnist_taxonomy

    calls = []
    validate = taxonomy_module._validate

    def spy(parent_map):
        calls.append(parent_map.source)
        return validate(parent_map)

    monkeypatch.setattr(taxonomy_module, "_validate", spy)
    tax = Taxonomy(PARENTS)
    (tmp_path / "t.json").write_text(tax.to_json())
    builds = {
        "Taxonomy": lambda: Taxonomy(PARENTS),
        "from_paths": lambda: Taxonomy.from_paths(tax.paths()),
        "from_named_paths": lambda: Taxonomy.from_named_paths([("a", "A"), ("b", "A")]),
        "from_nested": lambda: Taxonomy.from_nested({"A": ["a", "b"]}),
        "from_edges": lambda: Taxonomy.from_edges([("a", "A"), ("b", "A")]),
        "from_dict": lambda: Taxonomy.from_dict(tax.to_dict()),
        "from_json": lambda: Taxonomy.from_json(tax.to_json()),
        "load": lambda: Taxonomy.load(tmp_path / "t.json"),
        "fashion_mnist_taxonomy": fashion_mnist_taxonomy,
        "fgvc_aircraft_taxonomy": lambda: fgvc_aircraft_taxonomy(_write_aircraft(tmp_path / "air")),
        "inat21_taxonomy": lambda: inat21_taxonomy(INAT_CATEGORIES),
        "benchmark_taxonomy": lambda: benchmark_taxonomy("cub200"),
    }
    for name, build in builds.items():
        calls.clear()
        build()
        assert len(calls) == 1, f"{name} validated {len(calls)} times"


def test_from_dict_rejects_unknown_version(tax):
    d = tax.to_dict()
    d["version"] = 99
    with pytest.raises(ValueError, match="version"):
        Taxonomy.from_dict(d)


# ----------------------------------------------------------------------------- queries


def test_ancestors_children_and_level_maps(tax):
    assert tax.ancestors(4) == (4, 2, 1)
    assert tax.ancestors(2, level=2) == 0
    assert tax.ancestor(2, level=2, from_level=1) == 1  # mid class 2 -> coarse 1
    assert tax.children(0, level=2) == (0, 1)
    assert tax.children(2, level=1) == (3, 4, 5)
    assert tax.parent(1, level=1) == 0
    assert tax.level_map(0).tolist() == list(range(6))
    assert tax.level_map(1).tolist() == [0, 0, 1, 2, 2, 2]
    assert tax.level_map(-1).tolist() == [0, 0, 0, 1, 1, 1]
    assert tax.level_map(1).dtype == torch.int64
    paths = tax.paths()
    assert paths.shape == (6, 3) and paths.dtype == torch.int64
    assert paths[3].tolist() == [3, 2, 1]
    paths[0, 0] = 99  # a copy: the taxonomy is not mutated
    assert tax.paths()[0, 0] == 0
    with pytest.raises(ValueError, match="fine_class is 6"):
        tax.ancestors(6)


def test_path_validity(tax):
    assert tax.is_valid_path([4, 2, 1])
    assert not tax.is_valid_path([4, 1, 0])  # fine 4 is not under mid 1
    assert not tax.is_valid_path([4, 2, 0])  # mid 2 is not under coarse 0
    assert not tax.is_valid_path([9, 2, 1])  # out of range
    preds = [torch.tensor([0, 2, 3, 3, 7]), torch.tensor([0, 1, 2, 0, 0]), torch.tensor([0, 0, 1, 1, 0])]
    assert tax.valid_paths_mask(preds).tolist() == [True, True, True, False, False]
    assert tax.valid_paths_mask(torch.stack(preds, 1)).tolist() == [True, True, True, False, False]
    with pytest.raises(ValueError, match="preds has 2 levels but the taxonomy has 3"):
        tax.valid_paths_mask(preds[:2])


def test_lca_height_by_hand(tax):
    assert tax.lca_height(1, 1) == 0
    assert tax.lca_height(0, 1) == 1  # same mid
    assert tax.lca_height(0, 2) == 2  # same coarse
    assert tax.lca_height(0, 5) == 3  # only the root
    m = tax.lca_height_matrix()
    assert m.dtype == torch.int64 and m.shape == (6, 6)
    assert m.tolist() == [[tax.lca_height(a, b) for b in range(6)] for a in range(6)]


@st.composite
def random_taxonomies(draw):
    n_levels = draw(st.integers(1, 4))
    counts = [draw(st.integers(1, 5))]
    parents = []
    for _ in range(n_levels - 1):
        n_up = draw(st.integers(1, counts[-1]))
        # every parent gets at least one child: the first n_up children map to 0..n_up-1
        rest = draw(st.lists(st.integers(0, n_up - 1), min_size=counts[-1] - n_up, max_size=counts[-1] - n_up))
        parents.append(list(range(n_up)) + rest)
        counts.append(n_up)
    return Taxonomy(parents, num_classes=counts)


@settings(max_examples=40, deadline=None)
@given(random_taxonomies())
def test_lca_matrix_is_an_ultrametric_and_round_trips(t):
    m = t.lca_height_matrix()
    assert torch.equal(m, m.T)
    assert (m.diagonal() == 0).all()
    assert int(m.max()) <= t.num_levels
    # ultrametric: h(a, c) <= max(h(a, b), h(b, c))
    assert (m[:, None, :] <= torch.maximum(m[:, :, None], m[None, :, :])).all()
    assert t.valid_paths_mask(list(t.paths().unbind(1))).all()
    assert Taxonomy.from_json(t.to_json()) == t
    assert Taxonomy.from_paths(t.paths().tolist()).parents == t.parents


# ----------------------------------------------------------------------------- serialisation


def test_json_round_trip_with_names(tmp_path):
    t = Taxonomy([[0, 0, 1]], names=[["a", "b", "c"], ["X", "Y"]], level_names=("leaf", "group"))
    d = t.to_dict()
    assert d["format"] == "hcast.taxonomy" and d["version"] == 1
    assert d["num_classes"] == [3, 2] and d["parents"] == [[0, 0, 1]]
    assert json.loads(t.to_json()) == d
    assert Taxonomy.from_dict(d) == t
    t.save(tmp_path / "taxonomy.json")
    assert Taxonomy.load(tmp_path / "taxonomy.json") == t
    # a hub config.json that carries the taxonomy under "taxonomy"
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "hcast_small", "taxonomy": d}))
    assert Taxonomy.load(tmp_path / "config.json") == t


# ----------------------------------------------------------------------------- FGVC-Aircraft metadata


def _write_aircraft(root, variant_of_family=None):
    data = root / "fgvc-aircraft-2013b" / "data"
    data.mkdir(parents=True)
    (data / "variants.txt").write_text("707-320\n727-200\nA300B4\nA310\nATR-42\n")
    (data / "families.txt").write_text("Boeing 707\nBoeing 727\nA300\nA310\nATR-42\n")
    (data / "manufacturers.txt").write_text("Boeing\nAirbus\nATR\n")
    # (image id, variant, family, manufacturer), the names with spaces as in the real files
    rows = [
        ("0034309", "A310", "A310", "Airbus"),
        ("1025794", "707-320", "Boeing 707", "Boeing"),
        ("0056978", "727-200", "Boeing 727", "Boeing"),
        ("0062765", "A300B4", "A300", "Airbus"),
        ("1236189", "ATR-42", "ATR-42", "ATR"),
        ("0133254", "707-320", "Boeing 707", "Boeing"),
    ]
    if variant_of_family:
        rows.append(variant_of_family)
    for k, level in enumerate(("variant", "family", "manufacturer")):
        (data / f"images_{level}_trainval.txt").write_text("".join(f"{r[0]} {r[k + 1]}\n" for r in rows))
    return data


def test_fgvc_aircraft_taxonomy_from_metadata_files(tmp_path):
    data = _write_aircraft(tmp_path)
    t = fgvc_aircraft_taxonomy(tmp_path)
    assert t.level_names == ("variant", "family", "manufacturer")
    assert t.names[0] == ("707-320", "727-200", "A300B4", "A310", "ATR-42")  # variants.txt order
    assert t.names[2] == ("Boeing", "Airbus", "ATR")
    assert [tuple(t.names[l][i] for l, i in enumerate(t.ancestors(f))) for f in (0, 3)] == [
        ("707-320", "Boeing 707", "Boeing"),
        ("A310", "A310", "Airbus"),
    ]
    assert fgvc_aircraft_taxonomy(data) == t  # the data folder itself works too


def test_fgvc_aircraft_variant_with_two_families_raises(tmp_path):
    _write_aircraft(tmp_path, variant_of_family=("9999999", "A310", "A300", "Airbus"))
    with pytest.raises(ValueError, match=r"class 'A310' at level 0 \('variant'\) has two parents"):
        fgvc_aircraft_taxonomy(tmp_path)


def test_fgvc_aircraft_missing_metadata(tmp_path):
    with pytest.raises(FileNotFoundError, match="variants.txt"):
        fgvc_aircraft_taxonomy(tmp_path)


# ----------------------------------------------------------------------------- iNaturalist 2021 records


def _inat_record(i, kingdom, phylum, cls, order, family, genus, epithet):
    return {
        "id": i, "name": f"{genus} {epithet}", "common_name": "", "supercategory": kingdom,
        "kingdom": kingdom, "phylum": phylum, "class": cls, "order": order, "family": family,
        "genus": genus, "specific_epithet": epithet,
        "image_dir_name": f"{i:05d}_{kingdom}_{phylum}_{cls}_{order}_{family}_{genus}_{epithet}",
    }


INAT_CATEGORIES = [
    _inat_record(0, "Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Corvus", "corax"),
    _inat_record(1, "Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Pica", "pica"),
    _inat_record(2, "Animalia", "Chordata", "Aves", "Passeriformes", "Paridae", "Parus", "major"),
    _inat_record(3, "Animalia", "Chordata", "Aves", "Strigiformes", "Strigidae", "Bubo", "bubo"),
    # a homonym genus in another kingdom must stay a separate class
    _inat_record(4, "Plantae", "Tracheophyta", "Magnoliopsida", "Rosales", "Rosaceae", "Pica", "rosea"),
]


def test_inat21_taxonomy_species_family_order(tmp_path):
    path = tmp_path / "val.json"
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": INAT_CATEGORIES[::-1]}))
    t = inat21_taxonomy(path)
    assert t.level_names == ("species", "family", "order")
    assert t.num_classes == (5, 4, 3)
    assert t.names[0][1] == "Pica pica"
    assert t.names[1] == ("Corvidae", "Paridae", "Strigidae", "Rosaceae")
    assert t.names[2] == ("Passeriformes", "Strigiformes", "Rosales")
    assert t.lca_height(0, 1) == 1 and t.lca_height(0, 2) == 2 and t.lca_height(0, 3) == 3


def test_inat21_taxonomy_any_ranks_keeps_homonyms_apart():
    t = inat21_taxonomy({"categories": INAT_CATEGORIES}, ranks=("genus", "class", "kingdom"))
    assert t.names[0] == ("Corvus", "Pica", "Parus", "Bubo", "Pica")
    assert t.ancestors(1) == (1, 0, 0) and t.ancestors(4) == (4, 1, 1)
    with pytest.raises(ValueError, match="ordered finest first"):
        inat21_taxonomy(INAT_CATEGORIES, ranks=("family", "genus"))
    with pytest.raises(ValueError, match="unknown rank 'tribe'"):
        inat21_taxonomy(INAT_CATEGORIES, ranks=("name", "tribe"))


# ----------------------------------------------------------------------------- WordNet (real, Debian's wordnet-base)

# ImageNet wnids: beagle, pug, Siamese cat, tabby cat, bicycle-built-for-two, sports car
FINE = ["n02088364", "n02110958", "n02123597", "n02123045", "n02835271", "n04285008"]
MID = ["n02083346", "n02120997", "n04576211"]  # canine, feline, wheeled vehicle
COARSE = ["n02075296", "n03094503"]  # carnivore, container


def test_wordnet_taxonomy_from_hypernym_closure():
    # No skip: CI installs wordnet-base, and this must fail loudly if it is missing.
    assert os.path.isfile("/usr/share/wordnet/data.noun"), "apt-get install wordnet-base"
    t = wordnet_taxonomy(FINE, [MID, COARSE], level_names=("synset", "mid", "coarse"))
    assert t.num_classes == (6, 3, 2)
    assert t.parents == ((0, 0, 1, 1, 2, 2), (0, 0, 1))
    assert t.names[1] == tuple(MID)
    # a fine class with no ancestor at a level, and one with two
    with pytest.raises(ValueError, match=r"fine class 'n02088364' \(beagle.n.01\) has no ancestor among the level-1"):
        wordnet_taxonomy(FINE, [MID[1:], COARSE])
    with pytest.raises(ValueError, match=r"has 2 ancestors at level 1"):
        wordnet_taxonomy(FINE[:2], [[MID[0], "n02084071"]])  # canine and dog
    with pytest.raises(ValueError, match="not a WordNet id"):
        wordnet_taxonomy(["dog"], [[MID[0]]])
