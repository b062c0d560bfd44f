"""What a fine-tuning run writes: the model folder, the log, the learning curves.

* :func:`save_model_folder`: ``config.json`` + ``model.safetensors`` that
  ``timm.create_model("local-dir:FOLDER", pretrained=True)`` reloads;
* :func:`write_log`: ``log.jsonl``, one JSON record per epoch;
* :func:`plot_learning_curves`: loss, learning rate, per-level accuracy, FPA and TICE per
  epoch, drawn with matplotlib (Agg, no display needed);
* checkpoints go through :func:`hcast.weights.save_checkpoint` /
  :func:`hcast.weights.load_checkpoint` (atomic writes, safe unpickling).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import torch.nn as nn

from hcast.hierarchy import Taxonomy
from timm.utils import unwrap_model
from hcast._io import atomic_write
from hcast.weights.folder import save_for_hf

__all__ = ["CHECKPOINT_NAME", "LOG_NAME", "CURVES_NAME", "CONFIG_NAME", "save_model_folder", "write_log",
           "plot_learning_curves"]

CHECKPOINT_NAME = "checkpoint-latest.pth"
LOG_NAME = "log.jsonl"
CURVES_NAME = "learning_curves.png"
CONFIG_NAME = "finetune_config.json"


def save_model_folder(
    model: nn.Module,
    folder: Union[str, os.PathLike],
    taxonomy: Optional[Taxonomy] = None,
    model_args: Optional[Dict[str, Any]] = None,
    extra_config: Optional[Dict[str, Any]] = None,
    data_config: Optional[Dict[str, Any]] = None,
) -> Path:
    """Write ``config.json`` + ``model.safetensors`` that ``timm.create_model("local-dir:FOLDER", pretrained=True)`` reloads.

    Uses :func:`hcast.weights.save_for_hf` (timm's ``save_for_hf`` with the taxonomy in
    ``config["taxonomy"]`` and its fine names as ``label_names``; the files
    ``push_to_hf_hub`` uploads), which writes each file atomically, weights first, config
    last, so an interrupted save leaves the previous, complete pair or the new weights
    with a config describing the same architecture.

    Args:
        model: the (unwrapped) timm model.
        folder: the output folder (created).
        taxonomy: stored as ``config["taxonomy"]`` (``Taxonomy.to_dict()``) so the tree and
            names travel with the weights.
        model_args: constructor arguments needed to rebuild the model (JSON-serialisable),
            e.g. ``{"level_classes": [10, 5]}``.
        extra_config: more top-level ``config.json`` fields; its ``"pretrained_cfg"`` entry
            updates the model's pretrained cfg (e.g. ``superpixel_method``, ``num_segments``).
        data_config: the preprocessing the weights were trained with, e.g.
            ``{"input_size": (3, 32, 32)}`` (timm's ``data_config``; default: the model's).

    Returns:
        the folder.
    """
    # hcast's conventions on top of timm.models.save_for_hf: config["taxonomy"], label_names
    return save_for_hf(unwrap_model(model), folder, taxonomy=taxonomy, model_config=dict(extra_config or {}),
                       model_args=model_args, data_config=data_config)


def write_log(records: Sequence[Dict[str, Any]], path: Union[str, os.PathLike]) -> Path:
    """Write ``records`` (one dict per epoch) as JSON lines to ``path``, atomically.

    The whole history is rewritten each epoch (a few KB), so the log always matches the
    checkpoint it was written with, also after a resume.
    """
    text = "".join(json.dumps(r) + "\n" for r in records)
    with atomic_write(path, description="log") as tmp:
        tmp.write_text(text)
    return Path(path)


def plot_learning_curves(records: Sequence[Dict[str, Any]], path: Union[str, os.PathLike]) -> Path:
    """Draw a run's learning curves into a PNG with matplotlib's Agg backend.

    Four panels over epochs (1-based): training loss; learning rate at the epoch's end
    (log scale); for classification, validation accuracy per level (finest first, named by
    the taxonomy's level names) and validation FPA and TICE, in percent, plain (per-level
    argmax) decoding; for segmentation, validation mIoU and pixel accuracy and the last
    per-class IoU. Epochs without validation only have the first two.

    Args:
        records: :func:`write_log`'s records: ``{"epoch": int, "train": {"loss", "lr", ...},
            "val": hcast.train.evaluate's (or the segmentation task's) result, if validated}``.
        path: the PNG to write.

    Raises:
        ValueError: for an empty ``records``.
    """
    if not records:
        raise ValueError("records: expected at least one epoch to plot, got none.")
    from matplotlib.figure import Figure  # the object API: no pyplot state, no display

    epochs = [r["epoch"] for r in records]
    fig = Figure(figsize=(11, 7), dpi=100)
    axes = fig.subplots(2, 2)
    marker = "o" if len(records) < 30 else None
    ax = axes[0, 0]
    ax.plot(epochs, [r["train"]["loss"] for r in records], marker=marker)
    ax.set(title="training loss", xlabel="epoch")
    ax = axes[0, 1]
    ax.plot(epochs, [r["train"]["lr"] for r in records], marker=marker)
    ax.set(title="learning rate (end of epoch)", xlabel="epoch", yscale="log")
    validated = [r for r in records if r.get("val")]
    val_epochs = [r["epoch"] for r in validated]
    last = validated[-1]["val"] if validated else {}
    ax = axes[1, 0]
    if "plain" in last:  # classification: hcast.train.evaluate's result
        names = last.get("level_names") or []
        for level in range(len(last["plain"]["level_accuracy"])):
            name = names[level] if level < len(names) else f"level {level}"
            ax.plot(val_epochs, [100 * r["val"]["plain"]["level_accuracy"][level] for r in validated], marker=marker,
                    label=name)
        ax.set(title="validation accuracy per level (%)", xlabel="epoch")
        ax.legend()
        ax = axes[1, 1]
        ax.plot(val_epochs, [100 * r["val"]["plain"]["fpa"] for r in validated], marker=marker, label="FPA")
        ax.plot(val_epochs, [100 * r["val"]["plain"]["tice"] for r in validated], marker=marker, label="TICE")
        ax.set(title="validation FPA and TICE (%)", xlabel="epoch")
        ax.legend()
    elif "miou" in last:  # segmentation: SegmentationTask.evaluate's result
        ax.plot(val_epochs, [100 * r["val"]["miou"] for r in validated], marker="o", label="mIoU")
        ax.plot(val_epochs, [100 * r["val"]["pixel_accuracy"] for r in validated], marker="o", label="pixel accuracy")
        ax.set(title="validation mIoU and pixel accuracy (%)", xlabel="epoch")
        ax.legend()
        ax = axes[1, 1]
        ax.bar(range(len(last["iou"])), [100 * v for v in last["iou"]])
        ax.set_xticks(range(len(last["iou"])), last.get("class_names") or [], rotation=60, fontsize=7)
        ax.set(title=f"per-class IoU (%), epoch {val_epochs[-1]}")
    for a in axes.flat:
        a.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_write(path, description="learning-curve picture") as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)
