"""Tests of hierarchical metrics (hcast.hierarchy.metrics), functional and torchmetrics classes."""
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hcast.hierarchy import Taxonomy
from hcast.hierarchy.metrics import (
    FullPathAccuracy,
    HierarchicalMetrics,
    MistakeSeverity,
    TreeInconsistencyError,
    average_hierarchical_distance,
    full_path_accuracy,
    hierarchical_precision_recall_f1,
    level_accuracy,
    mistake_severity,
    tree_inconsistency_error,
)

# 6 fine -> 3 mid -> 2 coarse: mid 0 {0,1}, mid 1 {2}, mid 2 {3,4,5}; coarse 0 {mid 0, 1}, coarse 1 {mid 2}
TAX = Taxonomy([[0, 0, 1, 2, 2, 2], [0, 0, 1]], level_names=("fine", "mid", "coarse"))
TARGETS = [torch.tensor([0, 2, 3, 5]), torch.tensor([0, 1, 2, 2]), torch.tensor([0, 0, 1, 1])]
PREDS = [torch.tensor([0, 1, 3, 0]), torch.tensor([0, 0, 2, 0]), torch.tensor([0, 0, 0, 0])]
# fine logits whose top-1 is PREDS[0] and top-2 is (1, 2, 4, 1)
SECOND = [1, 2, 4, 1]


def _logits(top1, second, num_classes):
    x = torch.zeros(len(top1), num_classes)
    for i, (a, b) in enumerate(zip(top1, second)):
        x[i, a] = 5.0
        x[i, b] = 4.0
    return x


FINE_LOGITS = _logits(PREDS[0].tolist(), SECOND, 6)


def test_level_and_full_path_accuracy_by_hand():
    assert level_accuracy(PREDS, TARGETS) == [0.5, 0.5, 0.5]
    # only sample 0 is right at every level (sample 2 misses the coarse level)
    assert full_path_accuracy(PREDS, TARGETS) == 0.25
    # logits work as predictions (argmax per level), top-2 needs logits
    logits = [FINE_LOGITS, _logits(PREDS[1].tolist(), [1, 1, 0, 1], 3), _logits(PREDS[2].tolist(), [1] * 4, 2)]
    assert full_path_accuracy(logits, TARGETS) == 0.25
    assert level_accuracy(logits, TARGETS, top_k=2) == [0.75, 0.75, 1.0]  # mid: sample 3 has {0, 1}, not 2
    with pytest.raises(ValueError, match="needs \\(N, C\\) logits"):
        level_accuracy(PREDS, TARGETS, top_k=2)


def test_functional_metrics_return_float64_tensors_without_host_sync():
    """Tensors, not floats: a training loop can log them without a sync per call (validate_args=False)."""
    values = [
        *level_accuracy(PREDS, TARGETS, validate_args=False),
        full_path_accuracy(PREDS, TARGETS, validate_args=False),
        tree_inconsistency_error(PREDS, TAX, validate_args=False),
        mistake_severity(PREDS, TARGETS, TAX, validate_args=False),
        average_hierarchical_distance(FINE_LOGITS, TARGETS, TAX, k=2, validate_args=False),
        *hierarchical_precision_recall_f1(PREDS, TARGETS, TAX, validate_args=False),
    ]
    for v in values:
        assert torch.is_tensor(v) and v.dim() == 0 and v.dtype == torch.float64
    # the same numbers as with the checks on
    assert [v.item() for v in values[:6]] == [0.5, 0.5, 0.5, 0.25, 0.25, 2.5]
    assert values[6].item() == (0.5 + 1 + 0.5 + 3) / 4


def test_tree_inconsistency_error_by_hand():
    # paths (0,0,0) (1,0,0) (3,2,0) (0,0,0): mid 2 lies under coarse 1, so the third is not a path
    assert tree_inconsistency_error(PREDS, TAX) == 0.25
    assert tree_inconsistency_error(TARGETS, TAX) == 0.0


def test_mistake_severity_and_hierarchical_distance_by_hand():
    # mistakes: (pred 1, target 2) meet at coarse 0 -> height 2; (pred 0, target 5) only at the root -> 3
    assert mistake_severity(PREDS, TARGETS, TAX) == 2.5
    assert mistake_severity(FINE_LOGITS, TARGETS[0], TAX) == 2.5
    assert mistake_severity(TARGETS, TARGETS, TAX) == 0.0  # no mistakes
    # Making Better Mistakes' avg. hier. distance @k: mean over samples and the top-k
    assert average_hierarchical_distance(FINE_LOGITS, TARGETS, TAX, k=1) == (0 + 2 + 0 + 3) / 4
    # top-2 heights: (0, 1), (2, 0), (0, 1), (3, 3)
    assert average_hierarchical_distance(FINE_LOGITS, TARGETS, TAX, k=2) == (0.5 + 1 + 0.5 + 3) / 4


