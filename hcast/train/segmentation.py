"""Fine-tuning and evaluating CAST segmenters: a small library loop beside :func:`hcast.train.finetune`.

:func:`hcast.train.finetune` is built around taxonomies and level targets (classification);
semantic segmentation needs per-pixel targets, per-pixel losses and a dataset-level
confusion matrix, so it has its own loop here, with the authors' recipes as presets
(:data:`SEGMENTATION_RECIPES`):

* ``'voc'``: SPML's VOC fine-tuning of CAST (``scripts/spml/finetune_cast.sh``): SGD
  momentum 0.9, poly LR 3e-3, weight decay 1e-4, batch 4, crop 512, 30k iterations,
  100 warm-up iterations, train+ (SBD), SoftmaxClassifier head.
* ``'ade20k'``: Segmenter's ADE20K fine-tuning (``scripts/segmenter/train_ade20k_cast.sh``):
  SGD poly LR 1e-3, batch 8, crop 512, 64 epochs, mask transformer head.
* ``'garment-scenes'``: the 2-core real-input job (``scripts/segmentation_job.sh``):
  AdamW 1e-3, batch 32, poly decay, a time budget.

Batches are ``(images (B, 3, H, W) float, segments (B, H, W) int64, labels (B, H, W)
int64)``; the loss is pixel cross-entropy with ``ignore_index``.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from hcast.ops.segmentation_metrics import SegmentationIoU

__all__ = ["SegmentationConfig", "SEGMENTATION_RECIPES", "SegmentationTensors", "finetune_segmentation",
           "evaluate_segmentation", "predict_segmentation", "save_segmentation_picture", "save_segmenter",
           "load_segmenter", "segment_images", "evaluate_segmentation_dataset", "sliding_window_logits"]


@dataclasses.dataclass
class SegmentationConfig:
    """Settings of :func:`finetune_segmentation`.

    Attributes:
        steps: optimiser steps (iterations) planned; the poly schedule decays over them.
        batch_size: images per step.
        optimizer: ``'sgd'`` (momentum, the authors') or ``'adamw'``.
        lr, weight_decay, momentum: optimiser settings.
        warmup_steps: linear warm-up.
        poly_power: ``lr * (1 - step / steps) ** poly_power`` after warm-up (0.9).
        time_budget_s: if set, ``steps`` is shortened (re-measured every 50 steps) so
            that training ends within it; the schedule decays over the shortened count.
        budget_clock: ``'wall'`` (seconds on the clock) or ``'cpu'`` (CPU seconds of this
            process, user + system: the work a machine does in ``budget / cores``
            seconds when nothing else runs on it, so a budget means the same on a
            machine shared with other jobs).
        ignore_index: target value without a loss (255).
        seed: data order and augmentation.
        log_every: steps between log lines (0: none).
        head_lr_scale: LR multiplier of the head (SPML: 10 for its classifier).
    """
    steps: int = 1000
    batch_size: int = 16
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    momentum: float = 0.9
    warmup_steps: int = 0
    poly_power: float = 0.9
    time_budget_s: Optional[float] = None
    budget_clock: str = "wall"
    ignore_index: int = 255
    seed: int = 0
    log_every: int = 50
    head_lr_scale: float = 1.0


#: The authors' recipes (module docstring) and the 2-core job's.
SEGMENTATION_RECIPES: Dict[str, SegmentationConfig] = {
    "voc": SegmentationConfig(steps=30000, batch_size=4, optimizer="sgd", lr=3e-3, weight_decay=1e-4,
                              warmup_steps=100, head_lr_scale=10.0),
    "ade20k": SegmentationConfig(steps=64 * 20210 // 8, batch_size=8, optimizer="sgd", lr=1e-3, weight_decay=0.0),
    "garment-scenes": SegmentationConfig(steps=3000, batch_size=32, optimizer="adamw", lr=2e-3, weight_decay=0.05,
                                         warmup_steps=20, time_budget_s=840, budget_clock="cpu"),
}


class SegmentationTensors(Dataset):
    """In-memory ``(image, segments, labels)`` triples with random horizontal flips
    (the three flipped together).

    Args:
        images (Tensor[N, 3, H, W] float), segments (Tensor[N, H, W] int64), labels
            (Tensor[N, H, W] int64).
        flip: flip with probability 0.5 on access.
    """

    def __init__(self, images: torch.Tensor, segments: torch.Tensor, labels: torch.Tensor, flip: bool = False) -> None:
        if not (images.shape[0] == segments.shape[0] == labels.shape[0]) or segments.shape != labels.shape \
                or images.shape[-2:] != labels.shape[-2:]:
            raise ValueError(f"images (N, 3, H, W), segments and labels (N, H, W) must agree, got "
                             f"{tuple(images.shape)}, {tuple(segments.shape)}, {tuple(labels.shape)}.")
        self.images, self.segments, self.labels, self.flip = images, segments, labels, flip

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int):
        x, s, y = self.images[index], self.segments[index], self.labels[index]
        if self.flip and torch.rand(()) < 0.5:
            x, s, y = x.flip(-1), s.flip(-1), y.flip(-1)
        return x, s, y


def _param_groups(model: nn.Module, config: SegmentationConfig) -> List[Dict[str, Any]]:
    head = getattr(model, "head", None)
    head_ids = {id(p) for p in head.parameters()} if isinstance(head, nn.Module) else set()
    groups: Dict[Tuple[bool, bool], List[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or name.endswith(("pos_embed", "cls_token", "cls_emb"))
        groups.setdefault((id(p) in head_ids, no_decay), []).append(p)
    return [dict(params=ps, lr_scale=config.head_lr_scale if is_head else 1.0,
                 weight_decay=0.0 if no_decay else config.weight_decay)
            for (is_head, no_decay), ps in groups.items()]


def _lr_at(step: int, total: int, config: SegmentationConfig) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    return config.lr * max(0.0, 1 - step / max(total, 1)) ** config.poly_power


def _batches(loader: DataLoader) -> Iterable:
    while True:
        yield from loader


def finetune_segmentation(model: nn.Module, train_data: Dataset, config: SegmentationConfig,
                          log: Optional[Callable[[str], None]] = print) -> Dict[str, Any]:
    """Train a segmenter (``model(images, segments) -> (B, K, H, W)`` logits, e.g.
    :class:`hcast.models.segmentation_heads.CASTSegmenter`) with pixel cross-entropy.

    Args:
        model: the segmenter (trained in place, on the device of its parameters).
        train_data: ``(image, segments, labels)`` items (e.g. :class:`SegmentationTensors`).
        config: :class:`SegmentationConfig` (or a recipe of :data:`SEGMENTATION_RECIPES`).
        log: where log lines go (None: silent).

    Returns:
        dict with ``steps`` (run), ``seconds`` (wall), ``cpu_seconds``, ``losses`` (per logged
        step: (step, mean loss)).

    Raises:
        ValueError: an unknown optimizer or an empty dataset.
    """
    if config.optimizer not in ("sgd", "adamw"):
        raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {config.optimizer!r}.")
    if len(train_data) == 0:
        raise ValueError("train_data is empty.")
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    loader = DataLoader(train_data, batch_size=config.batch_size, shuffle=True, drop_last=True, generator=gen)
    groups = _param_groups(model, config)
    if config.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    else:
        opt = torch.optim.AdamW(groups, lr=config.lr)
    if config.budget_clock not in ("wall", "cpu"):
        raise ValueError(f"budget_clock must be 'wall' or 'cpu', got {config.budget_clock!r}.")
    clock = time.perf_counter if config.budget_clock == "wall" else time.process_time
    model.train()
    total, start, cpu_start, losses, running = config.steps, clock(), time.process_time(), [], []
    wall_start = time.perf_counter()
    step = 0
    for images, segments, labels in _batches(loader):
        if step >= total:
            break
        lr = _lr_at(step, total, config)
        for g in opt.param_groups:
            g["lr"] = lr * g["lr_scale"]
        logits = model(images.to(device), segments.to(device))
        loss = F.cross_entropy(logits, labels.to(device), ignore_index=config.ignore_index)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running.append(loss.item())
        step += 1
        elapsed = clock() - start
        if config.time_budget_s and step in (5, 20) or (config.time_budget_s and step % 50 == 0):
            # fit the schedule into the budget, re-measured as the machine's speed settles
            fit = max(step + 1, int(config.time_budget_s / (elapsed / step)))
            if fit != total and (fit < config.steps or total < config.steps):
                changed = abs(min(fit, config.steps) - total) > 0.02 * total
                total = min(fit, config.steps)
                if log and changed:
                    log(f"{config.budget_clock} time budget {config.time_budget_s:.0f} s: {total} of {config.steps} "
                        f"steps ({elapsed / step:.2f} {config.budget_clock} s/step so far)")
        if config.log_every and (step % config.log_every == 0 or step == total):
            losses.append((step, sum(running) / len(running)))
            if log:
                log(f"step {step}/{total}  loss {losses[-1][1]:.4f}  lr {lr:.2e}  "
                    f"{time.perf_counter() - wall_start:.0f} s ({time.process_time() - cpu_start:.0f} CPU s)")
            running = []
    return dict(steps=step, seconds=time.perf_counter() - wall_start, cpu_seconds=time.process_time() - cpu_start,
                losses=losses)


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
def evaluate_segmentation(model: nn.Module, data: Dataset, num_classes: int, batch_size: int = 32,
                          ignore_index: int = 255, convention: str = "mmseg",
                          class_names: Optional[List[str]] = None) -> SegmentationIoU:
    """Dataset-level IoU of a segmenter on ``(image, segments, labels)`` items.

    Returns:
        the :class:`hcast.ops.segmentation_metrics.SegmentationIoU` metric, updated
        (``.compute()``, ``.table()``).
    """
    model.eval()
    device = next(model.parameters()).device
    metric = SegmentationIoU(num_classes, ignore_index, convention, class_names)
    for images, segments, labels in DataLoader(data, batch_size=batch_size):
        logits = model(images.to(device), segments.to(device))
        metric.update(logits.argmax(1).cpu(), labels)
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


def save_segmenter(model: nn.Module, path, model_name: str, model_args: Dict[str, Any],
                   class_names: List[str]) -> None:
    """Write a :class:`hcast.models.segmentation_heads.CASTSegmenter` as one ``.pth`` file
    (weights, the encoder's name and arguments, the head, class names), atomically."""
    from hcast.weights.folder import save_checkpoint

    save_checkpoint(dict(format="hcast-segmenter", model_name=model_name, model_args=dict(model_args),
                         head=model.head_type, num_classes=model.num_classes, class_names=list(class_names),
                         state_dict=model.state_dict()), path)


def load_segmenter(source: str, device: str = "cpu") -> Tuple[nn.Module, List[str]]:
    """A segmenter and its class names from a file written by :func:`save_segmenter`, or a
    ``cast_seg_*`` timm name / tag (its own head, per pixel: ``forward_dense``; with no
    head, ``num_classes=0``, only the hierarchical segments are meaningful).

    Raises:
        ValueError: a file that is not a saved segmenter; a name that is not a CAST
            segmentation encoder.
    """
    import timm

    from hcast.models.cast_seg import CASTSeg
    from hcast.models.segmentation_heads import CASTSegmenter
    from hcast.weights.safe_load import load_checkpoint_file

    if source.endswith((".pth", ".pt")):
        ckpt = load_checkpoint_file(source)
        if not isinstance(ckpt, dict) or ckpt.get("format") != "hcast-segmenter":
            raise ValueError(f"{source!r} is not a segmenter saved by hcast.train.segmentation.save_segmenter "
                             f"(no 'format': 'hcast-segmenter' entry).")
        encoder = timm.create_model(ckpt["model_name"], num_classes=0, **ckpt["model_args"])
        model = CASTSegmenter(encoder, ckpt["num_classes"], ckpt["head"])
        model.load_state_dict(ckpt["state_dict"])
        return model.to(device).eval(), list(ckpt["class_names"])
    model = timm.create_model(source, pretrained=bool(timm.get_pretrained_cfg(source) and
                                                     timm.get_pretrained_cfg(source).has_weights))
    if not isinstance(model, CASTSeg):
        raise ValueError(f"{source!r} is not a CAST segmentation encoder (cast_seg_*) nor a saved segmenter (.pth).")
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
    from pathlib import Path

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
