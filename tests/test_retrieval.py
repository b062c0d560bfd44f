"""Tests of hcast.metric_learning.retrieval: Recall@K (functional and torchmetrics)."""
import pytest
import torch

geoopt = pytest.importorskip("geoopt")

from hcast.metric_learning.hier import to_poincare
from hcast.metric_learning.retrieval import RecallAtK, recall_at_k


def brute_force_recall(distances, query_labels, gallery_labels, k, leave_one_out):
    """Loop reference: for each query sort the gallery by distance and look at the first k labels."""
    hits = 0
    for i, row in enumerate(distances.tolist()):
        order = sorted((d, j) for j, d in enumerate(row) if not (leave_one_out and j == i))
        hits += any(int(gallery_labels[j]) == int(query_labels[i]) for _, j in order[:k])
    return hits / len(distances)


@pytest.fixture(scope="module")
def fashion_pixels():
    fm = pytest.importorskip("hcast.data.fashion_mnist")
    try:
        ds = fm.FashionMNIST(split="test", download=False)
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    idx = fm.stratified_indices(ds.targets, 120, seed=0)
    x = torch.from_numpy(ds.images[idx]).float().flatten(1) / 255
    return x, ds.targets[idx]


def test_hand_computed():
    # 1-D points; leave-one-out nearest neighbours: 0->1 (same), 1->0 (same), 10->11 (same), 11->10, 5->1? no: 5 is
    # nearest to 1 (|5-1|=4) vs 10 (5): label 0 == 0 -> hit. 30 -> 11 (label 1) vs own label 0 -> miss.
    x = torch.tensor([[0.0], [1.0], [10.0], [11.0], [5.0], [30.0]])
    y = torch.tensor([0, 0, 1, 1, 0, 0])
    assert recall_at_k(x, y, k=1, metric="euclidean").item() == pytest.approx(5 / 6)
    # with k=4, 30's 4 nearest are 11, 10, 5, 1 -> includes label 0
    torch.testing.assert_close(recall_at_k(x, y, k=[1, 4], metric="euclidean"), torch.tensor([5 / 6, 1.0]))


def test_query_and_gallery():
    gallery = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    gallery_labels = torch.tensor([0, 1, 2])
    # q0 -> g0 (hit at 1); q1 -> g1, g0 (miss); q2 -> g0, g2 (hit at 2)
    query = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.4, -0.6]])
    query_labels = torch.tensor([0, 2, 2])
    got = recall_at_k(query, query_labels, gallery, gallery_labels, k=(1, 2), metric="cosine")
    torch.testing.assert_close(got, torch.tensor([1 / 3, 2 / 3]))


@pytest.mark.parametrize("metric", ["cosine", "euclidean", "poincare"])
def test_matches_brute_force_on_fashion_mnist(fashion_pixels, metric):
    x, y = fashion_pixels
    if metric == "poincare":
        x = to_poincare(x.double() / 4)
        ball = geoopt.PoincareBall(c=torch.tensor(0.1, dtype=torch.float64))
        rows = [ball.dist(x[i], x) for i in range(len(x))]
    elif metric == "cosine":
        rows = [-torch.nn.functional.cosine_similarity(x[i : i + 1], x, dim=1) for i in range(len(x))]
    else:
        rows = [(x - x[i]).norm(dim=1) for i in range(len(x))]
    ks = (1, 2, 4, 8)
    got = recall_at_k(x, y, k=ks, metric=metric, chunk_size=32)  # several chunks
    expected = [brute_force_recall(torch.stack(rows), y, y, k, leave_one_out=True) for k in ks]
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float32))
    # raw pixels already retrieve garments far above the 10% of chance
    assert got[0] > 0.5


def test_metric_class_accumulates_batches(fashion_pixels):
    x, y = fashion_pixels
    metric = RecallAtK(k=(1, 4), metric="euclidean")
    for start in range(0, len(x), 50):
        metric.update(x[start : start + 50], y[start : start + 50])
    torch.testing.assert_close(metric.compute(), recall_at_k(x, y, k=(1, 4), metric="euclidean"))
    metric.reset()
    metric.update(x[:10], y[:10])
    torch.testing.assert_close(metric.compute(), recall_at_k(x[:10], y[:10], k=(1, 4), metric="euclidean"))


def test_errors():
    x, y = torch.randn(4, 3), torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match="k=4 exceeds the 3 gallery items"):
        recall_at_k(x, y, k=4)
    with pytest.raises(ValueError, match=r"query_labels has 3 entries but query has 4"):
        recall_at_k(x, y[:3])
    with pytest.raises(TypeError, match=r"query_labels must be an integer \(N,\) tensor"):
        recall_at_k(x, y.float())
    with pytest.raises(ValueError, match="gallery and gallery_labels must be given together"):
        recall_at_k(x, y, gallery=x)
    with pytest.raises(ValueError, match="metric must be one of"):
        recall_at_k(x, y, metric="manhattan")
    with pytest.raises(ValueError, match="k must be >= 1, got 0"):
        recall_at_k(x, y, k=0)
    with pytest.raises(TypeError, match="k must be an int"):
        recall_at_k(x, y, k=1.5)
