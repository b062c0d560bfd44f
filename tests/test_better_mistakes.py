"""Tests of the "Making Better Mistakes" losses in hcast.hierarchy.losses.

HXE (``hierarchical_cross_entropy``), soft labels (``soft_labels``) and the
level-weighted cross-entropy (``level_weighted``).

The reference values come from an independent re-implementation, in plain Python
loops over an explicit tree, of the algorithms of github:fiveai/making-better-mistakes
(HierarchicalLLLoss with get_exponential_weighting; make_all_soft_labels with
KLDivLoss) and of SimpleHierarchyLoss of its CIFAR-100 follow-up; plus hand-computed
cases.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from hcast.hierarchy import Taxonomy, fashion_mnist_taxonomy
from hcast.hierarchy.losses import (
    HierarchicalCrossEntropyLoss,
    LevelWeightedCrossEntropy,
    SoftLabelCrossEntropyLoss,
    hierarchical_cross_entropy,
    hxe_edge_weights,
    ramp_weight,
    soft_label_cross_entropy,
    soft_labels,
)

# 7 fine -> 3 mid -> 2 coarse, uneven branching
THREE_LEVEL = Taxonomy([[0, 0, 1, 1, 1, 2, 2], [0, 0, 1]])


# ------------------------------------------------------------------ reference re-implementation
def _tree(parents):
    """Explicit tree: nodes are (level, id) plus 'root'; returns children lists and depths."""
    num_levels = len(parents) + 1
    children = {"root": []}
    n_top = max(parents[-1]) + 1 if parents else None
    counts = [len(p) for p in parents] + [n_top]
    for l in range(num_levels):
        for c in range(counts[l]):
            children[(l, c)] = []
    for c in range(counts[-1]):
        children["root"].append((num_levels - 1, c))
    for l, par in enumerate(parents):
        for c, p in enumerate(par):
            children[(l + 1, p)].append((l, c))
    depth = {"root": 0}
    stack = ["root"]
    while stack:
        node = stack.pop()
        for ch in children[node]:
            depth[ch] = depth[node] + 1
            stack.append(ch)
    parent = {ch: node for node, chs in children.items() for ch in chs}
    return children, depth, parent


def _leaves(children, node):
    if not children[node]:
        return [node[1]]
    return [leaf for ch in children[node] for leaf in _leaves(children, ch)]


def reference_hxe(probs, targets, parents, alpha):
    """Bertinetto et al.'s HierarchicalLLLoss with exponential (depth) weights, normalised."""
    children, depth, parent = _tree(parents)
    total = math.fsum(math.exp(-alpha * d) for d in depth.values())
    losses = []
    for p, t in zip(probs.tolist(), targets.tolist()):
        node = (0, t)
        loss = 0.0
        while node != "root":
            num = sum(p[i] for i in _leaves(children, node))
            den = sum(p[i] for i in _leaves(children, parent[node]))
            if num != 0:
                loss += math.exp(-alpha * depth[node]) / total * -math.log(num / den)
            node = parent[node]
        losses.append(loss)
    return sum(losses) / len(losses)


def reference_soft_labels(taxonomy, beta):
    """make_all_soft_labels: distances / max, exp(-beta d) normalised over dim 0; column t = target t."""
    n = taxonomy.num_fine
    d = [[float(taxonomy.lca_height(c2, c1)) for c1 in range(n)] for c2 in range(n)]
    d_max = max(max(row) for row in d)
    e = [[math.exp(-beta * v / d_max) for v in row] for row in d]
    col_sums = [sum(e[r][c] for r in range(n)) for c in range(n)]
    return torch.tensor([[e[r][c] / col_sums[c] for c in range(n)] for r in range(n)], dtype=torch.float64)


