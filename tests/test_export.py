"""Export: torch.export with a dynamic batch, ONNX run in ONNX Runtime at another batch
size than the exported one, and ``hcast export``."""
from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

import hcast  # noqa: F401
from hcast.cli import main
from hcast.export import example_inputs, export_onnx, export_program, prepare_for_export

SIZE = 64


def tiny(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    kwargs = dict(num_classes=10) if name == "cast_tiny" else dict(level_classes=(6, 3))
    # Few blocks and clusters: the FPS loop unrolls once per sample.
    return timm.create_model(name, img_size=SIZE, depths=(1, 1, 1, 1), num_clusters=(8, 4, 2, 2), **kwargs).eval()


def eager(model, max_tokens, batch):
    ready = prepare_for_export(model, max_tokens)
    images, segments = example_inputs(ready, batch)
    images = images + torch.linspace(0, 1, batch).view(-1, 1, 1, 1)  # not example_inputs' values
    with torch.no_grad():
        out = ready(images, segments)
    return images, segments, out if isinstance(out, tuple) else (out,)


def test_prepare_for_export_copies_and_checks():
    model = tiny("cast_tiny")
    ready = prepare_for_export(model, 64)
    assert (ready.max_tokens, ready.validate_args, ready.training) == (64, False, False)
    assert model.max_tokens is None and model.validate_args
    with pytest.raises(ValueError, match="max_tokens"):
        prepare_for_export(model, 0)
    with pytest.raises(TypeError, match="CAST"):
        prepare_for_export(torch.nn.Linear(2, 2))


@pytest.mark.slow
def test_torch_export_dynamic_batch(one_torch_thread):
    model = tiny("cast_tiny")
    program = export_program(model, max_tokens=64)
    for batch in (1, 3):
        images, segments, expected = eager(model, 64, batch)
        with torch.no_grad():
            torch.testing.assert_close(program.module()(images, segments), expected[0], atol=1e-5, rtol=1e-5)
    # ids outside the exported budget are refused by the program itself, not scattered out of range
    for bad in (64, -1):
        wrong = segments.clone()
        wrong[0, :4, :4] = bad
        with pytest.raises(RuntimeError, match=r"ids in \[0, max_tokens\) = \[0, 64\)"):
            program.module()(images, wrong)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["hcast_tiny"])  # every level an output; CAST's one-output graph: tests/test_cli.py
def test_onnx_runtime_equals_eager_at_another_batch_size(name, tmp_path, one_torch_thread):
    ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime is a test extra: pip install hcast[test]")
    model = tiny(name)
    path = export_onnx(model, tmp_path / "model.onnx", max_tokens=64)  # traced at batch 2
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images", "segments"]
    images, segments, expected = eager(model, 64, 3)
    outputs = session.run(None, {"images": images.numpy(), "segments": segments.numpy()})
    assert len(outputs) == len(expected)
    for got, want in zip(outputs, expected):
        np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=1e-4)
    # ids outside the budget: ONNX Runtime refuses them (a negative id is not read from the end)
    for bad in (64, -1):
        wrong = segments.clone()
        wrong[0, :4, :4] = bad
        with pytest.raises(Exception, match="out of data bounds"):
            session.run(None, {"images": images.numpy(), "segments": wrong.numpy()})


@pytest.mark.slow
def test_cli_export_torch_program(tmp_path, capsys, one_torch_thread):
    out = tmp_path / "cast.pt2"
    # 32 x 32: a 4 x 4 grid, 17 points for farthest point sampling (a short loop)
    assert main(["export", "cast_tiny", "--no-pretrained", "--format", "torch-export", "-o", str(out),
                 "--img-size", "32", "32", "--max-tokens", "16"]) == 0
    assert "exported cast_tiny as torch-export" in capsys.readouterr().out
    program = torch.export.load(str(out))
    images = torch.randn(3, 3, 32, 32)
    segments = torch.randint(0, 16, (3, 32, 32))
    assert program.module()(images, segments).shape == (3, 1000)


def test_cli_export_rejects_hier_vit(tmp_path, capsys):
    assert main(["export", "hier_vit_small", "--no-pretrained", "-o", str(tmp_path / "x.onnx")]) == 2
    assert "export takes CAST / H-CAST models" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()
