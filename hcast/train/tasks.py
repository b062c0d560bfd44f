"""What differs between fine-tuning tasks: datasets and targets, loss, metric, saved model.

:func:`hcast.train.finetune` runs the same steps for every task (data loaders, optimizer
and schedule, resume, the loop with its time budget, checkpoints and outputs); a task
object supplies the rest:

* :class:`ClassificationTask` (``config.task == "classification"``): H-CAST / CAST /
  Hier-ViT on a taxonomy: timm's transforms and superpixels of the augmented image,
  hierarchical mixup, the H-CAST loss (per-level cross-entropy + tree-path KL), per-level
  accuracy / FPA / TICE (:func:`hcast.train.evaluate`), a timm model folder;
* :class:`SegmentationTask` (``"segmentation"``): a CAST segmenter
  (:class:`hcast.models.segmentation_heads.CASTSegmenter`): per-pixel label maps, pixel
  cross-entropy with ``ignore_index``, the dataset-level mIoU
  (:class:`hcast.ops.segmentation_metrics.SegmentationIoU`), a segmenter folder
  (:func:`hcast.train.segmentation.save_segmenter`) that ``hcast segment`` and ``hcast
  evaluate`` load. The CAST authors' recipes are presets (``cast-seg-voc``,
  ``cast-seg-ade20k``, ``garment-scenes``: :mod:`hcast.train.recipes`).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

from hcast._io import write_json
from hcast.hierarchy import Taxonomy
from hcast.train.batches import unpack_batch
from hcast.train.config import FinetuneConfig

__all__ = ["Task", "ClassificationTask", "SegmentationTask", "SegmentationTensors", "TransformedDataset", "create_task"]


class Task:
    """The task-specific half of a fine-tuning run (see the module docstring); subclasses
    implement every method. ``name`` is the ``config.task`` value, ``score_name`` the
    validation metric the best model is chosen by."""

    name = ""
    score_name = ""
    score_label = ""

    def check_model(self, model: nn.Module) -> None:
        """Raise ``ValueError`` when ``model``'s outputs do not fit the task."""
        raise NotImplementedError

    def superpixel_model(self, model: nn.Module) -> nn.Module:
        """The module whose ``pretrained_cfg`` and grid decide the superpixels."""
        return model

    def datasets(self, train_set: Dataset, val_set: Dataset, config: FinetuneConfig, data_cfg: Dict[str, Any],
                 superpixels: Any, progress: bool, say: Callable[[str], None]
                 ) -> Tuple[Dataset, Dataset, Optional[Callable], float]:
        """``(train data, val data, superpixel_fn or None, seconds spent caching)``."""
        raise NotImplementedError

    def parameter_groups(self, model: nn.Module, config: FinetuneConfig) -> Optional[List[Dict[str, Any]]]:
        """Optimizer parameter groups, or ``None`` for timm's."""
        return None

    def set_training_outputs(self, model: nn.Module, on: bool) -> None:
        """Switch on (off) the outputs training needs from ``forward`` (DDP calls only it)."""

    def train_epoch(self, setup: Any, data: Any, config: FinetuneConfig, ctx: Any, epoch: int, num_updates: int,
                    should_stop: Callable[[int], bool]) -> Dict[str, float]:
        """One training pass (:func:`hcast.train.train_steps`); its stats."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, data: Any, setup: Any, ctx: Any) -> Dict[str, Any]:
        """Validation metrics (JSON-serialisable)."""
        raise NotImplementedError

    def score(self, metrics: Dict[str, Any]) -> float:
        """The number the best model is chosen by (higher is better)."""
        raise NotImplementedError

    def summary(self, metrics: Dict[str, Any]) -> str:
        """The metrics in one line."""
        raise NotImplementedError

    def describe(self) -> str:
        """The task in a few words, for the run's first line."""
        raise NotImplementedError

    def default_model_args(self, config: FinetuneConfig) -> Dict[str, Any]:
        """Constructor arguments stored with the model when the caller gives none."""
        return {"img_size": config.input_size} if config.input_size else {}

    def pretrained_cfg(self, superpixels: Any) -> Dict[str, Any]:
        """What the saved model's pretrained cfg records."""
        if superpixels.used:
            return {"superpixel_method": superpixels.method, "num_segments": superpixels.num_segments}
        return {}

    def write_description(self, folder: Path) -> None:
        """The labels' description, written once at the start of a run."""

    def save_model(self, model: nn.Module, folder: Path, model_args: Dict[str, Any], data_config: Dict[str, Any],
                   extra_config: Dict[str, Any]) -> None:
        """Write the model folder."""
        raise NotImplementedError

    def checkpoint_entries(self) -> Dict[str, Any]:
        """What a training checkpoint stores about the labels."""
        return {}

    def check_resume(self, state: Dict[str, Any], path: Path) -> None:
        """Raise ``ValueError`` (``"resume: ..."``) when ``state`` was trained on other labels."""

    def load_hint(self, folder: Path) -> str:
        """How to load the written model."""
        return ""