# ------------------------------------------------------------------ HXE
@pytest.mark.parametrize("taxonomy", [THREE_LEVEL, fashion_mnist_taxonomy()], ids=["3-level", "fashion-mnist"])
@pytest.mark.parametrize("alpha", [0.1, 0.5, 1.0])
def test_hxe_matches_reference(taxonomy, alpha):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(12, taxonomy.num_fine, generator=g, dtype=torch.float64) * 2
    targets = torch.randint(0, taxonomy.num_fine, (12,), generator=g)
    ref = reference_hxe(logits.softmax(1), targets, [list(p) for p in taxonomy.parents], alpha)
    got = hierarchical_cross_entropy(logits, targets, taxonomy, alpha=alpha)
    assert got.item() == pytest.approx(ref, rel=1e-12)
    module = HierarchicalCrossEntropyLoss(taxonomy, alpha=alpha)
    assert module(logits, targets).item() == pytest.approx(ref, rel=1e-12)


def test_hxe_hand_computed():
    # 3 fine classes -> 2 coarse ({0, 1}, {2}); uniform logits: p = 1/3 each.
    tax = Taxonomy([[0, 0, 1]])
    alpha = math.log(2)  # depth-2 (fine) weight 1/4, depth-1 (coarse) weight 1/2, root 1
    total = 1 + 2 * 0.5 + 3 * 0.25
    expected0 = (0.25 * math.log(2) + 0.5 * math.log(3 / 2)) / total  # p(0|c0)=1/2, p(c0)=2/3
    expected2 = (0.25 * 0.0 + 0.5 * math.log(3)) / total  # p(2|c1)=1, p(c1)=1/3
    logits = torch.zeros(2, 3, dtype=torch.float64)
    got = hierarchical_cross_entropy(logits, torch.tensor([0, 2]), tax, alpha=alpha, reduction="none")
    torch.testing.assert_close(got, torch.tensor([expected0, expected2], dtype=torch.float64))
    w = hxe_edge_weights(tax, alpha)
    torch.testing.assert_close(w, torch.tensor([0.25, 0.5], dtype=torch.float64) / total)


def test_hxe_alpha_zero_unnormalised_is_cross_entropy():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(9, 7, generator=g)
    targets = torch.randint(0, 7, (9,), generator=g)
    got = hierarchical_cross_entropy(logits, targets, THREE_LEVEL, alpha=0.0, normalize=False)
    torch.testing.assert_close(got, F.cross_entropy(logits, targets))


def test_hxe_prefers_mistakes_in_the_right_subtree():
    # Same confidence on a wrong class: a sibling of the target costs less than a distant class.
    tax = fashion_mnist_taxonomy()  # Shirt (6) is a sibling of T-shirt (0); Bag (8) is not
    sibling, distant = torch.zeros(1, 10), torch.zeros(1, 10)
    sibling[0, 6] = distant[0, 8] = 5.0
    target = torch.tensor([0])
    assert hierarchical_cross_entropy(sibling, target, tax, alpha=0.5) < hierarchical_cross_entropy(
        distant, target, tax, alpha=0.5
    )
    # flat cross-entropy cannot tell them apart
    assert F.cross_entropy(sibling, target) == pytest.approx(F.cross_entropy(distant, target).item())


def test_hxe_gradcheck():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 3, 6, 2, 4])
    assert torch.autograd.gradcheck(lambda z: hierarchical_cross_entropy(z, targets, THREE_LEVEL, alpha=0.3), (logits,))


def test_hxe_finite_where_reference_underflows():
    logits = torch.tensor([[0.0, 200.0, -200.0, 0.0, 0.0, 0.0, 0.0]])
    loss = hierarchical_cross_entropy(logits, torch.tensor([2]), THREE_LEVEL, alpha=0.1)
    assert torch.isfinite(loss) and loss > 10


@pytest.mark.parametrize("bad", [7, -1])
def test_hxe_rejects_target_outside_taxonomy(bad):
    with pytest.raises(ValueError, match=rf"targets\[1\] is {bad}, outside \[0, 7\)"):
        hierarchical_cross_entropy(torch.zeros(2, 7), torch.tensor([0, bad]), THREE_LEVEL)
    with pytest.raises(ValueError, match=rf"targets\[0\] is {bad}, outside"):
        HierarchicalCrossEntropyLoss(THREE_LEVEL)(torch.zeros(2, 7), torch.tensor([bad, 0]))


