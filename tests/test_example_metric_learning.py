"""Runs examples/metric_learning_hier.py end to end on a tiny Fashion-MNIST setting with CAST."""
import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("geoopt")
pytest.importorskip("pytorch_metric_learning")

from hcast.data.fashion_mnist import DEBIAN_FASHION_MNIST_DIR  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "metric_learning_hier.py"


@pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists(),
    reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)",
)
def test_metric_learning_example_runs_with_and_without_hier(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("metric_learning_hier", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = tmp_path / "results.json"
    results = example.main([
        "--model", "cast_tiny", "--train-size", "32", "--test-size", "24", "--img-size", "32",
        "--epochs", "1", "--batch-size", "32", "--emb", "16", "--num-hproxies", "16", "--topk", "5",
        "--json", str(out),
    ])
    assert json.loads(out.read_text())["hier"] == results["hier"]
    for run in ("baseline", "hier"):
        recalls = [results[run][f"R@{k}"] for k in (1, 2, 4, 8)]
        assert all(0.0 <= r <= 1.0 for r in recalls)
        assert recalls == sorted(recalls)  # Recall@K never decreases with K
    printed = capsys.readouterr().out
    assert "[hier] epoch 1/1" in printed and "hier loss 0.0000" not in printed.split("[hier]")[1]
    assert "superpixels for 56 images" in printed  # CAST got superpixels from hcast.ops