# ----------------------------------------------------------------------------- classification


class TransformedDataset(Dataset):
    """``(transform(image), label)`` for each ``(image, label)`` of ``dataset``.

    Items whose image is already a tensor (or an ``(image, segments)`` pair) pass
    unchanged: a dataset that brings its own transform keeps it.
    """

    def __init__(self, dataset: Dataset, transform: Callable) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        image, label = self.dataset[index]
        if isinstance(image, (torch.Tensor, tuple, list)):
            return image, label
        return self.transform(image), label

    def __getattr__(self, name: str) -> Any:  # targets, classes, ... of the wrapped dataset
        # never dunders: DataLoader would fetch untransformed items through a wrapped __getitems__
        if name in ("dataset", "transform") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


class ClassificationTask(Task):
    """Hierarchical classification on ``taxonomy`` (H-CAST, CAST, Hier-ViT).

    Args:
        taxonomy: the class tree, levels finest first; the model has one head per level.
    """

    name, score_name, score_label = "classification", "fpa", "FPA"

    def __init__(self, taxonomy: Taxonomy) -> None:
        if not isinstance(taxonomy, Taxonomy):
            raise TypeError(f"taxonomy must be a hcast.hierarchy.Taxonomy, got {type(taxonomy).__name__}.")
        self.taxonomy = taxonomy
        self._mixup: Any = None
        self._criterion: Any = None

    def check_model(self, model: nn.Module) -> None:
        levels = getattr(model, "level_classes", None)
        if levels is not None and tuple(levels) != tuple(self.taxonomy.num_classes):
            raise ValueError(
                f"model: its heads have level_classes {tuple(levels)} but the taxonomy has "
                f"{tuple(self.taxonomy.num_classes)} classes per level (finest first); build it with "
                "level_classes=taxonomy.num_classes, fresh_heads=True.")

    def datasets(self, train_set, val_set, config, data_cfg, superpixels, progress, say):
        """timm's transforms (:mod:`hcast.train.transforms`), the superpixels of the augmented
        image in the loader workers (or on the device, or cached once: ``config.superpixels``),
        unreadable images left out with a warning."""
        from hcast.data import SkipUnreadable, SuperpixelCache, WithSuperpixels
        from hcast.ops import SuperpixelTransform, superpixels as compute_superpixels
        from hcast.train.transforms import create_train_transform, create_val_transform, val_data_config

        train_tf = create_train_transform(config, data_cfg)
        val_tf = create_val_transform(config, data_cfg)
        if config.superpixels == "cache":  # SuperpixelCache flips the training images with their superpixels
            train_tf = create_val_transform(config.replace(eval_mean=None, eval_std=None), data_cfg)
        val_cfg = {**data_cfg, **val_data_config(config)}  # as create_val_transform: its own mean/std if set
        superpixel_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
        method, num_segments = superpixels.method, superpixels.num_segments
        if superpixels.used and config.superpixels in ("loader", "cache"):
            sp = SuperpixelTransform(num_segments=num_segments, method=method, mean=data_cfg["mean"],
                                     std=data_cfg["std"])
            val_sp = SuperpixelTransform(num_segments=num_segments, method=method, mean=val_cfg["mean"],
                                         std=val_cfg["std"])
            train_tf, val_tf = WithSuperpixels(train_tf, sp), WithSuperpixels(val_tf, val_sp)
        elif superpixels.used:

            def superpixel_fn(images: torch.Tensor) -> torch.Tensor:
                return compute_superpixels(images, num_segments=num_segments, method=method)

        # an image file that cannot be read is left out of its batch with a warning naming it, in
        # training and validation alike (hcast.data.images), as `hcast predict` skips it
        train_data: Dataset = SkipUnreadable(TransformedDataset(train_set, train_tf))
        val_data: Dataset = SkipUnreadable(TransformedDataset(val_set, val_tf))
        cache_seconds = 0.0
        if config.superpixels == "cache":
            t0 = time.perf_counter()
            # every process caches the whole training set: the sampler reshuffles shards each epoch
            train_data = SuperpixelCache(train_data, hflip=config.hflip, num_workers=config.workers,
                                         progress=progress)
            val_data = SuperpixelCache(val_data, hflip=0.0, num_workers=config.workers, progress=progress)
            cache_seconds = time.perf_counter() - t0
            what = "superpixels of" if superpixels.used else "decoded"
            say(f"{what} {len(train_data)} + {len(val_data)} images cached in {cache_seconds:.0f}s "
                f"({(train_data.images.nbytes + val_data.images.nbytes) / 2 ** 20:.0f} MiB of images)")
        return train_data, val_data, superpixel_fn, cache_seconds

    def set_training_outputs(self, model: nn.Module, on: bool) -> None:
        if hasattr(model, "set_level_outputs"):
            model.set_level_outputs(on)

    def _loss_and_mixup(self, config: FinetuneConfig):
        if self._criterion is None:
            from hcast.hierarchy.losses import HCASTLoss

            if config.mixup > 0 or config.cutmix > 0:
                from hcast.hierarchy.mixup import HierarchicalMixup

                self._mixup = HierarchicalMixup(
                    mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, prob=config.mixup_prob,
                    switch_prob=config.mixup_switch_prob, label_smoothing=config.label_smoothing,
                    level_classes=self.taxonomy.num_classes)
            self._criterion = HCASTLoss(kl_weight=config.kl_weight, label_smoothing=config.label_smoothing)
        return self._criterion, self._mixup

    def train_epoch(self, setup, data, config, ctx, epoch, num_updates, should_stop):
        """:func:`hcast.train.train_one_epoch` with the H-CAST loss and hierarchical mixup."""
        from hcast.train.loop import train_one_epoch

        criterion, mixup = self._loss_and_mixup(config)
        return train_one_epoch(
            setup.net, data.train_loader, criterion, setup.optimizer, self.taxonomy, ctx.device, epoch=epoch,
            scheduler=setup.scheduler, num_updates=num_updates, mixup=mixup, amp_dtype=setup.amp_dtype,
            grad_scaler=setup.grad_scaler, clip_grad=config.clip_grad, superpixel_fn=data.superpixel_fn,
            max_steps=config.max_steps, progress=config.progress and ctx.is_main, world_size=ctx.world_size,
            should_stop=should_stop, model_ema=setup.model_ema, attention=setup.attention)

    def evaluate(self, model, data, setup, ctx):
        """:func:`hcast.train.evaluate`: per-level accuracy, FPA, TICE, plain and consistent."""
        from hcast.train.evaluation import evaluate

        return evaluate(model, data.val_loader, self.taxonomy, ctx.device, superpixel_fn=data.superpixel_fn,
                        amp_dtype=setup.amp_dtype)

    def score(self, metrics):
        return metrics["plain"]["fpa"]

    def summary(self, metrics):
        accs = " ".join(f"{n} {100 * a:.2f}" for n, a in zip(metrics["level_names"], metrics["plain"]["level_accuracy"]))
        return f"{accs}, FPA {100 * metrics['plain']['fpa']:.2f}, TICE {100 * metrics['plain']['tice']:.2f}"

    def describe(self):
        return f"levels {self.taxonomy.num_classes}"

    def default_model_args(self, config):
        return {"level_classes": list(self.taxonomy.num_classes), **super().default_model_args(config)}

    def pretrained_cfg(self, superpixels):
        return {"level_classes": list(self.taxonomy.num_classes), **super().pretrained_cfg(superpixels)}

    def write_description(self, folder):
        write_json(self.taxonomy.to_dict(), folder / "taxonomy.json")  # atomically, as every file of the run

    def save_model(self, model, folder, model_args, data_config, extra_config):
        """:func:`hcast.train.save_model_folder`: timm's ``local-dir:`` folder with the taxonomy."""
        from hcast.train.outputs import save_model_folder

        save_model_folder(model, folder, self.taxonomy, model_args=model_args, data_config=data_config,
                          extra_config=extra_config)

    def checkpoint_entries(self):
        return {"taxonomy": self.taxonomy.to_dict()}

    def check_resume(self, state, path):
        stored = state.get("taxonomy")
        if stored is None and (path.parent / "taxonomy.json").is_file():
            stored = Taxonomy.load(path.parent / "taxonomy.json").to_dict()
        difference = Taxonomy.from_dict(stored).disagreement(self.taxonomy, "there", "here") if stored is not None \
            else None
        if difference:
            raise ValueError(
                f"resume: {str(path)!r} was trained on another taxonomy ({difference}); resuming would continue on "
                "other labels. Resume with the taxonomy it was trained on (--taxonomy), or start a new run in another "
                "output folder.")

    def load_hint(self, folder):
        return f"timm.create_model('local-dir:{folder}', pretrained=True)"


