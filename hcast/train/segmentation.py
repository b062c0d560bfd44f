"""Using CAST segmenters: prediction, evaluation, pictures, saved segmenters, sliding windows.

Training is :func:`hcast.train.finetune` with a :class:`hcast.train.tasks.SegmentationTask`
(``config.task = "segmentation"``; the CAST authors' recipes ``cast-seg-voc`` and
``cast-seg-ade20k`` and the 2-core job's ``garment-scenes`` in :mod:`hcast.train.recipes`);
``hcast finetune --recipe garment-scenes`` runs it from the command line. This module holds
what comes after: :func:`predict_segmentation`, :func:`evaluate_segmentation` (in-memory
items), :func:`evaluate_segmentation_dataset` (VOC / ADE20K, whole images or
:func:`sliding_window_logits`), :func:`save_segmentation_picture`,
:func:`save_segmenter` / :func:`load_segmenter` (the folder ``hcast segment`` and ``hcast
evaluate`` read) and :func:`segment_images`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from hcast.ops.segmentation_metrics import SegmentationIoU
from hcast.train.batches import SuperpixelFn

__all__ = ["evaluate_segmentation", "predict_segmentation", "save_segmentation_picture", "save_segmenter",
           "load_segmenter", "segment_images", "evaluate_segmentation_dataset", "sliding_window_logits",
           "SEGMENTER_FORMAT"]

#: ``config.json["format"]`` of a folder written by :func:`save_segmenter`
SEGMENTER_FORMAT = "hcast-segmenter"


@torch.no_grad()
def predict_segmentation(model: nn.Module, images: torch.Tensor, segments: torch.Tensor,
                         batch_size: int = 32) -> torch.Tensor:
    """Per-pixel class ids (N, H, W) int64 for images (N, 3, H, W) and superpixels (N, H, W)."""
    model.eval()
    device = next(model.parameters()).device
    out = [model(images[i:i + batch_size].to(device), segments[i:i + batch_size].to(device)).argmax(1).cpu()
           for i in range(0, images.shape[0], batch_size)]
    return torch.cat(out)


@torch.no_grad()
def evaluate_segmentation(model: nn.Module, data: Union[Dataset, Iterable], num_classes: int, batch_size: int = 32,
                          ignore_index: int = 255, convention: str = "mmseg",
                          class_names: Optional[List[str]] = None, superpixel_fn: Optional[SuperpixelFn] = None,
                          amp_dtype: Optional[torch.dtype] = None) -> SegmentationIoU:
    """Dataset-level IoU of a segmenter (``model(images, segments) -> (B, K, H, W)``, a DDP
    wrapper is unwrapped) on a dataset of ``((image, segments), labels)`` or ``(image,
    labels)`` items (:class:`hcast.train.tasks.SegmentationTensors`), read ``batch_size`` at a
    time, or on a loader of such batches (the validation of
    :class:`hcast.train.tasks.SegmentationTask`). Summed over processes under DDP (the
    metric is a torchmetrics ``Metric``); the model's training mode is restored.

    Args:
        superpixel_fn: computes segments for batches without them (``None``: the model does).
        amp_dtype: autocast dtype, ``None`` for float32.

    Returns:
        the :class:`hcast.ops.segmentation_metrics.SegmentationIoU` metric, updated
        (``.compute()``, ``.table()``), on the model's device.
    """
    from hcast.precision import autocast
    from hcast.train.batches import unpack_batch
    from timm.utils import unwrap_model

    net = unwrap_model(model)
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    metric = SegmentationIoU(num_classes, ignore_index, convention, class_names).to(device)
    loader = DataLoader(data, batch_size=batch_size) if isinstance(data, Dataset) else data
    for batch in loader:
        if batch is None:  # every image of the batch was unreadable (hcast.data.collate_readable)
            continue
        images, segments, labels = unpack_batch(batch, device, superpixel_fn)
        with autocast(device, amp_dtype):
            logits = net(images, segments)
        metric.update(logits.float().argmax(1), labels)
    net.train(was_training)
    return metric


def save_segmentation_picture(path, images: torch.Tensor, hierarchy: List[torch.Tensor], predicted: torch.Tensor,
                              class_names: List[str], target: Optional[torch.Tensor] = None,
                              mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                              hierarchy_names: Optional[List[str]] = None) -> None:
    """One row per image: the image, CAST's hierarchical segments (one panel per level
    given, region boundaries on the image), the predicted semantic map (and the ground
    truth when given), with a legend of the classes present. Written atomically (PNG).

    Args:
        path: the PNG to write.
        images (Tensor[N, 3, H, W]): normalised with ``mean``/``std``.
        hierarchy: (N, H, W) int64 region maps (e.g. ``forward_segments``' levels).
        predicted, target (Tensor[N, H, W] int64): class ids (255 in ``target``: ignored).
        class_names: names in id order.
        hierarchy_names: panel titles of the region maps (default "level 1", ...).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from skimage.segmentation import mark_boundaries

    from hcast._io import atomic_write

    rgb = (images.cpu() * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)).clamp(0, 1)
    rgb = rgb.permute(0, 2, 3, 1).numpy()
    cmap = plt.get_cmap("tab20", max(len(class_names), 2))
    columns = 1 + len(hierarchy) + 1 + (target is not None)
    fig, axes = plt.subplots(len(rgb), columns, figsize=(2.2 * columns + 1.6, 2.2 * len(rgb)), squeeze=False)
    present = set()
    for i in range(len(rgb)):
        panels = [("image", rgb[i], None)]
        for level, regions in enumerate(hierarchy):
            title = hierarchy_names[level] if hierarchy_names else f"level {level + 1}"
            panels.append((title, mark_boundaries(rgb[i], regions[i].cpu().numpy(),
                                                                   color=(1, 1, 0)), None))
        maps = [("prediction", predicted[i])] + ([("ground truth", target[i])] if target is not None else [])
        for title, labels in maps:
            labels = labels.cpu().numpy()
            present.update(int(v) for v in set(labels.ravel().tolist()) if v < len(class_names))
            panels.append((title, labels, dict(cmap=cmap, vmin=-0.5, vmax=cmap.N - 0.5, interpolation="nearest")))
        for ax, (title, data, kw) in zip(axes[i], panels):
            ax.imshow(data, **(kw or {}))
            ax.set_axis_off()
            if i == 0:
                ax.set_title(title, fontsize=9)
    handles = [Patch(color=cmap(c), label=class_names[c]) for c in sorted(present)]
    fig.legend(handles=handles, loc="center right", fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1 - 1.5 / (2.2 * columns + 1.6), 1))
    with atomic_write(path, description="picture") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------
