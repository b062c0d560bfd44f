"""`hcast benchmark` and --precision of evaluate / predict through optimize_for_inference."""
from __future__ import annotations

import argparse

import pytest
import timm
import torch

import hcast  # noqa: F401
from hcast.cli import _inference_model, main
from hcast.inference import InferenceModule


def test_benchmark_prints_each_path_with_the_cpu_flags(capsys, one_torch_thread):
    assert main(["benchmark", "cast_tiny", "--no-pretrained", "-b", "1", "--repeats", "1", "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert "weights: RANDOM" in text and "AVX-512 BF16" in text and "AMX" in text and "load average" in text
    for path in ("fp32 eager", "bf16 autocast eager", "optimize_for_inference(auto)"):
        assert path in text
    row = next(line for line in text.splitlines() if line.startswith("fp32 eager "))
    assert "1.00x" in row and "100.0%" in row


def test_benchmark_bad_flags_exit_2(capsys):
    assert main(["benchmark", "cast_tiny", "--no-pretrained", "-b", "0"]) == 2
    assert "--batch-size: expected an int >= 1" in capsys.readouterr().err


def test_precision_flag_goes_through_optimize_for_inference(capsys):
    model = timm.create_model("cast_tiny", num_classes=4, depths=(1, 1, 1, 1)).eval()
    args = argparse.Namespace(precision="bf16")
    fast, dtype = _inference_model(model, args, torch.device("cpu"))
    assert isinstance(fast, InferenceModule) and fast.dtype == torch.bfloat16 and dtype is None
    assert "optimize_for_inference: bf16" in capsys.readouterr().out
    assert next(model.parameters()).dtype == torch.float32  # the loaded model itself is unchanged

