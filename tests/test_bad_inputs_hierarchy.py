"""Bad inputs to hcast.hierarchy: each gets a clear error naming the argument or the file.

One table, ``CASES``: (id, callable, expected exception, message fragment). Add a row
for each new case. File cases write real small files in ``tmp_path``.
"""
import json

import pytest
import torch

from hcast.hierarchy import (
    FullPathAccuracy,
    HierarchicalMetrics,
    MistakeSeverity,
    Taxonomy,
    TreeInconsistencyError,
    average_hierarchical_distance,
    consistent_decode,
    full_path_accuracy,
    hierarchical_precision_recall_f1,
    level_accuracy,
    path_log_probs,
    tree_inconsistency_error,
)
from hcast.hierarchy.losses import HCASTLoss, tree_path_kl

# 3 fine classes -> 2 coarse: fine 0, 1 under coarse 0; fine 2 under coarse 1
TAX = Taxonomy([[0, 0, 1]], names=[["cat", "dog", "car"], ["animal", "vehicle"]])
TARGETS = [torch.tensor([0, 2, 1]), torch.tensor([0, 1, 0])]


def _nan_logits():
    logits = [torch.randn(3, 3, generator=torch.Generator().manual_seed(0)), torch.zeros(3, 2)]
    logits[0][1, 2] = float("nan")
    return logits


def _posinf_logits():
    logits = [torch.zeros(3, 3), torch.zeros(3, 2)]
    logits[1][2, 0] = float("inf")
    return logits


def _wrong_classes():
    return [torch.randn(3, 7), torch.randn(3, 2)]


