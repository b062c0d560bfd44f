"""One graph: with precomputed superpixels, ``validate_args=False`` and (for CAST /
H-CAST) the fixed-budget mode, the models compile with ``fullgraph=True``, without graph
breaks, without recompiling for a new batch size or new segment maps."""
from __future__ import annotations

import pytest
import timm
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounter

import hcast  # noqa: F401

SIZE = 64


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "hier_vit_small":
        return timm.create_model(name, level_classes=(6, 3), depth=3, embed_dim=96, num_heads=2, img_size=SIZE)
    kwargs = dict(num_classes=10) if name == "cast_tiny" else dict(level_classes=(6, 3))
    # Few blocks and clusters: the FPS loop unrolls once per sample, and compiling is slow.
    return timm.create_model(name, img_size=SIZE, max_tokens=64, validate_args=False, depths=(1, 1, 1, 1),
                             num_clusters=(8, 4, 2, 2), **kwargs)


def inputs(batch: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, SIZE, SIZE, generator=g)
    segments = torch.randint(0, 64, (batch, SIZE, SIZE), generator=g)
    return images, segments


def call_args(name, images, segments):
    return (images,) if name.startswith("hier_vit") else (images, segments)


@pytest.mark.parametrize("name", ["cast_tiny", "hcast_tiny", "hier_vit_small"])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_no_graph_breaks(name, mode, one_torch_thread):
    model = getattr(build(name), mode)()
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(*call_args(name, *inputs(2, 0)))
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cast_tiny", "hcast_tiny"])
def test_new_batch_sizes_and_segments_do_not_recompile(name, one_torch_thread):
    model = build(name).eval()
    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    images, segments = inputs(2, 0)
    torch._dynamo.mark_dynamic(images, 0)
    torch._dynamo.mark_dynamic(segments, 0)
    with torch.no_grad():
        compiled(images, segments)
        for batch, seed in ((3, 1), (5, 2), (2, 3)):
            out = compiled(*inputs(batch, seed))
            expected = model(*inputs(batch, seed))
            for o, e in zip(out if isinstance(out, tuple) else (out,), expected if isinstance(expected, tuple) else (expected,)):
                torch.testing.assert_close(o, e)
    assert counter.frame_count == 1


@pytest.mark.slow
def test_compiled_training_step_matches_eager(one_torch_thread):
    """AOT autograd traces forward and backward as one graph; the gradients are eager's.
    (Inductor's code generation is exercised by benchmarks/models.py: compiling there
    takes minutes on 2 cores.)"""
    model = build("hcast_tiny").train()
    for module in model.modules():  # no dropout (graph pooling's is 0.1): compare values
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    images, segments = inputs(3, 4)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    grads = []
    for run in (model, compiled):
        model.zero_grad()
        sum(level.square().sum() for level in run(images, segments)).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 20
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-5, rtol=1e-4, msg=name)
