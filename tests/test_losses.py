"""Tests of H-CAST's objective (hcast.hierarchy.losses.tree_path)."""
import math

import pytest
import torch
import torch.nn.functional as F
from timm.data.mixup import mixup_target
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from hcast.hierarchy import HCASTLoss, tree_path_kl

FINE = [[1.0, 2.0, 0.5], [0.0, 0.0, 1.0]]
COARSE = [[0.3, -0.2], [1.0, 0.0]]
Y_FINE = [1, 2]
Y_COARSE = [0, 1]


def _log_softmax(row):
    m = max(row)
    lse = m + math.log(sum(math.exp(v - m) for v in row))
    return [v - lse for v in row]


def test_hand_computed_hard_labels():
    # Cross-entropy per level, by hand.
    ce_f = sum(-_log_softmax(r)[y] for r, y in zip(FINE, Y_FINE)) / 2
    ce_c = sum(-_log_softmax(r)[y] for r, y in zip(COARSE, Y_COARSE)) / 2
    # Tree-path KL by hand: one softmax over the 5 concatenated logits; the target puts 1/2 on the
    # fine label and 1/2 on the coarse label; KL = sum t (log t - log p), averaged over the batch.
    kl = 0.0
    for rf, rc, yf, yc in zip(FINE, COARSE, Y_FINE, Y_COARSE):
        lp = _log_softmax(rf + rc)
        kl += 0.5 * (math.log(0.5) - lp[yf]) + 0.5 * (math.log(0.5) - lp[3 + yc])
    kl /= 2
    logits = [torch.tensor(FINE, dtype=torch.float64), torch.tensor(COARSE, dtype=torch.float64)]
    targets = [torch.tensor(Y_FINE), torch.tensor(Y_COARSE)]
    parts = HCASTLoss(kl_weight=0.5).components(logits, targets)
    assert parts["ce_level0"].item() == pytest.approx(ce_f, rel=1e-12)
    assert parts["ce_level1"].item() == pytest.approx(ce_c, rel=1e-12)
    assert parts["kl"].item() == pytest.approx(kl, rel=1e-12)
    assert HCASTLoss(kl_weight=0.5)(logits, targets).item() == pytest.approx(ce_f + ce_c + 0.5 * kl, rel=1e-12)
    assert tree_path_kl(logits, targets).item() == pytest.approx(kl, rel=1e-12)
    assert HCASTLoss(kl_weight=0.0)(logits, targets).item() == pytest.approx(ce_f + ce_c, rel=1e-12)


def _authors_objective(logits, soft_targets, gk_weight):
    """The H-CAST training step (deit/engine_hier.py, --globalkl), written out with the same calls:
    SoftTargetCrossEntropy per level, summed; KLDivLoss(batchmean) of log_softmax over the logits
    concatenated coarse first, against the L1-normalised concatenated targets."""
    crit = SoftTargetCrossEntropy()
    loss = sum(crit(x, t) for x, t in zip(logits, soft_targets))
    all_out = F.log_softmax(torch.cat(logits[::-1], dim=1), dim=1)
    all_t = F.normalize(torch.cat(soft_targets[::-1], dim=1), p=1, dim=1)
    return loss + torch.nn.KLDivLoss(reduction="batchmean")(all_out, all_t) * gk_weight


@pytest.mark.parametrize("lam", [1.0, 0.7, 0.35])
def test_matches_authors_objective_on_mixup_soft_targets(lam):
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(8, 12, generator=g), torch.randn(8, 5, generator=g), torch.randn(8, 3, generator=g)]
    labels = [torch.randint(0, c, (8,), generator=g) for c in (12, 5, 3)]
    soft = [mixup_target(y, c, lam, smoothing=0.1) for y, c in zip(labels, (12, 5, 3))]
    ours = HCASTLoss(kl_weight=0.5)(logits, soft)
    assert ours.item() == pytest.approx(_authors_objective(logits, soft, 0.5).item(), rel=1e-6)


