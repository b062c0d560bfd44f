"""Image transforms for superpixel models: resize, augment, normalise, add superpixels.

CAST and H-CAST read superpixel ids next to the image. In the original code the data
loader computes them (OpenCV SEEDS) on the *augmented, normalised* image, so the ids
line up with the pixels the model sees. :class:`WithSuperpixels` does the same in the
DataLoader workers: it wraps an image transform and a superpixel transform (e.g.
:class:`hcast.ops.SuperpixelTransform`) and returns both.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence, Tuple, Union

import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision import transforms as T

from hcast.data.images import to_rgb

__all__ = ["create_eval_transform", "create_transform", "resolve_superpixel_settings", "WithSuperpixels", "ToRGB"]


class ToRGB:
    """Convert any PIL image (grayscale ``"L"``, ``"RGBA"``, palette, 16-bit ...) to 8-bit ``"RGB"``
    with :func:`hcast.data.images.to_rgb`.

    Grayscale images become three equal channels, as models pretrained on RGB expect; 16-bit
    images are scaled to 8 bits, not clipped.
    """

    def __call__(self, image: Image.Image) -> Image.Image:
        return to_rgb(image)

    def __repr__(self) -> str:
        return "ToRGB()"


def _size_pair(input_size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    if isinstance(input_size, int):
        size = (input_size, input_size)
    else:
        size = tuple(int(s) for s in input_size)[-2:]
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"input_size: expected a positive int or (H, W) / (C, H, W), got {input_size!r}.")
    return size  # type: ignore[return-value]


def create_transform(
    input_size: Union[int, Sequence[int]],
    is_training: bool = False,
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
    scale: Tuple[float, float] = (0.7, 1.0),
    hflip: float = 0.5,
) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image -> (3, H, W) float32 tensor normalised with ``mean``/``std``.

    Evaluation resizes the whole image to ``input_size`` (no center crop: small images
    such as Fashion-MNIST's 28x28 garments fill the frame). Training adds a random
    resized crop covering ``scale`` of the area (aspect ratio 3/4..4/3) and a
    horizontal flip with probability ``hflip``: light augmentation, suited to short
    fine-tuning runs; mixup/cutmix are applied later, on the batch.

    Args:
        input_size: the model's input size, an int or (H, W) or (C, H, W)
            (``model.pretrained_cfg["input_size"]``).
        is_training: add the random crop and flip.
        mean, std: per-channel normalisation, in [0, 1] pixel units.
        scale: area range of the random resized crop (training only).
        hflip: probability of a horizontal flip (training only).

    Raises:
        ValueError: for a bad ``input_size`` or ``scale``.
    """
    size = _size_pair(input_size)
    if not (0.0 < scale[0] <= scale[1] <= 1.0):
        raise ValueError(f"scale: expected 0 < min <= max <= 1, got {scale!r}.")
    ops: list = [ToRGB()]
    if is_training:
        ops.append(T.RandomResizedCrop(size, scale=scale, ratio=(3 / 4, 4 / 3), antialias=True))
        if hflip > 0:
            ops.append(T.RandomHorizontalFlip(hflip))
    else:
        ops.append(T.Resize(size, antialias=True))
    ops += [T.ToTensor(), T.Normalize(mean=tuple(mean), std=tuple(std))]
    return T.Compose(ops)


def create_eval_transform(model: Any = None, pretrained_cfg: Optional[Mapping[str, Any]] = None
                          ) -> Callable[[Image.Image], torch.Tensor]:
    """The evaluation transform a model's ``pretrained_cfg`` asks for, built by timm.

    ``timm.data.resolve_data_config`` reads ``input_size``, ``interpolation``, ``mean``,
    ``std``, ``crop_pct`` and ``crop_mode`` from the cfg and ``timm.data.create_transform``
    builds the transform: for the released CAST / H-CAST tags a bicubic resize of the
    short side to ``224 / 0.875 = 256``, a 224 center crop and normalisation (iNat21's mean
    and std for ``hcast_small.inat21_mini``), as the original evaluation
    (``deit/datasets.py`` ``build_transform``). A model folder written by ``hcast
    finetune`` asks for the whole image instead (``crop_pct=1``, ``crop_mode="squash"``),
    the transform its validation used. :class:`ToRGB` comes first, so grayscale or RGBA
    files work.

    Args:
        model: a timm model (its ``pretrained_cfg``), or
        pretrained_cfg: a cfg dict (e.g. ``model.pretrained_cfg``).

    Returns:
        PIL image -> (3, H, W) float32 normalised tensor.

    Raises:
        ValueError: neither ``model`` nor ``pretrained_cfg`` given.
    """
    from timm.data import create_transform as timm_create_transform
    from timm.data import resolve_data_config

    if model is None and pretrained_cfg is None:
        raise ValueError("create_eval_transform: pass model=... or pretrained_cfg=... to read the transform from.")
    if model is not None:
        config = resolve_data_config({}, model=model)
    else:
        config = resolve_data_config({}, pretrained_cfg=dict(pretrained_cfg))
    transform = timm_create_transform(**config, is_training=False)
    return T.Compose([ToRGB(), *transform.transforms])