def test_hierarchical_precision_recall_f1_by_hand():
    # P / T per sample (upward closures): s0 {f0,m0,c0}/{f0,m0,c0}: 3 shared; s1 {f1,m0,c0}/{f2,m1,c0}: 1;
    # s2 {f3,m2,c1,c0}/{f3,m2,c1}: 3 (the inconsistent coarse 0 adds a node to P); s3 {f0,m0,c0}/{f5,m2,c1}: 0
    hp, hr, hf = hierarchical_precision_recall_f1(PREDS, TARGETS, TAX)
    assert hp == pytest.approx(7 / 13)
    assert hr == pytest.approx(7 / 12)
    assert hf == pytest.approx(2 * (7 / 13) * (7 / 12) / (7 / 13 + 7 / 12))
    assert hierarchical_precision_recall_f1(TARGETS, TARGETS, TAX) == (1.0, 1.0, 1.0)


@st.composite
def predictions(draw):
    n = draw(st.integers(1, 20))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    logits = [torch.randn(n, c, generator=g) for c in TAX.num_classes]
    fine = torch.randint(0, 6, (n,), generator=g)
    targets = [TAX.level_map(l)[fine] for l in range(3)]
    return logits, targets


@settings(max_examples=30, deadline=None)
@given(predictions())
def test_metric_invariants(data):
    logits, targets = data
    fpa = full_path_accuracy(logits, targets)
    assert 0.0 <= fpa <= min(level_accuracy(logits, targets)) <= 1.0
    assert 0.0 <= tree_inconsistency_error(logits, TAX) <= 1.0
    sev = mistake_severity(logits, targets, TAX)
    assert sev == 0.0 or 1.0 <= sev <= TAX.num_levels
    h1 = average_hierarchical_distance(logits, targets, TAX, k=1)
    h3 = average_hierarchical_distance(logits, targets, TAX, k=3)
    assert 0.0 <= h1 <= 3 and 0.0 <= h3 <= 3
    hp, hr, hf = hierarchical_precision_recall_f1(logits, targets, TAX)
    assert 0.0 <= hp <= hr <= 1.0  # |P| >= |T| = num_levels for consistent targets
    # a consistent prediction has hP == hR == mean fraction of correct levels
    pred_paths = [TAX.level_map(l)[logits[0].argmax(1)] for l in range(3)]
    hp2, hr2, _ = hierarchical_precision_recall_f1(pred_paths, targets, TAX)
    assert hp2 == pytest.approx(hr2)
    assert hp2 == pytest.approx(sum(level_accuracy(pred_paths, targets)) / 3)


def test_hierarchical_metrics_class_matches_functional_over_batches():
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(30, c, generator=g) for c in TAX.num_classes]
    fine = torch.randint(0, 6, (30,), generator=g)
    targets = [TAX.level_map(l)[fine] for l in range(3)]
    metric = HierarchicalMetrics(TAX, top_k=(1, 2))
    for sl in (slice(0, 7), slice(7, 19), slice(19, 30)):
        metric.update([x[sl] for x in logits], [t[sl] for t in targets])
    out = metric.compute()
    acc1, acc2 = level_accuracy(logits, targets, 1), level_accuracy(logits, targets, 2)
    for l, name in enumerate(TAX.level_names):
        assert out[f"{name}_acc@1"].item() == pytest.approx(acc1[l])
        assert out[f"{name}_acc@2"].item() == pytest.approx(acc2[l])
    assert out["fpa"].item() == pytest.approx(full_path_accuracy(logits, targets))
    assert out["tice"].item() == pytest.approx(tree_inconsistency_error(logits, TAX))
    assert out["mistake_severity"].item() == pytest.approx(mistake_severity(logits, targets, TAX))
    assert out["hdist@2"].item() == pytest.approx(average_hierarchical_distance(logits, targets, TAX, k=2))
    hp, hr, hf = hierarchical_precision_recall_f1(logits, targets, TAX)
    assert (out["hprecision"].item(), out["hrecall"].item(), out["hf1"].item()) == pytest.approx((hp, hr, hf))


