"""upsampled_superpixel_pool equals pooling the materialised upsampled map (CAST's
segmentation stage), for both of its paths (dense and sparse weights)."""
from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F

from hcast.ops import superpixel_pool, upsampled_superpixel_pool

pool_module = importlib.import_module("hcast.ops.upsampled_superpixel_pool")


@pytest.mark.parametrize("dense_limit", [1 << 22, 0])
@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
@pytest.mark.parametrize("shape", [(2, 8, 8, 64, 64), (1, 28, 28, 61, 47), (2, 7, 9, 50, 70)])
def test_equals_materialised_upsampling(monkeypatch, dense_limit, mode, shape):
    monkeypatch.setattr(pool_module, "_DENSE_LIMIT", dense_limit)
    batch, h, w, height, width = shape
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(batch, h, w, 16, generator=gen, requires_grad=True)
    ids = torch.randint(0, 30, (batch, height // 4 + 1, width // 4 + 1), generator=gen)
    segments = F.interpolate(ids[:, None].float(), (height, width), mode="nearest")[:, 0].long()
    segments[0, :5, :5] = 35  # ids 30..34 hold no pixel
    up = F.interpolate(features.permute(0, 3, 1, 2), (height, width), mode=mode, align_corners=False)
    want, padding = superpixel_pool(up.permute(0, 2, 3, 1), segments)
    got, counts = upsampled_superpixel_pool(features, segments, mode)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert torch.equal(counts == 0, padding)
    (grad,) = torch.autograd.grad(got.square().sum(), features)
    (grad_want,) = torch.autograd.grad(want.square().sum(), features)
    torch.testing.assert_close(grad, grad_want, rtol=1e-4, atol=1e-5)


def test_shared_table_and_bad_inputs():
    table = torch.randn(1, 4, 4, 8)
    segments = torch.arange(16 * 16).view(1, 16, 16).repeat(3, 1, 1) // 40
    got, _ = upsampled_superpixel_pool(table, segments, "bicubic")
    up = F.interpolate(table.permute(0, 3, 1, 2), (16, 16), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    want, _ = superpixel_pool(up.expand(3, -1, -1, -1), segments)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="mode"):
        upsampled_superpixel_pool(table, segments, "nearest")
    with pytest.raises(TypeError, match="segments must hold integer ids"):
        upsampled_superpixel_pool(table, segments.float(), "bilinear")
    with pytest.raises(TypeError, match="features must have a floating point dtype"):
        upsampled_superpixel_pool(table.long(), segments, "bilinear")
    with pytest.raises(ValueError, match=r"segments must have shape \(B, H, W\)"):
        upsampled_superpixel_pool(table, segments[0], "bilinear")
