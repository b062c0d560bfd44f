"""Export CAST / H-CAST as one graph: ``torch.export`` programs and ONNX files.

The exported graph takes ``(images, segments)``: normalised images (B, 3, H, W) float32
and superpixel ids (B, H, W) int64 computed *outside* the graph (SEEDS in OpenCV,
``hcast.ops.superpixels(..., method="torch_slic")``, ...). Inside it, everything has a
static shape: the model runs in its fixed-budget mode (``max_tokens``: padded tokens
masked out, outputs independent of the batch), value checks are off
(``validate_args=False``), farthest point sampling is a loop over the fixed sample count
(float64 gathers, minima, argmaxes) and superpixel pooling a scatter with a sum
reduction, so ``torch.export`` and ONNX (opset 18, ``ScatterElements`` with
``reduction="add"``) take it as it is. The batch dimension is dynamic; the image size
is the one exported. See docs/deployment.md for a serving loop.

Hier-ViT needs no superpixels and exports as any timm ViT.
"""
from __future__ import annotations

import copy
import os
from typing import Optional, Tuple, Union

import torch

from hcast import _validation as V
from hcast._io import atomic_write, check_output_path
from hcast.ops.superpixels import max_token_budget

__all__ = ["EXPORT_FORMATS", "check_img_size", "prepare_for_export", "example_inputs", "export_program", "export_onnx",
           "export_model"]

#: the formats :func:`export_model` writes
EXPORT_FORMATS = ("onnx", "torch-export")


def check_img_size(model: torch.nn.Module, img_size: Optional[Tuple[int, int]] = None) -> Tuple[int, int]:
    """The (H, W) an export of ``model`` takes: ``img_size``, else the model's own; checked.

    Raises:
        ValueError: a size that is not two positive multiples of the model's stem stride
            (8 pixels for CAST), which the stem could not take.
    """
    size = tuple(img_size) if img_size is not None else tuple(model.patch_embed.img_size)
    stride = int(model.patch_embed.patch_size[0])
    if (len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < stride or s % stride
                              for s in size)):
        raise ValueError(f"img_size: expected (H, W), positive multiples of the model's {stride}-pixel stem stride "
                         f"(e.g. {tuple(model.patch_embed.img_size)}), got {img_size!r}.")
    return size  # type: ignore[return-value]


def prepare_for_export(model: torch.nn.Module, max_tokens: Optional[int] = None,
                       img_size: Optional[Tuple[int, int]] = None) -> torch.nn.Module:
    """A copy of a CAST / H-CAST ``model`` set up for one graph: eval mode, fixed-budget
    mode, no value checks.

    Args:
        model: a :class:`hcast.models.CAST` (or subclass).
        max_tokens: the superpixel token budget (ids must be below it); default: the
            model's own ``max_tokens``, else the ``num_segments`` of its pretrained cfg
            (196 for the released weights; SEEDS gives at most that many). At most
            :func:`hcast.ops.superpixels.max_token_budget` of the input size (one token per
            pixel), checked before anything is allocated.
        img_size: the (H, W) exported (default: the model's), see :func:`check_img_size`.

    Returns:
        a deep copy; ``model`` itself is unchanged. An H-CAST copy returns its per-level
        logits tuple from ``forward`` (``set_level_outputs(True)``), as the exported program does.

    Raises:
        TypeError: ``model`` is not a CAST model; ``max_tokens`` not an int.
        ValueError: ``max_tokens`` below 1 or above the input's pixel count; a bad ``img_size``.
    """
    from hcast.models.cast import CAST

    if not isinstance(model, CAST):
        raise TypeError(f"model must be a CAST / H-CAST model (hcast.models.CAST), got {type(model).__name__}; "
                        f"other models export with torch.export / torch.onnx directly.")
    if max_tokens is None:
        cfg = getattr(model, "pretrained_cfg", None) or {}
        max_tokens = model.max_tokens or cfg.get("num_segments") or 196
    max_tokens = V.check_int("max_tokens", max_tokens, 1)
    height, width = check_img_size(model, img_size)
    ceiling = max_token_budget(height, width)
    if max_tokens > ceiling:
        raise ValueError(f"max_tokens: expected at most {ceiling} (one token per pixel of the {height}x{width} "
                         f"input; a budget above it only pads), got {max_tokens}; pass the superpixel count the "
                         "images get (the model's num_segments), or a little more.")
    model = copy.deepcopy(model).eval()
    model.max_tokens = max_tokens
    model.validate_args = False
    if hasattr(model, "set_level_outputs"):  # H-CAST: every level is an output (logits_0, ...)
        model.set_level_outputs(True)
    return model


