"""Bad inputs get a clear error that names the argument (issue 12).

``CASES`` is the table: one row per bad input, with an id, a callable that makes the
bad call, the exception type it must raise and a regular expression its message must
match. Add a row for a new case; cases that need more than "it raises" (a clamped or a
correct result, a switch that turns a check off) are plain tests below the table.
"""
from __future__ import annotations

import functools
import subprocess
import sys
import textwrap
from typing import Callable, NamedTuple

import numpy as np
import pytest
import timm
import torch
from skimage import data as skdata
from skimage.transform import resize
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

import hcast  # noqa: F401  (registers the models with timm)
from hcast.ops import (
    SuperpixelTransform,
    farthest_point_sampling,
    hierarchical_segmentation,
    max_superpixels,
    superpixels,
)


# ----------------------------------------------------------------------------- inputs

@functools.lru_cache(maxsize=None)
def _photo_u8(name: str, height: int, width: int) -> np.ndarray:
    """A skimage.data photo resized to (height, width, 3) uint8 RGB."""
    image = resize(getattr(skdata, name)(), (height, width), anti_aliasing=True)
    return (image * 255).astype(np.uint8)


def photo_u8(name: str, height: int, width: int | None = None) -> torch.Tensor:
    """(1, H, W, 3) uint8 batch of one photo."""
    return torch.from_numpy(_photo_u8(name, height, width or height).copy())[None]


def photo(name: str, height: int, width: int | None = None) -> torch.Tensor:
    """(1, 3, H, W) float batch of one photo, ImageNet-normalised as timm's transforms do."""
    x = photo_u8(name, height, width).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)
    return (x - mean) / std


@functools.lru_cache(maxsize=None)
def model(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, **kwargs).eval()


def with_nan(images: torch.Tensor) -> torch.Tensor:
    images = images.clone()
    images[0, 1, 5, 7] = float("nan")
    return images


def photo_segments(name: str, size: int) -> torch.Tensor:
    return superpixels(photo(name, size), 16, method="torch_slic")


def nan_scores() -> list[torch.Tensor]:
    segments = photo_segments("coffee", 32)
    scores = torch.randn(1, int(segments.max()) + 1, 4, generator=torch.Generator().manual_seed(0))
    scores[0, 2, 1] = float("nan")
    return [scores], segments


def run_model(name: str, images: torch.Tensor, segments: torch.Tensor | None = None, **kwargs):
    with torch.no_grad():
        return model(name, **kwargs)(images, segments)


# ----------------------------------------------------------------------------- the table

class Case(NamedTuple):
    call: Callable[[], object]
    error: type[Exception]
    match: str


