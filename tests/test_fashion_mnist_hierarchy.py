"""Real data: Fashion-MNIST (Debian's dataset-fashion-mnist) with its two-level clothing taxonomy.

A tiny two-head network trained for a few seconds with HCASTLoss: the loss goes down, the
hierarchical metrics are sane, and consistent decoding never produces a path outside the tree.
"""
import numpy as np
import pytest
import torch
from torch import nn

from hcast.data.fashion_mnist import FASHION_MNIST_CLASSES as DATA_CLASSES
from hcast.data.fashion_mnist import FashionMNIST, stratified_indices
from hcast.hierarchy import (
    HCASTLoss,
    HierarchicalMetrics,
    HierarchicalMixup,
    argmax_decode,
    consistent_decode,
    fashion_mnist_taxonomy,
    full_path_accuracy,
    level_accuracy,
    tree_inconsistency_error,
)
from hcast.hierarchy.taxonomies import FASHION_MNIST_CLASSES, FASHION_MNIST_GROUPS

TAX = fashion_mnist_taxonomy()


def test_fashion_mnist_taxonomy_is_the_documented_one():
    assert TAX.num_classes == (10, 5)
    assert TAX.level_names == ("garment", "group")
    assert TAX.names[0] == FASHION_MNIST_CLASSES == tuple(DATA_CLASSES)
    assert TAX.names[1] == ("Tops", "Bottoms", "Dresses", "Footwear", "Bags")
    groups = {TAX.names[1][g]: tuple(TAX.names[0][f] for f in TAX.children(g, level=1)) for g in range(5)}
    assert groups == {
        "Tops": ("T-shirt/top", "Pullover", "Coat", "Shirt"),
        "Bottoms": ("Trouser",),
        "Dresses": ("Dress",),
        "Footwear": ("Sandal", "Sneaker", "Ankle boot"),
        "Bags": ("Bag",),
    }
    assert {k: set(v) for k, v in groups.items()} == {k: set(v) for k, v in FASHION_MNIST_GROUPS.items()}


class TwoHeadMLP(nn.Module):
    """Fine head on the first hidden layer, coarse head on the second (as H-CAST reads the fine
    level from an earlier stage than the coarse one)."""

    def __init__(self):
        super().__init__()
        self.stage1 = nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Linear(128, 64), nn.ReLU())
        self.fine = nn.Linear(128, 10)
        self.coarse = nn.Linear(64, 5)

    def forward(self, x):
        h1 = self.stage1(x)
        return self.fine(h1), self.coarse(self.stage2(h1))


@pytest.fixture(scope="module")
def fashion_subset():
    # Debian's package must be there (CI installs it): no download, no skip.
    test = FashionMNIST(split="test", download=False)
    train_idx = stratified_indices(test.targets, 2000, seed=0)
    eval_idx = stratified_indices(test.targets, 1000, seed=1, exclude=train_idx)

    def tensors(idx):
        x = torch.from_numpy(test.images[idx].astype(np.float32) / 255.0)[:, None]
        x = (x - 0.2860) / 0.3530  # Fashion-MNIST mean / std
        fine = test.targets[idx]
        return x, [fine, TAX.level_map(1)[fine]]

    return tensors(train_idx), tensors(eval_idx)


@pytest.fixture
def one_thread():
    # A model this small trains fastest on one thread (and does not fight other tests for cores).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_train_with_hcast_loss_and_evaluate(fashion_subset, one_thread):
    (x_train, y_train), (x_eval, y_eval) = fashion_subset
    torch.manual_seed(0)
    np.random.seed(0)
    model = TwoHeadMLP()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    crit = HCASTLoss(kl_weight=0.5, label_smoothing=0.1)
    mixup = HierarchicalMixup(mixup_alpha=0.2, cutmix_alpha=0.0, prob=0.5, label_smoothing=0.1,
                              level_classes=TAX.num_classes)
    losses = []
    for epoch in range(4):
        perm = torch.randperm(len(x_train))
        for i in range(0, len(perm), 100):
            idx = perm[i : i + 100]
            x, targets = mixup(x_train[idx].clone(), [y[idx] for y in y_train])
            loss = crit(model(x), targets)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:10])

    model.eval()
    with torch.no_grad():
        logits = list(model(x_eval))
    accs = level_accuracy(logits, y_eval)
    assert accs[0] > 0.65 and accs[1] > 0.8  # garments, groups (chance: 0.1, 0.2)
    fpa = full_path_accuracy(logits, y_eval)
    assert 0.5 < fpa <= min(accs)
    tice = tree_inconsistency_error(logits, TAX)
    assert 0.0 <= tice < 0.3

    preds = consistent_decode(logits, TAX)
    assert TAX.valid_paths_mask(preds).all()
    assert tree_inconsistency_error(preds, TAX) == 0.0
    assert full_path_accuracy(preds, y_eval) <= min(level_accuracy(preds, y_eval))
    # argmax paths that already exist are kept by consistent decoding of a confident model
    am = argmax_decode(logits)
    valid = TAX.valid_paths_mask(am)
    same = (preds[0] == am[0]) & (preds[1] == am[1])
    assert same[valid].float().mean() > 0.95

    metric = HierarchicalMetrics(TAX, top_k=(1, 2))
    for i in range(0, len(x_eval), 250):
        metric.update([x[i : i + 250] for x in logits], [y[i : i + 250] for y in y_eval])
    out = metric.compute()
    assert out["fpa"].item() == pytest.approx(fpa)
    assert out["tice"].item() == pytest.approx(tice)
    assert out["garment_acc@2"] >= out["garment_acc@1"]
    # A trained model's mistakes stay mostly within a group. Mistakes spread uniformly over the
    # other garments would have severity 1.8 (20% of the other garments share a group); ~1.3 here.
    sev = out["mistake_severity"].item()
    assert 1.0 <= sev < 1.6