def test_label_smoothing_on_hard_labels_equals_timm():
    g = torch.Generator().manual_seed(1)
    logits = [torch.randn(6, 7, generator=g), torch.randn(6, 3, generator=g)]
    labels = [torch.randint(0, 7, (6,), generator=g), torch.randint(0, 3, (6,), generator=g)]
    ours = HCASTLoss(kl_weight=0.0, label_smoothing=0.1)(logits, labels)
    ref = sum(LabelSmoothingCrossEntropy(0.1)(x, y) for x, y in zip(logits, labels))
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
    # hard labels with smoothing == the soft targets timm's mixup_target gives with lam=1
    soft = [mixup_target(y, c, 1.0, 0.1) for y, c in zip(labels, (7, 3))]
    full = HCASTLoss(kl_weight=0.5, label_smoothing=0.1)
    assert full(logits, labels).item() == pytest.approx(full(logits, soft).item(), rel=1e-6)
    # hard and soft targets may be mixed across levels
    assert full(logits, [labels[0], soft[1]]).item() == pytest.approx(full(logits, soft).item(), rel=1e-6)


def test_level_weights():
    logits = [torch.tensor(FINE), torch.tensor(COARSE)]
    targets = [torch.tensor(Y_FINE), torch.tensor(Y_COARSE)]
    parts = HCASTLoss(kl_weight=0.0).components(logits, targets)
    weighted = HCASTLoss(kl_weight=0.0, level_weights=(1.0, 3.0))(logits, targets)
    assert weighted.item() == pytest.approx(parts["ce_level0"].item() + 3 * parts["ce_level1"].item(), rel=1e-6)


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(2)
    logits = [
        torch.randn(4, 5, dtype=torch.float64, generator=g, requires_grad=True),
        torch.randn(4, 2, dtype=torch.float64, generator=g, requires_grad=True),
    ]
    soft = [torch.softmax(torch.randn(4, c, dtype=torch.float64, generator=g), 1) for c in (5, 2)]
    hard = [torch.tensor([0, 4, 2, 1]), torch.tensor([1, 0, 0, 1])]
    crit = HCASTLoss(kl_weight=0.5, label_smoothing=0.1)
    assert torch.autograd.gradcheck(lambda a, b: crit([a, b], soft), tuple(logits))
    assert torch.autograd.gradcheck(lambda a, b: crit([a, b], hard), tuple(logits))


def test_kl_is_zero_for_a_perfect_match_and_positive_otherwise():
    # logits whose joint softmax equals the normalised targets give KL 0
    t = [torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([[1.0, 0.0]])]
    big = 50.0
    logits = [torch.tensor([[0.0, big, 0.0]], dtype=torch.float64), torch.tensor([[big, 0.0]], dtype=torch.float64)]
    assert tree_path_kl(logits, t).item() == pytest.approx(0.0, abs=1e-12)
    logits[1] = torch.tensor([[0.0, big]], dtype=torch.float64)
    assert tree_path_kl(logits, t).item() > 1.0


@pytest.mark.parametrize(
    "targets, error, match",
    [
        ([torch.tensor([1, 3]), torch.tensor([0, 1])], ValueError,
         r"targets\[0\]\[1\] is 3, outside \[0, 3\) for level 0"),
        ([torch.tensor([1, 2]), torch.tensor([-1, 1])], ValueError, r"targets\[1\]\[0\] is -1, outside \[0, 2\)"),
        ([torch.tensor([1, 2])], ValueError, r"targets has 1 levels but logits has 2"),
        ([torch.tensor([1, 2]), torch.zeros(2, 3)], ValueError,
         r"targets\[1\] has shape \(2, 3\) but logits\[1\] has shape \(2, 2\)"),
        # a wrong dtype is a TypeError, as everywhere in hcast
        ([torch.tensor([1.0, 2.0]), torch.tensor([0, 1])], TypeError, r"targets\[0\] must be an integer \(N,\) tensor"),
    ],
)
def test_bad_targets_raise(targets, error, match):
    logits = [torch.tensor(FINE), torch.tensor(COARSE)]
    with pytest.raises(error, match=match):
        HCASTLoss()(logits, targets)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="kl_weight"):
        HCASTLoss(kl_weight=-1)
    with pytest.raises(ValueError, match="label_smoothing"):
        HCASTLoss(label_smoothing=1.0)
    with pytest.raises(TypeError, match="sequence of per-level"):
        HCASTLoss()(torch.tensor(FINE), [torch.tensor(Y_FINE)])