def test_hxe_rejects_bad_shapes_and_types():
    with pytest.raises(ValueError, match=r"logits must have shape \(N, 7\)"):
        hierarchical_cross_entropy(torch.zeros(2, 6), torch.tensor([0, 1]), THREE_LEVEL)
    with pytest.raises(TypeError, match=r"targets must be an integer \(N,\) tensor of class ids"):
        hierarchical_cross_entropy(torch.zeros(2, 7), torch.tensor([0.0, 1.0]), THREE_LEVEL)
    with pytest.raises(TypeError, match="Taxonomy"):
        hierarchical_cross_entropy(torch.zeros(2, 7), torch.tensor([0, 1]), [[0, 0, 1]])


# ------------------------------------------------------------------ soft labels
def test_soft_labels_hand_computed():
    tax = Taxonomy([[0, 0, 1]])  # d(0,1)=1, d(0,2)=2=d_max
    s = soft_labels(tax, beta=2.0)
    row0 = torch.softmax(torch.tensor([0.0, -1.0, -2.0]), 0)
    torch.testing.assert_close(s[0], row0)
    torch.testing.assert_close(s.sum(1), torch.ones(3))


@pytest.mark.parametrize("beta", [4.0, 15.0])
def test_soft_labels_match_reference(beta):
    tax = fashion_mnist_taxonomy()
    ref = reference_soft_labels(tax, beta)
    torch.testing.assert_close(soft_labels(tax, beta).double(), ref.t(), rtol=1e-6, atol=1e-7)


@pytest.mark.filterwarnings("ignore:reduction. .mean. divides")
def test_soft_label_ce_relates_to_reference_kldiv():
    tax = fashion_mnist_taxonomy()
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(8, 10, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 10, (8,), generator=g)
    y = reference_soft_labels(tax, 10.0).t()[targets]
    kl_mean = torch.nn.KLDivLoss()(F.log_softmax(logits, 1), y)  # the reference's criterion
    entropy = -(y * y.log()).sum(1).mean()
    got = soft_label_cross_entropy(logits, targets, tax, beta=10.0)
    torch.testing.assert_close(got, kl_mean * 10 + entropy, rtol=1e-6, atol=1e-8)
    module = SoftLabelCrossEntropyLoss(tax, beta=10.0)
    torch.testing.assert_close(module(logits, targets), got)
    torch.testing.assert_close(module.soft_targets(targets).double(), y, rtol=1e-6, atol=1e-7)


def test_soft_label_ce_gradcheck_and_errors():
    tax = fashion_mnist_taxonomy()
    logits = torch.randn(4, 10, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 5, 8, 9])
    assert torch.autograd.gradcheck(lambda z: soft_label_cross_entropy(z, targets, tax, beta=5.0), (logits,))
    with pytest.raises(ValueError, match=r"targets\[0\] is 10, outside \[0, 10\)"):
        SoftLabelCrossEntropyLoss(tax)(torch.zeros(2, 10), torch.tensor([10, 0]))


# ------------------------------------------------------------------ level-weighted CE
def test_ramp_weight_schedule():
    # coarse loss switched on at epoch 50, ramped over 20 epochs
    assert [ramp_weight(e, 50, 20) for e in (0, 49, 50, 55, 60, 69, 70, 100)] == [
        0.0, 0.0, 0.0, 0.25, 0.5, 0.95, 1.0, 1.0
    ]
    assert ramp_weight(10, 10, 0) == 1.0
    assert ramp_weight(9.5, 10, 0) == 0.0


