"""Tests of consistent decoding (hcast.hierarchy.decoding)."""
import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hcast.hierarchy import Taxonomy, argmax_decode, consistent_decode, tree_inconsistency_error
from hcast.hierarchy.decoding import path_log_probs

TAX = Taxonomy([[0, 0, 1, 2, 2, 2], [0, 0, 1]])  # 6 fine -> 3 mid -> 2 coarse


def test_hand_case_argmax_is_inconsistent_consistent_picks_the_best_path():
    # Two-level tree: fine {0,1} -> coarse 0, fine {2} -> coarse 1.
    tax = Taxonomy([[0, 0, 1]])
    fine = torch.log(torch.tensor([[0.40, 0.35, 0.25]]))
    coarse = torch.log(torch.tensor([[0.20, 0.80]]))
    # argmax says (0, 1): not a path.
    am = argmax_decode([fine, coarse])
    assert [x.tolist() for x in am] == [[0], [1]]
    assert tree_inconsistency_error(am, tax) == 1.0
    # path scores: (0,0) .40*.20=.08, (1,0) .35*.20=.07, (2,1) .25*.80=.20 -> fine 2, coarse 1
    preds, score = consistent_decode([fine, coarse], tax, return_scores=True)
    assert [x.tolist() for x in preds] == [[2], [1]]
    assert score.item() == pytest.approx(torch.log(torch.tensor(0.20)).item(), rel=1e-6)
    assert preds[0].dtype == torch.int64


def _brute_force(logits, tax):
    best = []
    lps = [torch.log_softmax(x.double(), 1) for x in logits]
    for n in range(logits[0].shape[0]):
        cands = []
        for f in range(tax.num_fine):
            path = tax.ancestors(f)
            cands.append((sum(lp[n, c].item() for lp, c in zip(lps, path)), path))
        best.append(max(cands)[1])
    return best


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 7))
def test_consistent_decode_equals_brute_force_and_is_always_valid(seed, n):
    g = torch.Generator().manual_seed(seed)
    logits = [torch.randn(n, c, generator=g) * 3 for c in TAX.num_classes]
    preds = consistent_decode(logits, TAX)
    assert TAX.valid_paths_mask(preds).all()
    assert tree_inconsistency_error(preds, TAX) == 0.0
    got = list(zip(*[p.tolist() for p in preds]))
    assert got == _brute_force(logits, TAX)


def test_path_log_probs_shape_and_values():
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(3, c, generator=g) for c in TAX.num_classes]
    s = path_log_probs(logits, TAX)
    assert s.shape == (3, 6)
    lps = [torch.log_softmax(x, 1) for x in logits]
    for f, path in enumerate(TAX.paths().tolist()):
        assert torch.allclose(s[:, f], sum(lp[:, c] for lp, c in zip(lps, path)))


def test_half_precision_logits_are_decoded_in_float32():
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(4, c, generator=g) for c in TAX.num_classes]
    half = consistent_decode([x.half() for x in logits], TAX)
    assert TAX.valid_paths_mask(half).all()


def test_errors_name_the_mismatch():
    logits = [torch.randn(2, 6), torch.randn(2, 3)]
    with pytest.raises(ValueError, match="logits has 2 levels but the taxonomy has 3"):
        consistent_decode(logits, TAX)
    with pytest.raises(ValueError, match=r"logits\[1\] has 4 classes but level 1 of the taxonomy has 3"):
        consistent_decode([torch.randn(2, 6), torch.randn(2, 4), torch.randn(2, 2)], TAX)
    with pytest.raises(TypeError, match="sequence of per-level"):
        argmax_decode(torch.randn(2, 6))