CASES: dict[str, Case] = {
    # SEEDS: OpenCV segfaults or hangs past the seed grid it can lay out.
    "seeds_400_segments_on_32x32": Case(
        lambda: superpixels(photo_u8("astronaut", 32), 400), ValueError,
        r"num_segments=400 .*'seeds'.* 32x32 image: at most 288"),
    "seeds_5000_segments_on_32x32_float": Case(
        lambda: superpixels(photo("chelsea", 32), 5000), ValueError,
        r"num_segments=5000 .* 32x32 image: at most 288"),
    "seeds_100000_segments_on_224x224": Case(
        lambda: superpixels(photo_u8("coffee", 224), 100_000), ValueError,
        r"num_segments=100000 .* 224x224 image: at most 12768"),
    "seeds_too_few_segments_on_a_strip": Case(
        lambda: superpixels(photo_u8("coffee", 200, 16), 10), ValueError,
        r"num_segments=10 is too few .* 200x16 image: at least 14"),
    "seeds_transform_5000_segments_on_32x32": Case(
        lambda: SuperpixelTransform(5000)(photo("astronaut", 32)[0]), ValueError,
        r"num_segments=5000 .* 32x32 image: at most 288"),
    "cast_small_on_16x16_images": Case(
        lambda: run_model("cast_small", photo("astronaut", 16)), ValueError,
        r"num_segments=196 .* 16x16 image: at most 80"),
    # A segment map of another size than the images.
    "segments_50x50_for_64x64_images": Case(
        lambda: run_model("cast_tiny", photo("coffee", 64), torch.zeros(1, 50, 50, dtype=torch.long)),
        ValueError,
        r"segments must have the images' height and width: images have shape \(1, 3, 64, 64\), "
        r"segments \(1, 50, 50\).*hcast.ops.resize_segments\(segments, \(64, 64\)\)"),
    "segments_at_grid_size_for_hcast": Case(
        lambda: run_model("hcast_tiny", photo("coffee", 64), photo_segments("coffee", 8),
                          level_classes=(4, 2)),
        ValueError, r"segments must have the images' height and width.*\(1, 8, 8\)"),
    # Negative class counts.
    "cast_num_classes_negative": Case(
        lambda: timm.create_model("cast_tiny", num_classes=-3), ValueError,
        r"num_classes \(0 builds no classifier.*\) must be >= 0, got -3"),
    "cast_reset_classifier_negative": Case(
        lambda: model("cast_tiny").reset_classifier(-1), ValueError,
        r"num_classes \(0 builds no classifier.*\) must be >= 0, got -1"),
    "hcast_num_classes_negative": Case(
        lambda: timm.create_model("hcast_tiny", level_classes=(4, 2), num_classes=-3), ValueError,
        r"num_classes \(0 builds no classifier.*\) must be >= 0, got -3"),
    "hier_vit_num_classes_negative": Case(
        lambda: timm.create_model("hier_vit_small", num_classes=-3), ValueError,
        r"num_classes \(0 builds no classifier.*\) must be >= 0, got -3"),
    # NaN images are reported as images, where the user passed them.
    "cast_nan_images_with_segments": Case(
        lambda: run_model("cast_tiny", with_nan(photo("chelsea", 64)), photo_segments("chelsea", 64)),
        ValueError, r"images must be finite, got 1 NaN .* shape \(1, 3, 64, 64\)"),
    "hcast_nan_images_with_segments": Case(
        lambda: run_model("hcast_tiny", with_nan(photo("chelsea", 64)), photo_segments("chelsea", 64),
                          level_classes=(4, 2)),
        ValueError, r"images must be finite"),
    "cast_inf_images_without_segments": Case(
        lambda: run_model("cast_tiny", photo("chelsea", 64) / 0), ValueError, r"images must be finite"),
    # NaN scores would give labels built from index 0.
    "hierarchical_segmentation_nan_scores": Case(
        lambda: hierarchical_segmentation(*nan_scores()), ValueError,
        r"assignments\[0\] must be finite, got 1 NaN"),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_input_raises(case: Case):
    with pytest.raises(case.error, match=case.match):
        case.call()


# ----------------------------------------------------------------------------- SEEDS bound

@pytest.mark.parametrize("height, width, expected", [
    (16, 16, 80), (32, 32, 288), (224, 224, 12768),  # (H/2 + 1)^2 - 1 for square images
    (32, 64, 577), (16, 161, 815),
])
def test_max_superpixels_seeds(height, width, expected):
    # n = expected: floor(sqrt(n * H / W)) rows of seeds and rows * W // H columns, at
    # most H/2 and W/2; one more request adds a row or column of 1-pixel seeds.
    assert max_superpixels(height, width) == expected


def test_seeds_at_the_bound_runs_on_a_photo():
    ids = superpixels(photo_u8("astronaut", 32), 288)
    # OpenCV lays out 16 x 16 seeds of 2 x 2 pixels; ids stay in range.
    assert ids.shape == (1, 32, 32) and 0 <= int(ids.min()) and int(ids.max()) < 256
    assert len(torch.unique(ids)) > 100


def test_seeds_bound_is_enforced_before_opencv_is_called(monkeypatch):
    """hcast's SEEDS bound (max_superpixels: 288 on 32 x 32) is where OpenCV 4.x was
    measured to stop working: at 288 it returns 256 superpixels, at 289 it segfaulted on
    the machines of 2026-11 (and returned normally on another: undefined behaviour, so no
    test asserts what OpenCV does past it). What hcast does is tested: at the bound it
    runs OpenCV and returns ids; past it, it raises before OpenCV is ever called."""
    image = photo_u8("coffee", 32)
    assert max_superpixels(32, 32, "seeds") == 288
    at_bound = superpixels(image, 288, method="seeds")
    assert at_bound.shape == (1, 32, 32) and 1 < int(at_bound.max()) + 1 <= 288

    import importlib

    module = importlib.import_module("hcast.ops.superpixels")  # the module, not the function hcast.ops exports

    def no_opencv(*args, **kwargs):
        raise AssertionError("OpenCV was called past hcast's SEEDS bound")

    monkeypatch.setattr(module, "_seeds", no_opencv)
    with pytest.raises(ValueError, match=r"num_segments=289 is more than method='seeds' can place"):
        superpixels(image, 289, method="seeds")


# ----------------------------------------------------------------------------- clamped, not rejected

def test_slic_clamps_requests_above_one_per_pixel():
    image = photo_u8("coffee", 24)
    assert torch.equal(superpixels(image, 50_000, method="slic"),
                       superpixels(image, 24 * 24, method="slic"))
    assert int(superpixels(image, 50_000, method="slic").max()) < 24 * 24


def test_torch_slic_clamps_requests_above_one_per_working_pixel():
    image = photo("chelsea", 32)
    assert max_superpixels(32, 32, "torch_slic") == 16 * 16  # downsample=2
    assert torch.equal(superpixels(image, 10**9, method="torch_slic"),
                       superpixels(image, 256, method="torch_slic"))


# ----------------------------------------------------------------------------- validate_args

def test_validate_args_false_skips_value_checks():
    scores, segments = nan_scores()
    maps = hierarchical_segmentation(scores, segments, validate_args=False)
    assert maps[0].shape == segments.shape
    points = torch.tensor([[[0.0], [float("nan")], [2.0]]])
    assert farthest_point_sampling(points, 2, validate_args=False).shape == (1, 2)
    nan_image = with_nan(photo("coffee", 32))
    ids = superpixels(nan_image, 16, method="torch_slic", validate_args=False)
    assert ids.shape == (1, 32, 32)


def test_model_validate_args_switch():
    images, segments = with_nan(photo("chelsea", 64)), photo_segments("chelsea", 64)
    cast = timm.create_model("cast_tiny", validate_args=False).eval()
    assert cast.validate_args is False
    # Without the boundary check nothing inside checks values either (no host sync in
    # the hot path, issue 15): the NaN flows through to the logits. Shape checks stay on.
    with torch.no_grad():
        assert torch.isnan(cast(images, segments)).all()
    cast.validate_args = True
    with pytest.raises(ValueError, match="images must be finite"):
        cast(images, segments)
    cast.validate_args = False
    with pytest.raises(ValueError, match="segments must have the images' height and width"):
        cast(images, segments[:, :32])
