"""Writing hcast models out in the original repositories' checkpoint layouts, for tests.

Shared by the equality tests (tests/test_cast_reference.py, tests/test_loading_contract.py):
random weights in an hcast model, turned into the key layout the original code saves
(DeiT ``{'model': ...}``, MoCo v3 ``{'state_dict': {'module.base_encoder.' ...}}``, H-CAST
heads ``head`` / ``family_head`` / ``manufacturer_head``), and the oracle
(``reference_cast.ReferenceCAST``) loaded strictly from the same weights.
"""
from __future__ import annotations

import re

import numpy as np
import timm
import torch
from skimage import data as skdata
from skimage.transform import resize

from reference_cast import ReferenceCAST

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def photos(size: int) -> torch.Tensor:
    """astronaut, coffee, chelsea as a normalised (3, 3, size, size) batch."""
    imgs = [resize(f(), (size, size), anti_aliasing=True) for f in (skdata.astronaut, skdata.coffee, skdata.chelsea)]
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float()
    return (x - MEAN) / STD


def to_original(model, pos_embed: str = "learn", rng: torch.Generator | None = None) -> dict:
    """hcast state dict -> the original's key layout (inverse of checkpoint_filter_fn).

    The last stage's unused ``fc1``/``fc2`` are filled with random values: the original
    has them, hcast drops them."""
    rng = rng or torch.Generator().manual_seed(0)
    depths = model.depths
    starts = [sum(depths[:i]) for i in range(len(depths))]
    dim = model.embed_dim
    out = {}
    for key, value in model.state_dict().items():
        m = re.match(r"stages\.(\d+)\.blocks\.(\d+)\.(.*)", key)
        if m:
            stage, index, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            out[f"blocks{stage + 1}.{starts[stage] + index}.{rest}"] = value  # global index
            out[f"blocks.{starts[stage] + index}.{rest}"] = value
            continue
        m = re.match(r"stages\.(\d+)\.pool\.(.*)", key)
        if m:
            rest = m.group(2)
            for new, old in (("assign.", "centroid_fc."), ("fc1_norm.", "fc1.0."), ("fc1.", "fc1.1."),
                             ("fc2_norm.", "fc2.0."), ("fc2.", "fc2.1.")):
                if rest.startswith(new):
                    rest = old + rest[len(new):]
                    break
            out[f"pool{int(m.group(1)) + 1}.pool_block.{rest}"] = value
            continue
        m = re.match(r"heads\.(\d+)\.(.*)", key)
        if m:
            name = ("head", "family_head", "manufacturer_head")[int(m.group(1))]
            out[f"{name}.{m.group(2)}"] = value
            continue
        out[key] = value
    last = len(depths)
    for name, shape in (("fc1.0.weight", (dim,)), ("fc1.0.bias", (dim,)), ("fc1.1.weight", (4 * dim, dim)),
                        ("fc1.1.bias", (4 * dim,)), ("fc2.0.weight", (4 * dim,)), ("fc2.0.bias", (4 * dim,)),
                        ("fc2.1.weight", (dim, 4 * dim)), ("fc2.1.bias", (dim,))):
        out[f"pool{last}.pool_block.{name}"] = torch.randn(shape, generator=rng)
    if pos_embed == "sincos":
        out["pe_token"] = out["pos_embed"][:, :1].clone()
        out["pos_embed"] = out["pos_embed"][:, 1:].clone()
    return out


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random values everywhere, BatchNorm statistics included, so no key can be
    confused with another and nothing sits at a trivial init value."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                if name.endswith("running_var"):
                    tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
                elif name == "pos_embed" and not model.pos_embed.requires_grad:
                    continue  # fixed sin-cos
                else:
                    tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.1
                                 + (1.0 if name.endswith("norm.weight") or "norm1.weight" in name
                                    or "norm2.weight" in name else 0.0))
    return model


def make_source(name: str, **kwargs) -> torch.nn.Module:
    return randomise(timm.create_model(name, pretrained=False, **kwargs)).eval()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().abs().max() / b.detach().abs().max().clamp(min=1e-12))


def reference_from(original: dict, **kwargs) -> ReferenceCAST:
    ref = ReferenceCAST(**kwargs).eval()
    missing, unexpected = ref.load_state_dict(original, strict=True)
    assert not missing and not unexpected
    return ref


def save_deit(path, original):
    torch.save({"model": original, "epoch": 299, "args": None}, path)


def save_moco(path, original, rng):
    state = {}
    for k, v in original.items():
        state[f"module.base_encoder.{k}"] = v
        state[f"module.momentum_encoder.{k}"] = v + 1  # must not be loaded
    dim = original["norm.weight"].shape[0]
    for i, shape in enumerate([(32, dim), (32,), (32,)]):
        state[f"module.base_encoder.head.{i}.weight"] = torch.randn(shape, generator=rng)
    state["module.predictor.0.weight"] = torch.randn(16, 16, generator=rng)
    torch.save({"epoch": 100, "arch": "cast_small", "state_dict": state, "optimizer": {}}, path)


