"""DDP: `hcast finetune` under torchrun with 2 CPU processes (gloo, localhost only).

The evaluation metrics the two processes compute together (torchmetrics, summed over
ranks) must equal a single-process evaluation of the saved weights on the same
validation images, and only rank 0 may print and write.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from torch.utils.data import DataLoader, Subset

from hcast.data.fashion_mnist import DEBIAN_FASHION_MNIST_DIR

pytestmark = pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)",
)

TINY_ARGS = [
    "--model", "hcast_tiny", "--model-kwargs", "embed_dim=32", "depths=[1,1,1,1]", "num_heads=2",
    "--input-size", "32", "--num-segments", "16", "--superpixel-method", "slic",
]


def test_torchrun_two_processes_match_a_single_process(tmp_path):
    import timm

    torch.set_num_threads(1)  # as the two processes ran (--threads 1): the same arithmetic

    from hcast import train as engine
    from hcast.data import WithSuperpixels, create_train_val_datasets, create_transform
    from hcast.hierarchy import Taxonomy
    from hcast.ops import SuperpixelTransform

    out = tmp_path / "run"
    # 29 validation images: the shards hold 15 and 14, no padding, no duplicates
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "hcast.cli", "finetune", *TINY_ARGS, "--data", "fashion-mnist", "--output", str(out),
        "--train-samples", "64", "--val-samples", "29", "--batch-size", "8", "--epochs", "1",
        "--max-steps", "3", "--workers", "0", "--threads", "1", "--no-progress", "--device", "cpu",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "on cpu x2" in proc.stdout  # two processes took part
    assert proc.stdout.count("epoch 1/1:") == 1  # only rank 0 prints
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(logged) == 1  # only rank 0 writes
    ddp_metrics = logged[0]["val"]
    assert logged[0]["train"]["steps"] == 3  # per process: 64 images / 2 ranks / batch 8 -> 4, capped at 3
    assert ddp_metrics["num_samples"] == 29

    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    taxonomy = Taxonomy.load(out / "taxonomy.json")
    val_tf = WithSuperpixels(create_transform(32), SuperpixelTransform(num_segments=16, method="slic"))
    _, val = create_train_val_datasets("fashion-mnist", None, val_tf, train_samples=64, val_samples=29, seed=0)
    # CAST attends over padded superpixel tokens (as the original code does), so logits depend
    # slightly on which images share a batch: replay exactly the batches each rank saw
    # (its ShardSampler shard, 2 x 8 images per batch), one after the other, in one process.
    batches = [
        batch
        for rank in range(2)
        for batch in DataLoader(Subset(val, list(engine.ShardSampler(len(val), rank, 2))), batch_size=16)
    ]
    single = engine.evaluate(model, batches, taxonomy, torch.device("cpu"))
    for key in ("plain", "consistent"):
        assert ddp_metrics[key]["level_accuracy"] == single[key]["level_accuracy"]
        for name in ("fpa", "tice", "mistake_severity", "hprecision", "hrecall"):
            assert ddp_metrics[key][name] == single[key][name], (key, name)
    assert single["num_samples"] == 29