def example_inputs(model: torch.nn.Module, batch_size: int = 2,
                   img_size: Optional[Tuple[int, int]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Example ``(images (B, 3, H, W) float32, segments (B, H, W) int64)`` for tracing:
    random images and ids spread over ``[0, max_tokens)`` (H, W default: the model's
    ``img_size``)."""
    height, width = img_size or model.patch_embed.img_size
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, 3, height, width, generator=generator)
    segments = torch.randint(0, model.max_tokens or 196, (batch_size, height, width), generator=generator)
    return images, segments


def _dynamic_shapes():
    batch = torch.export.Dim("batch", min=1, max=4096)
    return {"images": {0: batch}, "segments": {0: batch}}


def export_program(model: torch.nn.Module, max_tokens: Optional[int] = None,
                   img_size: Optional[Tuple[int, int]] = None) -> torch.export.ExportedProgram:
    """``torch.export.export`` of a CAST / H-CAST ``model`` taking ``(images, segments)``
    with a dynamic batch dimension (see :func:`prepare_for_export` for ``max_tokens``).

    Returns:
        the :class:`torch.export.ExportedProgram`; ``program.module()(images, segments)``
        returns what the model returns (logits, or a tuple of per-level logits, finest
        first).
    """
    model = prepare_for_export(model, max_tokens, img_size)
    images, segments = example_inputs(model, 2, img_size)
    return torch.export.export(model, (images, segments), dynamic_shapes=_dynamic_shapes())


def export_onnx(model: torch.nn.Module, path: Union[str, os.PathLike], max_tokens: Optional[int] = None,
                img_size: Optional[Tuple[int, int]] = None) -> str:
    """Write an ONNX file of a CAST / H-CAST ``model`` (``torch.onnx.export(...,
    dynamo=True)``): inputs ``images`` (B, 3, H, W) float32 and ``segments`` (B, H, W)
    int64, a dynamic batch dimension; outputs ``logits`` (CAST) or ``logits_0`` ...
    (H-CAST levels, finest first). Needs the ``onnx`` and ``onnxscript`` packages.

    Returns:
        the path written.
    """
    model = prepare_for_export(model, max_tokens, img_size)
    images, segments = example_inputs(model, 2, img_size)
    with torch.no_grad():
        out = model(images, segments)
    names = ["logits"] if isinstance(out, torch.Tensor) else [f"logits_{i}" for i in range(len(out))]
    program = torch.onnx.export(model, (images, segments), dynamo=True, dynamic_shapes=_dynamic_shapes(),
                                input_names=["images", "segments"], output_names=names, opset_version=18)
    with atomic_write(path, description="ONNX file") as tmp:  # a killed export leaves no torn file
        program.save(os.fspath(tmp))
    return os.fspath(path)


def export_model(model: torch.nn.Module, path: Union[str, os.PathLike], format: str = "onnx",
                 max_tokens: Optional[int] = None, img_size: Optional[Tuple[int, int]] = None) -> str:
    """Write ``model`` to ``path`` as ``format``: ``'onnx'`` (:func:`export_onnx`) or
    ``'torch-export'`` (:func:`export_program`, saved with ``torch.export.save``; load
    it with ``torch.export.load(path).module()``).

    Raises:
        ValueError: an unknown ``format``, or as :func:`prepare_for_export`.
        IsADirectoryError, NotADirectoryError: ``path`` is a folder or lies under a file
            (checked before exporting).
    """
    if format not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {EXPORT_FORMATS}, got {format!r}.")
    check_output_path(path)  # a folder or a path under a file fails now, not after the export
    if format == "onnx":
        return export_onnx(model, path, max_tokens, img_size)
    program = export_program(model, max_tokens, img_size)
    with atomic_write(path, description="torch.export program") as tmp, open(tmp, "wb") as f:
        torch.export.save(program, f)
    return os.fspath(path)