def test_metric_states_are_sums_that_merge_like_ddp():
    """Every state reduces with "sum": the per-process states merged give the single-process result."""
    g = torch.Generator().manual_seed(1)
    logits = [torch.randn(20, c, generator=g) for c in TAX.num_classes]
    targets = [TAX.level_map(l)[torch.randint(0, 6, (20,), generator=g)] for l in range(3)]
    for make in (
        lambda: HierarchicalMetrics(TAX, top_k=(1, 3)),
        FullPathAccuracy,
        lambda: TreeInconsistencyError(TAX),
        lambda: MistakeSeverity(TAX),
    ):
        whole, rank0, rank1 = make(), make(), make()
        assert all(fx is not None and fx.__name__ in ("dim_zero_sum", "sum") for fx in whole._reductions.values())
        whole.update(logits, targets)
        rank0.update([x[:9] for x in logits], [t[:9] for t in targets])
        rank1.update([x[9:] for x in logits], [t[9:] for t in targets])
        rank0.merge_state(rank1)
        a, b = whole.compute(), rank0.compute()
        if isinstance(a, dict):
            for k in a:
                assert a[k].item() == pytest.approx(b[k].item()), k
        else:
            assert a.item() == pytest.approx(b.item())


def test_metric_classes_by_hand():
    fpa = FullPathAccuracy()
    fpa.update(PREDS, TARGETS)
    assert fpa.compute().item() == 0.25
    tice = TreeInconsistencyError(TAX)
    tice.update(PREDS)
    assert tice.compute().item() == 0.25
    sev = MistakeSeverity(TAX)
    sev.update(PREDS, TARGETS)
    assert sev.compute().item() == 2.5


def test_input_errors():
    with pytest.raises(ValueError, match="preds has 2 levels but targets has 3"):
        full_path_accuracy(PREDS[:2], TARGETS)
    with pytest.raises(TypeError, match="one tensor per level"):
        full_path_accuracy(PREDS[0], TARGETS[0])
    with pytest.raises(ValueError, match=r"targets\[1\] has 3 entries but preds has 4"):
        full_path_accuracy(PREDS, [TARGETS[0], TARGETS[1][:3], TARGETS[2]])
    with pytest.raises(ValueError, match=r"targets\[0\] is 7, outside \[0, 6\) \(the taxonomy.s fine classes\)"):
        mistake_severity(PREDS, [torch.tensor([7, 0, 0, 0])], TAX)
    with pytest.raises(ValueError, match="preds has 2 levels but the taxonomy has 3"):
        tree_inconsistency_error(PREDS[:2], TAX)


def test_import_hcast_without_torchmetrics():
    """torchmetrics is optional: hcast imports and the functional metrics work without it."""
    code = (
        "import sys; sys.modules['torchmetrics'] = None\n"
        "import torch, hcast\n"
        "from hcast.hierarchy import metrics as M, Taxonomy\n"
        "t = Taxonomy([[0, 0, 1]])\n"
        "p = [torch.tensor([0, 2]), torch.tensor([0, 0])]\n"
        "assert M.tree_inconsistency_error(p, t) == 0.5\n"
        "try:\n"
        "    M.HierarchicalMetrics(t)\n"
        "except ImportError as e:\n"
        "    assert 'hcast[train]' in str(e)\n"
        "else:\n"
        "    raise SystemExit('no ImportError')\n"
        "print('ok')\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("ok")


def test_metric_class_rejects_bad_batches_without_touching_its_state():
    logits = [FINE_LOGITS, _logits(PREDS[1].tolist(), [1] * 4, 3), _logits(PREDS[2].tolist(), [1] * 4, 2)]
    metric = HierarchicalMetrics(TAX, top_k=(1, 2))
    metric.update(logits, TARGETS)
    before = {k: v.clone() for k, v in metric.metric_state.items()}
    with pytest.raises(ValueError, match=r"targets\[1\]\[0\] is 3, outside \[0, 3\)"):
        metric.update(logits, [TARGETS[0], torch.tensor([3, 0, 0, 0]), TARGETS[2]])
    with pytest.raises(ValueError, match=r"preds\[1\] holds class ids; top_k=\(1, 2\) needs"):
        metric.update([FINE_LOGITS] + PREDS[1:], TARGETS)
    assert all(torch.equal(before[k], v) for k, v in metric.metric_state.items())
    assert metric.compute()["fpa"].item() == 0.25
