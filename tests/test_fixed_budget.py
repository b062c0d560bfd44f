"""The fixed-budget mode (``max_tokens``): batch-independent outputs, equal to the
default mode's for an image evaluated alone, and ids beyond the budget as an error."""
from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from skimage import data as skdata
from skimage.transform import resize

import hcast  # noqa: F401

SIZE = 64  # 8 x 8 grid cells


def photos() -> torch.Tensor:
    """astronaut, coffee, chelsea: a (3, 3, 64, 64) float batch (roughly normalised)."""
    imgs = [resize(f(), (SIZE, SIZE), anti_aliasing=True) for f in (skdata.astronaut, skdata.coffee, skdata.chelsea)]
    return (torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() - 0.45) / 0.25


def grid_segments(counts, seed: int = 0) -> torch.Tensor:
    """(len(counts), 64, 64) ids 0..count-1, each id owning at least one 8 x 8 cell."""
    g = torch.Generator().manual_seed(seed)
    maps = []
    for count in counts:
        cells = torch.cat([torch.arange(count), torch.randint(0, count, (64 - count,), generator=g)])
        cells = cells[torch.randperm(64, generator=g)].view(8, 8)
        maps.append(cells.repeat_interleave(8, 0).repeat_interleave(8, 1))
    return torch.stack(maps)


def pair(name: str, **kwargs):
    """(default-mode model, fixed-budget model) with the same weights, in eval mode."""
    torch.manual_seed(0)
    default = timm.create_model(name, img_size=SIZE, **kwargs).eval()
    budget = timm.create_model(name, img_size=SIZE, max_tokens=64, **kwargs).eval()
    budget.load_state_dict(default.state_dict())
    return default, budget


def as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


@pytest.mark.parametrize("name,kwargs", [("cast_tiny", dict(num_classes=10)),
                                         ("hcast_tiny", dict(level_classes=(6, 3)))])
def test_budget_mode_equals_each_image_alone(name, kwargs, one_torch_thread):
    default, budget = pair(name, **kwargs)
    images, segments = photos(), grid_segments((12, 30, 64))
    with torch.no_grad():
        batched = as_tuple(budget(images, segments))
        for i in range(3):
            alone = as_tuple(default(images[i:i + 1], segments[i:i + 1]))
            for b, a in zip(batched, alone):
                torch.testing.assert_close(b[i:i + 1], a, atol=1e-4, rtol=1e-4)
        # The default mode pads image 0's and 1's tokens to 64: their logits move.
        padded = as_tuple(default(images, segments))
        assert (padded[0][0] - batched[0][0]).abs().max() > 1e-3


def test_budget_outputs_do_not_depend_on_the_batch(one_torch_thread):
    _, budget = pair("cast_tiny", num_classes=10)
    images = photos()
    # Full-resolution ids: some own no grid cell (padded even alone).
    g = torch.Generator().manual_seed(1)
    segments = torch.randint(0, 50, (3, SIZE, SIZE), generator=g)
    segments[1] = segments[1] % 7
    with torch.no_grad():
        batched = budget(images, segments)
        for i in range(3):
            torch.testing.assert_close(batched[i:i + 1], budget(images[i:i + 1], segments[i:i + 1]),
                                       atol=1e-5, rtol=1e-5)
        swapped = budget(images.flip(0), segments.flip(0))
    torch.testing.assert_close(swapped.flip(0), batched, atol=1e-5, rtol=1e-5)


def test_fps_never_picks_a_padded_token(one_torch_thread):
    _, budget = pair("cast_tiny", num_classes=10)
    segments = grid_segments((5, 20, 64))  # 5 tokens < 16 clusters: FPS runs out of points
    with torch.no_grad():
        out = budget.forward_stages(photos(), segments)
    padded = out["padding_mask"]
    assert padded.sum(1).tolist() == [59, 44, 0]
    picked = torch.gather(padded, 1, out["sampled"][0])
    assert not picked.any()


def test_ids_beyond_the_budget_are_an_error():
    _, budget = pair("cast_tiny", num_classes=10)
    segments = grid_segments((12, 30, 64))
    segments[2, 0, 0] = 64
    with pytest.raises(ValueError, match=r"segments must hold superpixel ids in \[0, max_tokens\) = \[0, 64\)"):
        budget(photos(), segments)
    with pytest.raises(ValueError, match="max_tokens"):
        timm.create_model("cast_tiny", max_tokens=0)
