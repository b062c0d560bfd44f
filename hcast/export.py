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

from hcast.weights.folder import atomic_write

__all__ = ["EXPORT_FORMATS", "prepare_for_export", "example_inputs", "export_program", "export_onnx",
           "export_model"]

#: the formats :func:`export_model` writes
EXPORT_FORMATS = ("onnx", "torch-export")


def prepare_for_export(model: torch.nn.Module, max_tokens: Optional[int] = None) -> torch.nn.Module:
    """A copy of a CAST / H-CAST ``model`` set up for one graph: eval mode, fixed-budget
    mode, no value checks.

    Args:
        model: a :class:`hcast.models.CAST` (or subclass).
        max_tokens: the superpixel token budget (ids must be below it); default: the
            model's own ``max_tokens``, else the ``num_segments`` of its pretrained cfg
            (196 for the released weights; SEEDS gives at most that many).

    Returns:
        a deep copy; ``model`` itself is unchanged. An H-CAST copy returns its per-level
        logits tuple from ``forward`` (``set_level_outputs(True)``), as the exported program does.

    Raises:
        TypeError: ``model`` is not a CAST model.
        ValueError: ``max_tokens`` below 1.
    """
    from hcast.models.cast import CAST

    if not isinstance(model, CAST):
        raise TypeError(f"model must be a CAST / H-CAST model (hcast.models.CAST), got {type(model).__name__}; "
                        f"other models export with torch.export / torch.onnx directly.")
    if max_tokens is None:
        cfg = getattr(model, "pretrained_cfg", None) or {}
        max_tokens = model.max_tokens or cfg.get("num_segments") or 196
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be an int >= 1, got {max_tokens!r}.")
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
    model = prepare_for_export(model, max_tokens)
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
    model = prepare_for_export(model, max_tokens)
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
        ValueError: an unknown ``format``.
    """
    if format not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {EXPORT_FORMATS}, got {format!r}.")
    if format == "onnx":
        return export_onnx(model, path, max_tokens, img_size)
    program = export_program(model, max_tokens, img_size)
    with atomic_write(path, description="torch.export program") as tmp, open(tmp, "wb") as f:
        torch.export.save(program, f)
    return os.fspath(path)