def resolve_superpixel_settings(model: Any, method: Optional[str] = None, num_segments: Optional[int] = None,
                                input_size: Optional[Union[int, Sequence[int]]] = None,
                                default_method: str = "seeds") -> Tuple[str, int]:
    """The superpixel method and count a model is run with, checked before any image is read.

    Args:
        model: a CAST / H-CAST model (anything with ``pretrained_cfg`` and, for the check,
            ``grid_size``: its (h, w) feature grid); a patch model (Hier-ViT) has no grid
            and is not checked.
        method, num_segments: what the user asked for; ``None``: the model's
            ``pretrained_cfg`` (``superpixel_method``, ``num_segments``), else
            ``default_method`` and 196.
        input_size: the image side (int) or (H, W) in pixels; ``None``: the model's
            ``pretrained_cfg`` input size.
        default_method: the method when neither the arguments nor the config name one.

    Returns:
        ``(method, num_segments)``.

    Raises:
        ValueError: an input size that is not a positive multiple of the model's stem stride
            (8 pixels for CAST); ``num_segments`` under 1, or more than ``method`` can make at the input
            size (:func:`hcast.ops.max_superpixels`: SEEDS would crash or hang in OpenCV)
            or than the model's feature grid has cells (every further superpixel is an
            empty token: a config asking for 100,000 would exhaust memory in attention).
    """
    from hcast.ops import max_superpixels

    cfg = getattr(model, "pretrained_cfg", None) or {}
    given = "num_segments" if num_segments is not None else "the model's num_segments"
    method = method or cfg.get("superpixel_method") or default_method
    num_segments = int(num_segments if num_segments is not None else (cfg.get("num_segments") or 196))
    if num_segments < 1:
        raise ValueError(f"{given}: expected a positive number of superpixels, got {num_segments}.")
    grid = getattr(model, "grid_size", None)
    if grid is None:  # a patch model (Hier-ViT): superpixels are not read
        return method, num_segments
    height, width = _size_pair(input_size if input_size else tuple(cfg.get("input_size", (3, 224, 224))[-2:]))
    stride = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    stride = int(stride[0]) if isinstance(stride, (tuple, list)) else int(stride or 1)
    if height % stride or width % stride or height < stride or width < stride:
        # the conv stem's stride: a smaller image has no feature grid cell, another size fails in the stem
        raise ValueError(
            f"input_size: {height}x{width} inputs do not fit the model's stem, whose stride is {stride} pixels: "
            f"height and width must be positive multiples of {stride}; pass e.g. input_size="
            f"{max(stride, height - height % stride)}.")
    limit = max_superpixels(height, width, method)
    cells = int(grid[0]) * int(grid[1])
    if getattr(model, "model_stage", None) == "segmentation":
        # CAST segmentation encoders pool the stem features upsampled to the superpixels'
        # resolution (hcast.ops.upsampled_superpixel_pool): no superpixel is an empty token
        cells = limit
    if num_segments > min(limit, cells):
        raise ValueError(
            f"{given}={num_segments} is more than {method} superpixels can make on {height}x{width} inputs "
            f"(at most {limit}) or than the model's {grid[0]}x{grid[1]} feature grid has cells ({cells}); pass "
            f"num_segments={min(limit, cells)} or fewer.")
    return method, num_segments


class WithSuperpixels:
    """Apply an image transform, then compute the transformed image's superpixels.

    Args:
        transform: PIL image -> (3, H, W) normalised float tensor (e.g. from
            :func:`create_transform`).
        superpixel_transform: (3, H, W) normalised float tensor -> (H, W) int64
            superpixel ids (e.g. ``hcast.ops.SuperpixelTransform(num_segments=64)``).

    Returns (from ``__call__``): a pair ``(image (3,H,W) float32, segments (H,W) int64)``;
    PyTorch's default collate turns a batch of them into ``[images (B,3,H,W),
    segments (B,H,W)]``. Both callables must be picklable for DataLoader workers.
    """

    def __init__(self, transform: Callable, superpixel_transform: Callable) -> None:
        self.transform = transform
        self.superpixel_transform = superpixel_transform

    def __call__(self, image: Image.Image) -> Tuple[torch.Tensor, torch.Tensor]:
        image = self.transform(image)
        return image, self.superpixel_transform(image)

    def __repr__(self) -> str:
        return f"WithSuperpixels(transform={self.transform!r}, superpixel_transform={self.superpixel_transform!r})"
