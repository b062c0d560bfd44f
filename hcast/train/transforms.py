"""Training and validation transforms from timm's data pipeline, configured by a :class:`FinetuneConfig`.

``timm.data.create_transform`` builds both (random resized crop, flip, RandAugment, color
jitter, random erasing, interpolation, crop_pct), as the H-CAST authors'
``deit/dataset/datasets.py`` ``build_transform`` does; hcast adds :class:`ToRGB` in front
(grayscale and RGBA files) and, separately, the superpixels of the augmented image
(:class:`hcast.data.WithSuperpixels`).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Tuple

from torchvision import transforms as T

from hcast.data import ToRGB
from hcast.train.config import FinetuneConfig

__all__ = ["create_train_transform", "create_val_transform", "val_data_config"]

# The "whole image, no crop" validation: the image squashed to the input size. Small inputs
# (Fashion-MNIST's 28x28 garments) fill the frame instead of losing their border to a crop.
WHOLE_IMAGE = {"crop_pct": 1.0, "crop_mode": "squash", "interpolation": "bilinear"}


def val_data_config(config: FinetuneConfig) -> Dict[str, Any]:
    """The crop settings of the validation transform, as timm's ``data_config`` keys.

    ``config.eval_crop_pct=None``: :data:`WHOLE_IMAGE`; a number: a bicubic resize of the
    short side to ``size / eval_crop_pct`` and a center crop (the authors' evaluation).
    With ``config.eval_mean`` / ``eval_std`` set, also ``mean`` and ``std``. Written into the
    model folder, so ``hcast evaluate`` uses the same transform.
    """
    if config.eval_crop_pct is None:
        out = dict(WHOLE_IMAGE)
    else:
        out = {"crop_pct": float(config.eval_crop_pct), "crop_mode": "center", "interpolation": "bicubic"}
    if config.eval_mean is not None:
        out.update(mean=tuple(config.eval_mean), std=tuple(config.eval_std))
    return out


def _size(config: FinetuneConfig, data_config: Mapping[str, Any]) -> Tuple[int, int]:
    if config.input_size:
        return (int(config.input_size), int(config.input_size))
    return tuple(int(s) for s in data_config["input_size"][-2:])  # type: ignore[return-value]


def create_train_transform(config: FinetuneConfig, data_config: Mapping[str, Any]) -> Callable:
    """PIL image -> (3, H, W) float32 normalised tensor, augmented as ``config`` says.

    Args:
        config: ``input_size``, ``scale_min``, ``hflip``, ``auto_augment``,
            ``color_jitter``, ``train_interpolation``, ``reprob``/``remode``/``recount``.
        data_config: the model's (``timm.data.resolve_data_config({}, model=model)``):
            ``input_size``, ``mean``, ``std``.

    With ``config.superpixels == "cache"`` use :func:`create_val_transform` for training
    images instead: :class:`hcast.data.SuperpixelCache` flips them with their superpixels.
    """
    from timm.data import create_transform

    tf = create_transform(
        input_size=_size(config, data_config), is_training=True, scale=(config.scale_min, 1.0),
        hflip=config.hflip, color_jitter=config.color_jitter, auto_augment=config.auto_augment,
        interpolation=config.train_interpolation, mean=tuple(data_config["mean"]), std=tuple(data_config["std"]),
        re_prob=config.reprob, re_mode=config.remode, re_count=config.recount,
    )
    return T.Compose([ToRGB(), *tf.transforms])


def create_val_transform(config: FinetuneConfig, data_config: Mapping[str, Any]) -> Callable:
    """PIL image -> (3, H, W) float32 normalised tensor for validation (see :func:`val_data_config`)."""
    from timm.data import create_transform

    crop = {"mean": tuple(data_config["mean"]), "std": tuple(data_config["std"]), **val_data_config(config)}
    tf = create_transform(input_size=_size(config, data_config), is_training=False, **crop)
    return T.Compose([ToRGB(), *tf.transforms])