CASES = [
    # --- per-level logits: a wrong type is a TypeError, a wrong shape a ValueError, everywhere
    ("loss-one-tensor", lambda: HCASTLoss()(torch.zeros(3, 3), TARGETS), TypeError, "sequence of per-level tensors"),
    ("decode-one-tensor", lambda: consistent_decode(torch.zeros(3, 3), TAX), TypeError, "sequence of per-level"),
    ("metric-one-tensor", lambda: full_path_accuracy(torch.zeros(3, 3), TARGETS), TypeError, "one tensor per level"),
    ("loss-non-tensor", lambda: tree_path_kl([torch.zeros(3, 3), [[0.0, 1.0]] * 3], TARGETS), TypeError,
     r"logits\[1\] must be a tensor, got list"),
    ("decode-non-tensor", lambda: path_log_probs([torch.zeros(3, 3), "x"], TAX), TypeError,
     r"logits\[1\] must be a tensor, got str"),
    ("metric-non-tensor", lambda: tree_inconsistency_error([torch.zeros(3, 3), 1], TAX), TypeError,
     r"preds\[1\] must be a tensor, got int"),
    ("loss-int-logits", lambda: HCASTLoss()([torch.zeros(3, 3, dtype=torch.long), torch.zeros(3, 2)], TARGETS),
     TypeError, r"logits\[0\] must be a floating"),
    ("loss-1d-logits", lambda: HCASTLoss()([torch.zeros(3), torch.zeros(3, 2)], TARGETS), ValueError,
     r"logits\[0\] must be a \(N, C_0\) tensor, got shape \(3,\)"),
    ("decode-1d-logits", lambda: consistent_decode([torch.zeros(3), torch.zeros(3, 2)], TAX), ValueError,
     r"logits\[0\] must be a \(N, C_0\) tensor"),
    ("loss-empty", lambda: HCASTLoss()([], TARGETS), ValueError, "logits is empty"),
    ("decode-batch", lambda: consistent_decode([torch.zeros(3, 3), torch.zeros(2, 2)], TAX), ValueError,
     r"logits\[1\] has batch size 2 but logits\[0\] has 3"),
    # --- NaN scores (issue 12): results built from index 0 before
    ("metrics-nan", lambda: HierarchicalMetrics(TAX).update(_nan_logits(), TARGETS), ValueError,
     r"preds\[0\] holds NaN scores \(first at sample 1\).*validate_args=False"),
    ("fpa-metric-nan", lambda: FullPathAccuracy().update(_nan_logits(), TARGETS), ValueError,
     r"preds\[0\] holds NaN scores"),
    ("tice-metric-nan", lambda: TreeInconsistencyError(TAX).update(_nan_logits()), ValueError,
     r"preds\[0\] holds NaN scores"),
    ("severity-metric-nan", lambda: MistakeSeverity(TAX).update(_nan_logits(), TARGETS), ValueError,
     "preds holds NaN scores"),
    ("fpa-nan", lambda: full_path_accuracy(_nan_logits(), TARGETS), ValueError, r"preds\[0\] holds NaN scores"),
    ("level-acc-nan", lambda: level_accuracy(_nan_logits(), TARGETS, top_k=2), ValueError,
     r"preds\[0\] holds NaN scores"),
    ("hdist-nan", lambda: average_hierarchical_distance(_nan_logits(), TARGETS, TAX), ValueError,
     "logits holds NaN scores"),
    ("decode-nan", lambda: consistent_decode(_nan_logits(), TAX), ValueError,
     r"logits\[0\] holds NaN scores \(first at sample 1\).*validate_args=False"),
    ("decode-posinf", lambda: consistent_decode(_posinf_logits(), TAX), ValueError,
     r"logits\[1\] holds \+inf scores \(first at sample 2\)"),
    # --- class counts that do not match the taxonomy (issue 12): TICE returned 0.67 before
    ("tice-classes", lambda: tree_inconsistency_error(_wrong_classes(), TAX), ValueError,
     r"preds\[0\] has 7 classes but level 0 of the taxonomy has 3"),
    ("tice-metric-classes", lambda: TreeInconsistencyError(TAX).update(_wrong_classes()), ValueError,
     r"preds\[0\] has 7 classes but level 0 of the taxonomy has 3"),
    ("hprf-classes", lambda: hierarchical_precision_recall_f1(_wrong_classes(), TARGETS, TAX), ValueError,
     r"preds\[0\] has 7 classes but level 0"),
    ("metrics-classes", lambda: HierarchicalMetrics(TAX).update(_wrong_classes(), TARGETS), ValueError,
     r"preds\[0\] has 7 classes but level 0"),
    ("tice-ids", lambda: tree_inconsistency_error([torch.tensor([0, 5, 1]), torch.tensor([0, 0, 0])], TAX),
     ValueError, r"preds\[0\]\[1\] is 5, outside \[0, 3\) at level 0"),
    ("metrics-pred-ids", lambda: HierarchicalMetrics(TAX).update([torch.tensor([0, 5, 1]), TARGETS[1]], TARGETS),
     ValueError, r"preds\[0\]\[1\] is 5, outside \[0, 3\)"),
    ("metrics-taxonomy-type", lambda: TreeInconsistencyError({"parents": [[0, 0, 1]]}), TypeError,
     "taxonomy must be an hcast.hierarchy.Taxonomy"),
    # --- Taxonomy construction (issue 12)
    ("taxonomy-dup-names", lambda: Taxonomy([[0, 0, 1]], names=[["cat", "cat", "car"], None]), ValueError,
     r"names\[0\] repeats class names under one parent at level 0: 'cat' \(classes 0 and 1\)"),
    ("taxonomy-dup-coarse", lambda: Taxonomy([[0, 1]], names=[None, ["animal", "animal"]]), ValueError,
     r"names\[1\] repeats class names at the coarsest level at level 1: 'animal'"),
    ("taxonomy-dup-level-name", lambda: Taxonomy([[0, 0]], names=[["a", "a"], None], level_names=("kind", "group")),
     ValueError, r"level 0 \('kind'\): 'a'"),
    ("taxonomy-int-names-level", lambda: Taxonomy([[0, 0, 1]], names=[5, None]), TypeError,
     r"names\[0\] must be a list of class names for level 0 \(or None\), got 5 \(int\)"),
    ("taxonomy-int-names", lambda: Taxonomy([[0, 0, 1]], names=5), TypeError,
     "names must be a list with one entry per level"),
    # --- names that print as something else, or as nothing (issue 21)
    ("taxonomy-nul-in-name", lambda: Taxonomy([[0, 0, 1]], names=[["cat", "d\x00og", "car"], None]), ValueError,
     r"names\[0\]\[1\] \(class 1 at level 0\) is 'd\\x00og': it holds the control character U\+0000"),
    ("taxonomy-rtl-override", lambda: Taxonomy([[0, 0]], names=[["cat", "gnp.\u202eexe"], None]), ValueError,
     r"names\[0\]\[1\] .* U\+202E \(RIGHT-TO-LEFT OVERRIDE\) at position 4"),
    ("taxonomy-newline-in-coarse-name", lambda: Taxonomy([[0, 1]], names=[None, ["pets", "wild\nlife"]]), ValueError,
     r"names\[1\]\[1\] \(class 1 at level 1\) .* U\+000A"),
    ("taxonomy-empty-name", lambda: Taxonomy([[0, 0]], names=[["cat", ""], None]), ValueError,
     r"names\[0\]\[1\] \(class 1 at level 0\) is '': a class or level name must not be empty"),
    ("taxonomy-blank-name", lambda: Taxonomy([[0, 0]], names=[["  ", "dog"], None]), ValueError,
     r"names\[0\]\[0\] .* must not be empty or blank"),
    ("taxonomy-empty-level-name", lambda: Taxonomy([[0, 0]], level_names=("species", "")), ValueError,
     r"level_names\[1\] is ''"),
    ("taxonomy-from-nested-empty", lambda: Taxonomy.from_nested({}), ValueError, "tree is empty"),
    ("taxonomy-from-json-truncated", lambda: Taxonomy.from_json(TAX.to_json()[:40]), ValueError,
     r"text is not valid JSON \(.* at line 1 column"),
    ("taxonomy-from-json-deep", lambda: Taxonomy.from_json("[" * 100_000 + "]" * 100_000), ValueError,
     "text nests JSON too deeply"),
]


