"""hcast.optimize_for_inference: outputs against float32 eager, the argument left as it
was, the model's output mode kept, and every fallback announced by a warning."""
from __future__ import annotations

import subprocess
import sys

import pytest
import timm
import torch

import hcast
from hcast import inference as I
from hcast import precision as P
from hcast.ops import superpixels

SIZE = 64


def _photos(batch: int = 3) -> tuple:
    """Normalised scikit-image photos (B, 3, 64, 64) and their SLIC superpixels."""
    skimage_data = pytest.importorskip("skimage.data")
    from skimage.transform import resize

    import numpy as np

    sources = [skimage_data.astronaut, skimage_data.coffee, skimage_data.chelsea]
    imgs = np.stack([resize(sources[i % 3](), (SIZE, SIZE), anti_aliasing=True) for i in range(batch)])
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float()
    mean = torch.tensor(timm.data.IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(timm.data.IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)
    images = (x - mean) / std
    segments = superpixels(images, num_segments=24, method="torch_slic")
    return images, segments


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    kwargs = dict(num_classes=10) if name == "cast_tiny" else dict(level_classes=(6, 3))
    return timm.create_model(name, img_size=SIZE, depths=(1, 1, 1, 1), num_clusters=(8, 4, 2, 2),
                             **kwargs).eval()


def _as_tuple(out):
    return out if isinstance(out, (tuple, list)) else (out,)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("name", ["cast_tiny", "hcast_tiny"])
def test_bf16_logits_close_to_fp32_eager(name, one_torch_thread):
    model = _model(name)
    images, segments = _photos()
    with torch.no_grad():
        expected = model(images, segments)
    fast = hcast.optimize_for_inference(model, precision="bf16")
    assert fast.dtype == torch.bfloat16
    assert next(fast.model.head.parameters() if name == "cast_tiny" else fast.model.parameters()).dtype == torch.bfloat16
    got = fast(images, segments)
    # the model's output structure: one tensor, or the per-level tuple
    assert type(got) is type(expected) and len(_as_tuple(got)) == len(_as_tuple(expected))
    for g, e in zip(_as_tuple(got), _as_tuple(expected)):
        assert g.dtype == torch.float32 and g.shape == e.shape
        assert _rel(g, e) <= I.BF16_MAX_REL_DIFF


def test_fp32_path_equals_eager(one_torch_thread):
    model = _model("cast_tiny")
    images, segments = _photos()
    with torch.no_grad():
        expected = model(images, segments)
    fast = hcast.optimize_for_inference(model, precision="fp32")
    assert fast.dtype == torch.float32
    torch.testing.assert_close(fast(images, segments), expected, rtol=1e-5, atol=1e-5)


def test_argument_unchanged(one_torch_thread):
    model = _model("hcast_tiny").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images, segments = _photos(2)
    fast = hcast.optimize_for_inference(model, precision="bf16", example_inputs=(images, segments), compile=False)
    fast(images, segments)
    assert model.training
    assert all(p.requires_grad and p.dtype == torch.float32 for p in model.parameters())
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before)
    assert fast.model is not model and not fast.training
    with pytest.raises(RuntimeError, match="inference only"):
        fast.train()


def test_bf16_on_cpu_without_native_bf16_warns(monkeypatch, one_torch_thread):
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda *a: False)
    with pytest.warns(I.OptimizationWarning, match="emulated"):
        fast = I.optimize_for_inference(_model("cast_tiny"), precision="bf16")
    assert fast.dtype == torch.bfloat16
    # auto picks fp32 there: no fallback, no warning
    assert I.optimize_for_inference(_model("cast_tiny"), precision="auto").dtype == torch.float32


def test_inaccurate_bf16_falls_back_to_fp32_with_a_warning(monkeypatch, one_torch_thread):
    monkeypatch.setattr(I, "BF16_MAX_REL_DIFF", 0.0)
    model = _model("cast_tiny")
    images, segments = _photos(2)
    with pytest.warns(I.OptimizationWarning, match="falling back to fp32"):
        fast = I.optimize_for_inference(model, precision="bf16", example_inputs=(images, segments), compile=False)
    assert fast.dtype == torch.float32 and "fp32" in fast.path
    with torch.no_grad():
        torch.testing.assert_close(fast(images, segments), model(images, segments), rtol=1e-5, atol=1e-5)


def test_failing_compile_falls_back_to_eager_with_a_warning(monkeypatch, one_torch_thread):
    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.warns(I.OptimizationWarning, match="torch.compile failed.*falling back to eager"):
        fast = I.optimize_for_inference(_model("cast_tiny"), precision="fp32", compile=True)
    images, segments = _photos(1)
    assert fast(images, segments).shape == (1, 10)


def test_bad_arguments():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        I.optimize_for_inference("cast_tiny")
    with pytest.raises(ValueError, match="precision must be one of"):
        I.optimize_for_inference(_model("cast_tiny"), precision="int4")
    with pytest.raises(TypeError, match="example_inputs must be"):
        I.optimize_for_inference(_model("cast_tiny"), example_inputs="images.png")


def test_import_hcast_does_not_import_the_inference_module():
    code = "import sys, hcast; assert 'hcast.inference' not in sys.modules; hcast.optimize_for_inference"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_model_attributes_and_forward_levels_pass_through(one_torch_thread):
    model = _model("hcast_tiny")
    fast = hcast.optimize_for_inference(model, precision="bf16")
    assert fast.num_classes == model.num_classes and fast.pretrained_cfg == model.pretrained_cfg
    with pytest.raises(AttributeError):
        fast.no_such_attribute
    if hasattr(model, "forward_levels"):  # H-CAST's per-level logits, finest first
        images, segments = _photos(2)
        levels = fast.forward_levels(images, segments)
        assert [tuple(t.shape) for t in levels] == [(2, 6), (2, 3)]
        assert all(t.dtype == torch.float32 for t in levels)