def reference_simple_hierarchy_loss(outputs, fine_labels, epoch, lambda_fine, lambda_coarse, start, ramp):
    """SimpleHierarchyLoss for groups of 5 consecutive fine classes (coarse = fine // 5)."""
    coarse_outputs = outputs.view(outputs.shape[0], -1, 5).sum(dim=2)

    def weight(s, r):
        return 0 if epoch < s else (epoch - s) / r if epoch < s + r else 1

    return (
        weight(start[1], ramp[1]) * lambda_coarse * F.cross_entropy(coarse_outputs, fine_labels // 5)
        + weight(start[0], ramp[0]) * lambda_fine * F.cross_entropy(outputs, fine_labels)
    )


@pytest.mark.parametrize("epoch", [0, 50, 57, 75])
def test_level_weighted_ce_matches_simple_hierarchy_loss(epoch):
    tax = Taxonomy([[c // 5 for c in range(15)]])
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(6, 15, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 15, (6,), generator=g)
    loss = LevelWeightedCrossEntropy((1.0, 0.5), (0, 50), (0, 20), taxonomy=tax, coarse_logits="sum")
    loss.set_epoch(epoch)
    ref = reference_simple_hierarchy_loss(logits, targets, epoch, 1.0, 0.5, (0, 50), (0, 20))
    torch.testing.assert_close(loss(logits, targets), ref)
    torch.testing.assert_close(loss(logits, targets, epoch=epoch), ref)


def test_level_weighted_ce_per_level_logits_and_soft_targets():
    g = torch.Generator().manual_seed(5)
    logits = [torch.randn(4, n, generator=g, dtype=torch.float64) for n in (7, 3, 2)]
    fine = torch.tensor([0, 3, 5, 6])
    targets = [THREE_LEVEL.level_map(l)[fine] for l in range(3)]
    loss = LevelWeightedCrossEntropy((1.0, 0.5, 0.25), start_epochs=(0, 2, 4), ramp_epochs=(0, 2, 0))
    expected = F.cross_entropy(logits[0], targets[0]) + 0.5 * 0.5 * F.cross_entropy(logits[1], targets[1])
    torch.testing.assert_close(loss(logits, targets, epoch=3), expected)
    assert loss.weights_at(3) == (1.0, 0.25, 0.0)
    # fine targets + taxonomy give the same; soft (one-hot) targets too
    with_tax = LevelWeightedCrossEntropy((1.0, 0.5, 0.25), (0, 2, 4), (0, 2, 0), taxonomy=THREE_LEVEL)
    torch.testing.assert_close(with_tax(logits, fine, epoch=3), expected)
    torch.testing.assert_close(loss(logits, THREE_LEVEL.paths()[fine], epoch=3), expected)
    soft = [F.one_hot(t, n).double() for t, n in zip(targets, (7, 3, 2))]
    torch.testing.assert_close(loss(logits, soft, epoch=3), expected)


def test_level_weighted_ce_logsumexp_coarse_is_marginal():
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    fine = torch.tensor([0, 1, 4, 5, 6])
    loss = LevelWeightedCrossEntropy((0.0, 1.0, 0.0), taxonomy=THREE_LEVEL)
    marginal = logits.softmax(1) @ F.one_hot(THREE_LEVEL.level_map(1), 3).double()
    expected = F.nll_loss(marginal.log(), THREE_LEVEL.level_map(1)[fine])
    torch.testing.assert_close(loss(logits, fine), expected)
    full = LevelWeightedCrossEntropy((1.0, 0.7, 0.3), taxonomy=THREE_LEVEL)
    assert torch.autograd.gradcheck(lambda z: full(z, fine), (logits,))


def test_level_weighted_ce_errors():
    loss = LevelWeightedCrossEntropy((1.0, 1.0), taxonomy=fashion_mnist_taxonomy())
    logits = [torch.zeros(2, 10), torch.zeros(2, 5)]
    with pytest.raises(ValueError, match=r"targets\[1\]\[0\] is 5, outside \[0, 5\) at level 1"):
        loss(logits, [torch.tensor([0, 1]), torch.tensor([5, 0])])
    with pytest.raises(ValueError, match=r"targets\[0\] is 12, outside \[0, 10\) \(the taxonomy.s fine classes\)"):
        loss(logits, torch.tensor([12, 0]))
    with pytest.raises(ValueError, match="logits has 3 levels"):
        loss(logits + [torch.zeros(2, 1)], torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="start_epochs has 3 entries"):
        LevelWeightedCrossEntropy((1.0, 1.0), start_epochs=(0, 1, 2))
    with pytest.raises(ValueError, match="taxonomy has 2 levels"):
        LevelWeightedCrossEntropy((1.0, 1.0, 1.0), taxonomy=fashion_mnist_taxonomy())