@pytest.mark.parametrize("call, exc, match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_a_clear_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ----------------------------------------------------------------------------- Taxonomy.load on real files

GOOD = TAX.to_json(indent=2)
FILE_CASES = [
    ("truncated", GOOD[: len(GOOD) // 2].encode(), r"is not valid JSON \(.* at line \d+ column \d+\); it may be truncated"),
    ("empty", b"", "is empty"),
    ("blank", b"  \n", "is empty"),
    ("latin-1", '{"names": ["caf\u00e9"]}'.encode("latin-1"), r"is not UTF-8 text \(byte 15: b'\\xe9'\)"),
    ("deeply-nested", b"[" * 100_000 + b"]" * 100_000, "nests JSON too deeply"),
    ("int-in-names", GOOD.replace('"names": [', '"names": [3, ', 1).encode(), r"does not hold a valid taxonomy: names"),
    ("int-level-names", json.dumps({**TAX.to_dict(), "names": [7, None]}).encode(),
     r"does not hold a valid taxonomy: names\[0\] must be a list of class names"),
    ("duplicate-names", json.dumps({**TAX.to_dict(), "names": [["cat", "cat", "car"], None]}).encode(),
     r"does not hold a valid taxonomy: names\[0\] repeats class names"),
    ("not-a-taxonomy", b'{"hello": 1}', r"does not hold a valid taxonomy: data has no 'parents' key"),
    ("no-version", json.dumps({k: v for k, v in TAX.to_dict().items() if k != "version"}).encode(),
     r"data has no 'version' key"),
    ("a-list", b"[1, 2]", "does not hold a valid taxonomy: data must be a mapping"),
]


@pytest.mark.parametrize("content, match", [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES])
def test_taxonomy_load_names_the_file(tmp_path, content, match):
    path = tmp_path / "taxonomy.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match) as info:
        Taxonomy.load(path)
    assert f"taxonomy file '{path}'" in str(info.value)


def test_taxonomy_load_round_trips_a_good_file(tmp_path):
    path = tmp_path / "taxonomy.json"
    path.write_text(GOOD, encoding="utf-8")
    assert Taxonomy.load(path) == TAX


# ----------------------------------------------------------------------------- what is still accepted


def test_names_scripts_need_are_kept():
    # zero-width joiner / non-joiner (Persian, emoji sequences) and non-ASCII letters are text
    names = ["می\u200cخواهم", "Éclair", "👩\u200d🔬"]
    assert Taxonomy([[0, 0, 0]], names=[names, ["all"]]).names[0] == tuple(names)


def test_disagreement_names_the_first_contradiction():
    tax = Taxonomy.from_named_paths([("cat", "animal"), ("dog", "animal"), ("car", "object")])
    swapped = Taxonomy.from_named_paths([("dog", "animal"), ("cat", "animal"), ("car", "object")])
    assert tax.disagreement(swapped, "in the model", "in the file") == (
        "the same sizes, but class 0 of level 0 is 'cat' in the model and 'dog' in the file")
    assert tax.disagreement(Taxonomy([[0, 1, 1]])) == "the same sizes, but other parents here and there"
    assert tax.disagreement(Taxonomy([[0, 0, 1, 1]])) == "classes per level (3, 2) here, (4, 2) there"
    assert tax.disagreement(Taxonomy(tax.parents)) is None  # a taxonomy without names adds nothing that contradicts
    assert tax.disagreement(tax) is None


def test_homonyms_under_different_parents_are_kept():
    # iNaturalist's genus Pica exists among birds and plants: the paths tell them apart.
    tax = Taxonomy([[0, 1]], names=[["Pica", "Pica"], ["Aves", "Magnoliopsida"]])
    assert tax.names[0] == ("Pica", "Pica")
    with pytest.raises(ValueError, match=r"2 classes are named 'Pica' at level 0: \[0, 1\]"):
        tax.class_index("Pica")


def test_validate_args_false_skips_the_value_checks():
    logits = _nan_logits()
    preds = consistent_decode(logits, TAX, validate_args=False)
    assert TAX.valid_paths_mask(preds).all()  # still a real path, just not a meaningful one
    metric = HierarchicalMetrics(TAX, validate_args=False)
    metric.update(logits, TARGETS)
    assert metric.total.item() == 3
    # shape checks stay on: a wrong class count is never a value check
    with pytest.raises(ValueError, match=r"preds\[0\] has 7 classes"):
        tree_inconsistency_error(_wrong_classes(), TAX, validate_args=False)


def test_a_bad_batch_leaves_the_metric_states_untouched():
    metric = HierarchicalMetrics(TAX)
    metric.update([torch.tensor([0, 2, 1]), torch.tensor([0, 1, 0])], TARGETS)
    before = {k: v.clone() for k, v in metric.metric_state.items()}
    with pytest.raises(ValueError, match="NaN"):
        metric.update(_nan_logits(), TARGETS)
    for k, v in metric.metric_state.items():
        assert torch.equal(v, before[k]), k
    assert metric.compute()["fpa"].item() == 1.0