# ----------------------------------------------------------------------------- segmentation


class SegmentationTensors(Dataset):
    """In-memory ``((image, segments), labels)`` items with random horizontal flips (the three
    flipped together), the form :class:`SegmentationTask` trains on.

    Args:
        images (Tensor[N, 3, H, W] float), segments (Tensor[N, H, W] int64), labels
            (Tensor[N, H, W] int64).
        flip: flip with probability 0.5 on access (``torch``'s generator).

    Raises:
        ValueError: shapes that do not agree.
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
        return (x, s), y


class SegmentationTask(Task):
    """Semantic segmentation with a CAST segmenter
    (:class:`hcast.models.segmentation_heads.CASTSegmenter`: ``model(images, segments) ->
    (B, K, H, W)`` logits).

    Training items are ``(image (3, H, W) float normalised, labels (H, W) int64)`` or
    ``((image, segments), labels)``; the loss is pixel cross-entropy with ``ignore_index``
    (``config.label_smoothing`` applied), the score the dataset-level mIoU (mmseg
    convention unless ``convention`` says otherwise), DDP-exact
    (:class:`hcast.ops.segmentation_metrics.SegmentationIoU`).

    Args:
        num_classes: K (the head's classes).
        class_names: names in id order (default ``"0"``, ``"1"``, ...).
        ignore_index: the label without a loss or a score (255).
        convention: ``'mmseg'`` or ``'spml'`` (:mod:`hcast.ops.segmentation_metrics`).
        model_name: the encoder's timm name stored in the saved folder (default: the
            encoder's ``pretrained_cfg["architecture"]``).
    """

    name, score_name, score_label = "segmentation", "miou", "mIoU"

    def __init__(self, num_classes: int, class_names: Optional[Sequence[str]] = None, ignore_index: int = 255,
                 convention: str = "mmseg", model_name: Optional[str] = None) -> None:
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes: expected a positive number of classes, got {num_classes!r}.")
        self.num_classes, self.ignore_index, self.convention = num_classes, ignore_index, convention
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        if len(self.class_names) != num_classes:
            raise ValueError(f"class_names: expected {num_classes} names, got {len(self.class_names)}.")
        self.model_name = model_name

    def check_model(self, model: nn.Module) -> None:
        classes = getattr(model, "num_classes", None)
        if not hasattr(model, "encoder") or classes != self.num_classes:
            raise ValueError(
                f"model: expected a CASTSegmenter with {self.num_classes} classes (hcast.models.segmentation_heads), "
                f"got {type(model).__name__} with num_classes={classes}.")

    def superpixel_model(self, model: nn.Module) -> nn.Module:
        return getattr(model, "encoder", model)

    def datasets(self, train_set, val_set, config, data_cfg, superpixels, progress, say):
        """The items as they are; superpixels computed on the device for items without
        them (``config.superpixels`` ``"loader"`` / ``"device"``), or once, before training,
        for in-memory tensors (``"cache"``: :class:`SegmentationTensors`, flipped with
        probability 0.5 when ``config.hflip > 0``)."""
        from hcast.ops import superpixels as compute_superpixels

        method, num_segments = superpixels.method, superpixels.num_segments

        def superpixel_fn(images: torch.Tensor) -> torch.Tensor:
            return compute_superpixels(images, num_segments=num_segments, method=method)

        cache_seconds = 0.0
        if config.superpixels == "cache":
            t0 = time.perf_counter()
            train_set = _cached(train_set, superpixel_fn, flip=config.hflip > 0)
            val_set = _cached(val_set, superpixel_fn, flip=False)
            cache_seconds = time.perf_counter() - t0
            say(f"superpixels of {len(train_set)} + {len(val_set)} images cached in {cache_seconds:.0f}s")
        return train_set, val_set, superpixel_fn, cache_seconds

    def parameter_groups(self, model, config):
        """:func:`hcast.train.optim.segmentation_parameter_groups` (``config.head_lr_scale``)."""
        from hcast.train.optim import segmentation_parameter_groups

        return segmentation_parameter_groups(model, config.weight_decay, config.head_lr_scale)

    def train_epoch(self, setup, data, config, ctx, epoch, num_updates, should_stop):
        """:func:`hcast.train.train_steps` with pixel cross-entropy (``ignore_index``)."""
        from hcast.train.loop import train_steps

        net, device, superpixel_fn = setup.net, ctx.device, data.superpixel_fn

        def prepare(batch):
            return unpack_batch(batch, device, superpixel_fn)

        def compute_loss(images, segments, labels):
            return F.cross_entropy(net(images, segments).float(), labels, ignore_index=self.ignore_index,
                                   label_smoothing=config.label_smoothing)

        return train_steps(net, data.train_loader, prepare, compute_loss, setup.optimizer, device, epoch=epoch,
                           scheduler=setup.scheduler, num_updates=num_updates, amp_dtype=setup.amp_dtype,
                           grad_scaler=setup.grad_scaler, clip_grad=config.clip_grad, max_steps=config.max_steps,
                           progress=config.progress and ctx.is_main, world_size=ctx.world_size,
                           should_stop=should_stop, model_ema=setup.model_ema, attention=setup.attention)

    def evaluate(self, model, data, setup, ctx):
        """Dataset-level per-class IoU, mIoU and pixel accuracy on the validation loader
        (:func:`hcast.train.segmentation.evaluate_segmentation`; summed over processes under DDP)."""
        from hcast.train.segmentation import evaluate_segmentation

        out = evaluate_segmentation(model, data.val_loader, self.num_classes, ignore_index=self.ignore_index,
                                    convention=self.convention, class_names=self.class_names,
                                    superpixel_fn=data.superpixel_fn, amp_dtype=setup.amp_dtype).compute()
        return {"miou": float(out["miou"]), "iou": [float(v) for v in out["iou"]],
                "pixel_accuracy": float(out["pixel_accuracy"]), "class_names": list(self.class_names),
                "convention": self.convention}

    def score(self, metrics):
        return metrics["miou"]

    def summary(self, metrics):
        return f"mIoU {100 * metrics['miou']:.2f} ({metrics['convention']}), pixel accuracy " \
               f"{100 * metrics['pixel_accuracy']:.2f}"

    def describe(self):
        return f"segmentation, {self.num_classes} classes"

    def write_description(self, folder):
        write_json({"classes": list(self.class_names), "ignore_index": self.ignore_index}, folder / "classes.json")

    def save_model(self, model, folder, model_args, data_config, extra_config):
        """:func:`hcast.train.segmentation.save_segmenter`: a folder ``hcast segment`` loads."""
        from hcast.train.segmentation import save_segmenter

        name = self.model_name or model.encoder.pretrained_cfg.get("architecture")
        save_segmenter(model, folder, name, model_args, self.class_names,
                       extra_config={**extra_config, "data_config": dict(data_config)})

    def checkpoint_entries(self):
        return {"class_names": list(self.class_names)}

    def check_resume(self, state, path):
        stored = state.get("class_names")
        if stored is not None and list(stored) != self.class_names:
            raise ValueError(f"resume: {str(path)!r} was trained on other classes ({list(stored)[:5]} ... there, "
                             f"{self.class_names[:5]} ... here); resume with the classes it was trained on, or start "
                             "a new run in another output folder.")

    def load_hint(self, folder):
        return f"hcast segment {folder} IMAGE"


def _cached(dataset: Dataset, superpixel_fn: Callable, flip: bool, batch_size: int = 256) -> Dataset:
    """``dataset``'s items as :class:`SegmentationTensors` with superpixels computed once."""
    if isinstance(dataset, SegmentationTensors):
        return dataset
    items = [dataset[i] for i in range(len(dataset))]
    inputs = [x for x, _ in items]
    if isinstance(inputs[0], (tuple, list)):
        images = torch.stack([torch.as_tensor(x[0]) for x in inputs])
        segments = torch.stack([torch.as_tensor(x[1]) for x in inputs])
    else:
        images = torch.stack([torch.as_tensor(x) for x in inputs])
        segments = torch.cat([superpixel_fn(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
    labels = torch.stack([torch.as_tensor(y) for _, y in items]).long()
    return SegmentationTensors(images, segments, labels, flip=flip)


def create_task(config: FinetuneConfig, task: Union[Taxonomy, Task]) -> Task:
    """The task of a run: a taxonomy makes a :class:`ClassificationTask`; a task object is
    checked against ``config.task``.

    Raises:
        ValueError: a task that is not ``config.task``.
        TypeError: neither a taxonomy nor a task.
    """
    if isinstance(task, Taxonomy):
        task = ClassificationTask(task)
    if not isinstance(task, Task):
        raise TypeError(f"task: expected a hcast.hierarchy.Taxonomy or a hcast.train.tasks.Task, got "
                        f"{type(task).__name__}.")
    if task.name != config.task:
        raise ValueError(f"task: config.task is {config.task!r} but a {type(task).__name__} was given; set "
                         f"task={task.name!r} in the config (or use a recipe of that task).")
    return task