# Saved segmenters (what the job writes and `hcast segment` / `hcast evaluate` read)
# ---------------------------------------------------------------------------------------


def save_segmenter(model: nn.Module, folder, model_name: str, model_args: Dict[str, Any],
                   class_names: List[str], extra_config: Optional[Dict[str, Any]] = None) -> Path:
    """Write a :class:`hcast.models.segmentation_heads.CASTSegmenter` as a folder:
    ``model.safetensors`` (its weights) and ``config.json`` (``format``, the encoder's timm
    name and arguments, the head, the class names, and ``extra_config``), each atomically,
    weights first. :func:`hcast.train.finetune` writes it for a segmentation run.

    Returns:
        the folder.
    """
    import safetensors.torch

    from hcast._io import atomic_write, write_json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_write(folder / "model.safetensors", description="weights") as tmp:
        safetensors.torch.save_file(state, str(tmp))
    write_json(dict(format=SEGMENTER_FORMAT, model_name=model_name, model_args=dict(model_args),
                    head=model.head_type, num_classes=model.num_classes, class_names=list(class_names),
                    **(extra_config or {})), folder / "config.json")
    return folder


def load_segmenter(source: str, device: str = "cpu") -> Tuple[nn.Module, List[str]]:
    """A segmenter and its class names from a folder written by :func:`save_segmenter` (or
    by ``hcast finetune`` on a segmentation recipe), or a ``cast_seg_*`` timm name / tag (its
    own head, per pixel: ``forward_dense``; with no head, ``num_classes=0``, only the
    hierarchical segments are meaningful).

    Raises:
        ValueError: a folder that holds no saved segmenter; a name that is not a CAST
            segmentation encoder.
    """
    import json

    import safetensors.torch
    import timm

    from hcast.models.cast_seg import CASTSeg
    from hcast.models.segmentation_heads import CASTSegmenter

    path = Path(source)
    if path.is_dir() or path.suffix in (".json", ".safetensors"):
        folder = path if path.is_dir() else path.parent
        try:
            config = json.loads((folder / "config.json").read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{source!r}: no readable config.json of a saved segmenter ({e}).") from None
        if not isinstance(config, dict) or config.get("format") != SEGMENTER_FORMAT:
            raise ValueError(f"{source!r} is not a segmenter saved by hcast.train.segmentation.save_segmenter "
                             f"(config.json has no 'format': '{SEGMENTER_FORMAT}' entry).")
        encoder = timm.create_model(config["model_name"], num_classes=0, **config["model_args"])
        model = CASTSegmenter(encoder, config["num_classes"], config["head"])
        model.load_state_dict(safetensors.torch.load_file(str(folder / "model.safetensors")))
        return model.to(device).eval(), list(config["class_names"])
    if path.suffix in (".pth", ".pt") or path.exists():
        raise ValueError(f"{source!r} is not a segmenter folder (config.json + model.safetensors written by "
                         "save_segmenter or `hcast finetune` on a segmentation recipe) nor a cast_seg_* name.")
    model = timm.create_model(source, pretrained=bool(timm.get_pretrained_cfg(source) and
                                                     timm.get_pretrained_cfg(source).has_weights))
    if not isinstance(model, CASTSeg):
        raise ValueError(f"{source!r} is not a CAST segmentation encoder (cast_seg_*) nor a saved segmenter folder.")
    return _DenseWrapper(model).to(device).eval(), [str(i) for i in range(model.num_classes)]


class _DenseWrapper(nn.Module):
    """A :class:`~hcast.models.cast_seg.CASTSeg` as ``model(images, segments) -> (B, K, H, W)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.encoder, self.num_classes = model, model.num_classes

    def forward(self, images: torch.Tensor, segments: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.encoder.forward_dense(images, segments)


def segment_images(model: nn.Module, class_names: List[str], paths: List[str], out_dir,
                   size: Optional[int] = None) -> List[Dict[str, Any]]:
    """Per-pixel labels and a picture for image files.

    For each image: ``<out_dir>/<stem>_labels.png`` (uint8 class ids, the image's size, or
    ``size`` on the longer side) and ``<stem>_segmentation.png`` (the image, CAST's
    hierarchical segments, the semantic map with a legend), written atomically.

    Raises:
        OSError / ValueError: an unreadable image (named).
    """
    import numpy as np
    from PIL import Image

    from hcast.data.segmentation import SegmentationTransform
    from hcast._io import atomic_write

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    encoder = model.encoder
    transform = SegmentationTransform(resize=size)
    results = []
    for path in paths:
        try:
            with Image.open(path) as img:
                image = img.convert("RGB")
        except OSError as e:
            raise ValueError(f"{path!r}: not a readable image ({e}).") from e
        x, _ = transform(image, np.zeros((image.size[1], image.size[0]), np.int64))
        x = x[None]
        with torch.no_grad():
            segments = encoder.check_segments(x, None)
            labels = model(x, segments).argmax(1) if model.num_classes else torch.zeros_like(segments)
            levels = encoder.forward_segments(x, segments)["segmentations"]
        stem = Path(path).stem
        label_path = out_dir / f"{stem}_labels.png"
        with atomic_write(label_path, description="label map") as tmp:
            Image.fromarray(labels[0].numpy().astype(np.uint8), mode="L").save(tmp, format="PNG")
        picture = out_dir / f"{stem}_segmentation.png"
        save_segmentation_picture(picture, x, [segments, levels[1], levels[2]], labels, class_names,
                                  hierarchy_names=["superpixels", "CAST stage 2 regions", "CAST stage 3 regions"])
        present = sorted(int(v) for v in labels.unique())
        results.append(dict(image=str(path), labels=str(label_path), picture=str(picture),
                            classes=[class_names[c] if c < len(class_names) else str(c) for c in present]))
    return results


@torch.no_grad()
def sliding_window_logits(model: nn.Module, image: torch.Tensor, crop: int = 512, stride: int = 341) -> torch.Tensor:
    """Sliding-window inference (MMSegmentation's ``slide`` mode, as Segmenter's ADE20K /
    Context evaluation): logits of ``crop`` x ``crop`` windows every ``stride`` pixels
    (the last window flush with the border), superpixels computed per window by the
    model, averaged where windows overlap. An image no larger than ``crop`` is one window.

    Args:
        model: ``model(images, segments=None) -> (1, K, h, w)``.
        image (Tensor[3, H, W] or Tensor[1, 3, H, W]): normalised.
        crop, stride: window side and step (pixels).

    Returns:
        Tensor[1, K, H, W] averaged logits.
    """
    if image.ndim == 3:
        image = image[None]
    height, width = image.shape[-2:]

    def starts(size: int) -> List[int]:
        if size <= crop:
            return [0]
        out = list(range(0, size - crop, stride))
        return out + [size - crop]

    total, count = None, torch.zeros(1, 1, height, width, device=image.device)
    for top in starts(height):
        for left in starts(width):
            window = image[..., top:top + crop, left:left + crop]
            logits = model(window, None)
            if total is None:
                total = torch.zeros(1, logits.shape[1], height, width, dtype=logits.dtype, device=image.device)
            total[..., top:top + crop, left:left + crop] += logits
            count[..., top:top + crop, left:left + crop] += 1
    return total / count


@torch.no_grad()
def evaluate_segmentation_dataset(model: nn.Module, dataset: Dataset, num_classes: int,
                                  class_names: Optional[List[str]] = None, convention: str = "mmseg",
                                  ignore_index: int = 255, progress: bool = False,
                                  window: Optional[Tuple[int, int]] = None) -> SegmentationIoU:
    """Single-scale evaluation of a segmenter on ``(image, labels)`` items
    (:class:`hcast.data.PascalVOC`, :class:`hcast.data.ADE20K`), one image at a time (sizes
    differ): the whole image (SPML's VOC protocol at 512), or ``window=(crop, stride)``
    sliding windows (:func:`sliding_window_logits`; Segmenter's ADE20K / Context: 512,
    341). Superpixels are computed per image or window as the model's config says."""
    model.eval()
    device = next(model.parameters()).device
    metric = SegmentationIoU(num_classes, ignore_index, convention, class_names)
    for i in range(len(dataset)):
        image, target = dataset[i]
        if window is None:
            logits = model(image[None].to(device), None)
        else:
            logits = sliding_window_logits(model, image.to(device), *window)
        metric.update(logits.argmax(1).cpu(), target[None])
        if progress and (i + 1) % 100 == 0:
            print(f"{i + 1}/{len(dataset)} images", flush=True)
    return metric
