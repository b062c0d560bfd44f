"""Precision: resolve_precision's choices, and what stays exact under bfloat16 autocast
(farthest point sampling returns the float64 indices, superpixel means stay float32)."""
from __future__ import annotations

import pytest
import timm
import torch

import hcast  # noqa: F401
from hcast import precision as P
from hcast.ops import farthest_point_sampling


def test_resolve_precision_choices(monkeypatch, capsys, tmp_path):
    assert P.resolve_precision("fp32", "cpu") is None
    assert P.resolve_precision("bf16", "cpu") is torch.bfloat16
    with pytest.raises(ValueError, match="precision must be one of"):
        P.resolve_precision("fp16", "cpu")
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: False)
    assert P.resolve_precision("auto", "cpu") is None
    assert "precision auto: fp32 on cpu" in capsys.readouterr().out
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: True)
    assert P.resolve_precision("auto", "cpu") is torch.bfloat16
    assert "precision auto: bf16 on cpu" in capsys.readouterr().out


def test_training_precision_falls_back_to_fp16_on_a_gpu_without_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert P.resolve_precision("auto", "cuda", verbose=False, training=True) is torch.float16
    assert P.resolve_precision("auto", "cuda", verbose=False) is None  # inference: float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert P.resolve_precision("auto", "cuda", verbose=False, training=True) is torch.bfloat16


def test_autocast_context():
    with P.autocast("cpu", None):
        assert not torch.is_autocast_enabled("cpu")
    with P.autocast("cpu", torch.bfloat16):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") is torch.bfloat16


def test_cpu_flags_are_read(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    info = tmp_path / "cpuinfo"
    info.write_text("flags\t\t: fpu sse avx512f avx512_bf16 avx512_vnni\n")
    assert P.cpu_has_native_bf16(info)
    info.write_text("flags\t\t: fpu sse avx512f avx512_vnni\n")
    assert not P.cpu_has_native_bf16(info)
    assert not P.cpu_has_native_bf16(tmp_path / "missing")


def test_fps_indices_unchanged_under_bf16_autocast():
    g = torch.Generator().manual_seed(0)
    # Points whose bfloat16 roundings tie: bfloat16 distances would pick other indices.
    points = 1.0 + torch.rand(4, 200, 24, generator=g, dtype=torch.float64) * 1e-3
    expected = farthest_point_sampling(points, 33)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = farthest_point_sampling(points, 33)
        bf16_gram = torch.bmm(points.float(), points.float().transpose(1, 2))
    assert bf16_gram.dtype == torch.bfloat16  # autocast is on around the call
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("max_tokens", [None, 64])
def test_model_under_bf16_autocast(max_tokens, one_torch_thread):
    torch.manual_seed(0)
    model = timm.create_model("cast_tiny", num_classes=10, img_size=64, max_tokens=max_tokens).eval()
    images = torch.randn(2, 3, 64, 64)
    segments = torch.randint(0, 40, (2, 64, 64))
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            cls_token, tokens, _ = model.embed(images, segments)
            out = model.forward_stages(images, segments)
            logits = model(images, segments)
    assert tokens.dtype == torch.float32  # superpixel means in float32
    # The first stage's centroids: FPS on float64 tokens; bf16 blocks change the tokens
    # themselves, so compare with FPS run on the autocast run's own tokens.
    first = model.stages[0].pool.sample_centroids(out["stage_tokens"][0][:, 1:].float(), out["padding_mask"])
    torch.testing.assert_close(out["sampled"][0], first, rtol=0, atol=0)
    assert logits.dtype == torch.bfloat16
    assert torch.isfinite(logits.float()).all()
