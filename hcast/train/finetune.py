"""Fine-tune a model from Python: :func:`finetune`, a short sequence of named steps.

::

    import timm, hcast
    from hcast.train import finetune, get_recipe

    model = timm.create_model("hcast_small.deit_in1k", pretrained=True, level_classes=taxonomy.num_classes,
                              fresh_heads=True)
    config = get_recipe("hcast-cub").config.replace(epochs=30, batch_size=64)
    result = finetune(model, train_set, val_set, taxonomy, config, output="runs/cub")
    print(result.best_epoch, result.best_score)  # best validation FPA

:func:`finetune` runs, in order (each a documented function a loop of your own, or
``hcast finetune``, can call alone):

1. **data** -- :func:`prepare_data`: the task's datasets (classification: timm's
   transforms and the superpixels of the augmented image), samplers and loaders;
2. **model and optimizer** -- :func:`prepare_training`: device, DDP, precision, optimizer
   and schedule, EMA, the attention backend;
3. **resume** -- :func:`resume_training`: the state of an interrupted run, checked first;
4. **loop** -- :func:`train_epochs`: epochs of :func:`hcast.train.train_steps`, validation,
   the time budget, early stopping;
5. **outputs** -- :class:`RunOutputs`: the model folder of the best validation score,
   ``checkpoint-latest.pth``, the log and the curves, written atomically by rank 0.

What differs between tasks (the datasets and targets, the loss, the metric, the saved
model) is a :mod:`hcast.train.tasks` object: :class:`~hcast.train.tasks.ClassificationTask`
(H-CAST: per-level cross-entropy + tree-path KL, FPA) or
:class:`~hcast.train.tasks.SegmentationTask` (pixel cross-entropy, mIoU), chosen by
``config.task``. Under ``torchrun`` it trains with DDP (gloo on CPU, nccl on CUDA); rank 0
prints and writes.

Follows the H-CAST authors' ``deit/main_suppix_hier.py`` (github:ngocquanai/HiOT at
b1a222b) for classification: timm's transforms, hierarchical mixup/cutmix, EMA, repeated
augmentation under DDP, AdamW, a cosine schedule with warm-up, the best validation epoch
kept; and the CAST authors' SPML / Segmenter fine-tuning for segmentation (SGD, poly).
"""
from __future__ import annotations

import inspect
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from hcast._io import write_json
from hcast.hierarchy import Taxonomy
from hcast.precision import resolve_precision
from hcast.train.batches import SuperpixelFn
from hcast.train.config import FinetuneConfig
from hcast.train.distributed import DistributedContext, ShardSampler, init_distributed
from hcast.train.loop import AttentionBackendChooser, TimeBudget
from hcast.train.optim import create_optimizer_and_scheduler
from hcast.train.outputs import CHECKPOINT_NAME, CONFIG_NAME, CURVES_NAME, LOG_NAME, plot_learning_curves, write_log
from hcast.train.tasks import Task, create_task
from hcast.train.transforms import val_data_config
from hcast.weights.folder import load_checkpoint, save_checkpoint

__all__ = ["finetune", "FinetuneResult", "FinetuneData", "TrainingSetup", "TrainingState", "RunOutputs",
           "prepare_data", "prepare_training", "resume_training", "train_epochs", "training_data_config",
           "superpixel_settings", "SuperpixelSettings", "check_batch_size", "check_resume", "resume_checkpoint_path", "uses_superpixels"]

_PRECISION_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns.

    Attributes:
        model: the trained model (unwrapped), holding the *last* epoch's weights; the
            output folder holds the best validated epoch's.
        best_epoch: 1-based epoch with the best validation score (0: never validated).
        best_score: that score: FPA (plain decoding) for classification, mIoU for
            segmentation, in [0, 1].
        metrics: the last validation's metrics (the task's ``evaluate``).
        history: one record per epoch, as written to ``log.jsonl``.
        lr: the peak learning rate used (``config.lr`` after batch-size scaling).
        output: the output folder, or ``None``.
        stopped_early: the time budget or ``on_epoch_end`` ended the run before its plan.
        num_updates: optimizer updates done.
    """

    model: nn.Module
    best_epoch: int
    best_score: float
    metrics: Dict[str, Any]
    history: List[Dict[str, Any]] = field(default_factory=list)
    lr: float = 0.0
    output: Optional[Path] = None
    stopped_early: bool = False
    num_updates: int = 0


def uses_superpixels(model: nn.Module) -> bool:
    """Whether ``model.forward`` takes superpixel ids (CAST, H-CAST, CAST segmenters) or reads
    patches (Hier-ViT)."""
    return "segments" in inspect.signature(model.forward).parameters


def _seed_epoch(seed: int, epoch: int, rank: int) -> None:
    # every epoch's randomness (augmentation, mixup, drop-path, worker seeds) derives from
    # (seed, epoch, rank): a resumed run replays the epochs an uninterrupted one runs
    value = (seed * 1_000_003 + epoch * 7919 + rank) % 2 ** 31
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def _seed_worker(worker_id: int) -> None:
    # torch seeds `random` and torch in each worker; numpy (timm's RandAugment draws from it) too
    np.random.seed(torch.initial_seed() % 2 ** 32)


def _say(ctx: DistributedContext) -> Callable[[str], None]:
    return (lambda text: print(text, flush=True)) if ctx.is_main else (lambda text: None)


# ----------------------------------------------------------------------------- 1. data


def training_data_config(model: nn.Module, config: FinetuneConfig) -> Dict[str, Any]:
    """timm's data config of ``model`` (``timm.data.resolve_data_config``: input size, mean,
    std, interpolation, crop) with ``config.input_size`` applied."""
    from timm.data import resolve_data_config

    data_cfg = resolve_data_config({}, model=model)
    if config.input_size:
        data_cfg["input_size"] = (3, config.input_size, config.input_size)
    return data_cfg


@dataclass(frozen=True)
class SuperpixelSettings:
    """How a run's images get superpixels: ``used`` (the model reads them), ``method`` and
    ``num_segments``."""

    used: bool
    method: Optional[str]
    num_segments: Optional[int]


def superpixel_settings(model: nn.Module, config: FinetuneConfig, task: Task,
                        data_cfg: Optional[Dict[str, Any]] = None) -> SuperpixelSettings:
    """The superpixels of a run, checked before any image is read
    (:func:`hcast.data.resolve_superpixel_settings`): ``config.superpixel_method`` /
    ``num_segments``, else the model's; ``torch_slic`` for ``superpixels="device"``.

    Raises:
        ValueError: a count the method or the model's feature grid cannot take, an input
            size that is not a multiple of the stem stride.
    """
    from hcast.data import resolve_superpixel_settings

    if not uses_superpixels(model):
        return SuperpixelSettings(False, None, None)
    data_cfg = data_cfg or training_data_config(model, config)
    method, num_segments = resolve_superpixel_settings(
        task.superpixel_model(model), config.superpixel_method or ("torch_slic" if config.superpixels == "device"
                                                                   else None),
        config.num_segments, data_cfg["input_size"][-2:])
    return SuperpixelSettings(True, method, num_segments)


def check_batch_size(num_images: int, config: FinetuneConfig, world_size: int = 1) -> None:
    """Refuse, before any image is read, a training set that gives no full batch of
    ``config.batch_size`` per process (training drops the last partial batch).

    Raises:
        ValueError: starting ``"batch_size:"``, with the largest batch size that fits.
    """
    if num_images < config.batch_size * world_size:
        raise ValueError(f"batch_size: the {num_images} training images give no full batch of {config.batch_size} "
                         f"per process on {world_size} process(es); lower batch_size to "
                         f"{max(1, num_images // world_size)} or less, or train on more images.")


@dataclass
class FinetuneData:
    """What :func:`prepare_data` returns: the run's data, ready to iterate.

    Attributes:
        train_data, val_data: the datasets the loaders read (transformed, maybe cached).
        train_loader, val_loader: ``DataLoader``s (training drops the last partial batch).
        train_sampler: reshuffled per epoch (``set_epoch``).
        steps_per_epoch: updates per epoch (``config.max_steps`` applied).
        data_config: timm's data config of training (input size, mean, std).
        folder_data_config: the data config saved with the model (validation's).
        superpixels: :class:`SuperpixelSettings`.
        superpixel_fn: computes superpixels on the device when the loader brings none.
        cache_seconds: time spent caching before training.
    """

    train_data: Dataset
    val_data: Dataset
    train_loader: DataLoader
    val_loader: DataLoader
    train_sampler: Any
    steps_per_epoch: int
    data_config: Dict[str, Any]
    folder_data_config: Dict[str, Any]
    superpixels: SuperpixelSettings
    superpixel_fn: Optional[SuperpixelFn] = None
    cache_seconds: float = 0.0


def prepare_data(model: nn.Module, train_set: Dataset, val_set: Dataset, config: FinetuneConfig,
                 ctx: DistributedContext, task: Task) -> FinetuneData:
    """Step 1, data: the task's datasets (:meth:`hcast.train.tasks.Task.datasets`), the
    samplers (repeated augmentation or a seeded per-epoch shuffle; evaluation shards
    without padding) and the loaders.

    Raises:
        ValueError: too few images for one full batch per process (:func:`check_batch_size`).
    """
    from hcast.data import collate_readable

    check_batch_size(len(train_set), config, ctx.world_size)
    data_cfg = training_data_config(model, config)
    superpixels = superpixel_settings(model, config, task, data_cfg)
    train_data, val_data, superpixel_fn, cache_seconds = task.datasets(
        train_set, val_set, config, data_cfg, superpixels, progress=config.progress and ctx.is_main, say=_say(ctx))
    if config.repeated_aug > 1:
        from timm.data.distributed_sampler import RepeatAugSampler

        train_sampler: Any = RepeatAugSampler(train_data, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                              num_repeats=config.repeated_aug)
    else:  # also for one process: a seeded shuffle per epoch (set_epoch), replayed by a resumed run
        train_sampler = DistributedSampler(train_data, ctx.world_size, ctx.rank, shuffle=True, seed=config.seed,
                                           drop_last=True)
    val_sampler = ShardSampler(len(val_data), ctx.rank, ctx.world_size)
    workers = 0 if config.superpixels == "cache" else config.workers  # cached items are tensor slices
    # no persistent workers: each epoch's workers are seeded from that epoch's seed (exact resume)
    loader_kw = dict(num_workers=workers, pin_memory=ctx.device.type == "cuda", collate_fn=collate_readable,
                     worker_init_fn=_seed_worker if workers else None)
    train_loader = DataLoader(train_data, batch_size=config.batch_size, sampler=train_sampler, drop_last=True,
                              **loader_kw)
    val_loader = DataLoader(val_data, batch_size=config.batch_size * 2, sampler=val_sampler, **loader_kw)
    return FinetuneData(
        train_data=train_data, val_data=val_data, train_loader=train_loader, val_loader=val_loader,
        train_sampler=train_sampler, steps_per_epoch=min(len(train_loader), config.max_steps or len(train_loader)),
        data_config=data_cfg, folder_data_config={"input_size": tuple(data_cfg["input_size"]), **val_data_config(config)},
        superpixels=superpixels, superpixel_fn=superpixel_fn, cache_seconds=cache_seconds)


# ----------------------------------------------------------------------------- 2. model and optimizer


@dataclass
class TrainingSetup:
    """What :func:`prepare_training` returns: the model on its device and what updates it.

    Attributes:
        model: the (unwrapped) model; ``net``: what the loop calls (DDP-wrapped under torchrun).
        optimizer, scheduler: :func:`hcast.train.create_optimizer_and_scheduler`'s.
        warmup_updates: the scheduler's warm-up, for a :class:`TimeBudget`.
        lr: the peak learning rate (``config.lr`` after batch-size scaling).
        amp_dtype: autocast dtype (:func:`hcast.precision.resolve_precision`), ``None``: float32.
        grad_scaler: for float16.
        model_ema: ``timm.utils.ModelEmaV3`` or ``None``.
        attention: the SDPA backend chooser, or ``None``.
    """

    model: nn.Module
    net: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    warmup_updates: int
    lr: float
    amp_dtype: Optional[torch.dtype]
    grad_scaler: Optional[torch.amp.GradScaler] = None
    model_ema: Any = None
    attention: Optional[AttentionBackendChooser] = None


def _attention_backend(config: FinetuneConfig, ctx: DistributedContext) -> Optional[AttentionBackendChooser]:
    """``config.attention`` as the training loop's chooser: ``auto`` measures on CPUs
    (PyTorch's own choice on GPUs), ``math`` / ``default`` fix the backend."""
    if config.attention == "default" or (config.attention == "auto" and ctx.device.type != "cpu"):
        return None
    chooser = AttentionBackendChooser(sync=ctx.distributed)
    if config.attention == "math":
        chooser.chosen = "math"
    return chooser


def prepare_training(model: nn.Module, config: FinetuneConfig, ctx: DistributedContext, steps_per_epoch: int,
                     task: Task) -> TrainingSetup:
    """Step 2, model and optimizer: ``model`` on ``ctx.device`` (in DDP under torchrun), the
    optimizer and per-update schedule (:func:`hcast.train.create_optimizer_and_scheduler`,
    with the task's parameter groups), the precision (:func:`hcast.precision.resolve_precision`,
    ``training=True``; a ``GradScaler`` for float16), the EMA and the attention backend."""
    model.to(ctx.device)
    net: nn.Module = model
    if ctx.distributed:
        task.set_training_outputs(model, True)  # DDP only calls forward (set back by train_epochs)
        net = nn.parallel.DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda"
                                                  else None)
    lr = config.lr * (config.batch_size * ctx.world_size / config.lr_base_batch if config.lr_base_batch else 1.0)
    optimizer, scheduler, warmup_updates = create_optimizer_and_scheduler(
        model, config, steps_per_epoch, lr, param_groups=task.parameter_groups(model, config))
    amp_dtype = resolve_precision(config.precision, ctx.device, verbose=ctx.is_main, training=True)
    grad_scaler = torch.amp.GradScaler(ctx.device.type) if amp_dtype == torch.float16 else None
    model_ema = None
    if config.ema_decay > 0:
        from timm.utils import ModelEmaV3

        model_ema = ModelEmaV3(model, decay=config.ema_decay)
    return TrainingSetup(model=model, net=net, optimizer=optimizer, scheduler=scheduler, warmup_updates=warmup_updates,
                         lr=lr, amp_dtype=amp_dtype, grad_scaler=grad_scaler, model_ema=model_ema,
                         attention=_attention_backend(config, ctx))


# ----------------------------------------------------------------------------- 3. resume


@dataclass
class TrainingState:
    """Where a run stands: what :func:`resume_training` restores and :func:`train_epochs` advances.

    Attributes:
        epoch: the next epoch to run (0-based).
        num_updates: optimizer updates done.
        best_score, best_epoch: the best validation score so far and its 1-based epoch.
        history: one record per epoch run.
        resumed_from: the checkpoint, if resumed.
    """

    epoch: int = 0
    num_updates: int = 0
    best_score: float = -1.0
    best_epoch: int = 0
    history: List[Dict[str, Any]] = field(default_factory=list)
    resumed_from: Optional[Path] = None


def resume_checkpoint_path(resume: Union[str, os.PathLike], output: Optional[Union[str, os.PathLike]]) -> Path:
    """``resume`` as a file: ``"auto"`` is ``output/checkpoint-latest.pth``."""
    if str(resume) == "auto" and output is not None:
        return Path(output) / CHECKPOINT_NAME
    return Path(resume)


def check_resume(state: Dict[str, Any], path: Union[str, os.PathLike], model: nn.Module, task: Task) -> None:
    """Check that a training checkpoint fits the run resuming from it, before anything is loaded.

    Resuming on a taxonomy (or segmentation classes) in another order would continue
    training on swapped labels, and weights of another shape fail deep in
    ``load_state_dict``: both are refused here. A classification checkpoint's taxonomy is
    the one it stores (written by :func:`finetune`), else the ``taxonomy.json`` next to it.

    Args:
        state: the loaded checkpoint (``model``, ``taxonomy`` ...).
        path: its file, for messages.
        model: the model about to load ``state["model"]``.
        task: the resuming run's task (e.g. ``ClassificationTask(taxonomy)``).

    Raises:
        ValueError: starting ``"resume:"``, naming the file, the difference and what to do.
    """
    path = Path(path)
    task.check_resume(state, path)
    weights = state.get("model")
    if not isinstance(weights, dict):
        raise ValueError(f"resume: {str(path)!r} holds no model weights ('model'); pass a checkpoint written by "
                         "finetune (checkpoint-latest.pth).")
    own = model.state_dict()
    for key, value in weights.items():
        if key in own and hasattr(value, "shape") and tuple(value.shape) != tuple(own[key].shape):
            raise ValueError(
                f"resume: {str(path)!r} was written by another model: {key!r} has shape {tuple(value.shape)} there and "
                f"{tuple(own[key].shape)} in this model (levels {getattr(model, 'level_classes', '?')}); resume with "
                "the model, its arguments and the taxonomy the checkpoint was trained with.")
    missing = sorted(set(own) - set(weights))
    if missing:
        raise ValueError(f"resume: {str(path)!r} lacks weights this model has ({missing[:3]}"
                         f"{' ...' if len(missing) > 3 else ''}); resume with the model the checkpoint was trained with.")


def resume_training(setup: TrainingSetup, path: Optional[Union[str, os.PathLike]], task: Task,
                    ctx: DistributedContext) -> TrainingState:
    """Step 3, resume: a fresh :class:`TrainingState` without ``path``; else the checkpoint
    is checked (:func:`check_resume`) and model, optimizer, EMA, loss scaler, attention
    backend, schedule position, best score and history are restored, so that training
    continues after its epoch and ends in the state an uninterrupted run reaches.

    Raises:
        ValueError: a checkpoint that is missing, unreadable, or written for another
            taxonomy, classes or model.
    """
    if path is None:
        return TrainingState()
    path = Path(path)
    state = load_checkpoint(path, map_location=ctx.device)
    check_resume(state, path, setup.model, task)
    setup.model.load_state_dict(state["model"])
    setup.optimizer.load_state_dict(state["optimizer"])
    if setup.model_ema is not None and state.get("model_ema"):
        setup.model_ema.load_state_dict(state["model_ema"])
    if setup.grad_scaler is not None and state.get("grad_scaler"):
        setup.grad_scaler.load_state_dict(state["grad_scaler"])
    if setup.attention is not None and state.get("attention"):
        setup.attention.load_state_dict(state["attention"])  # the same backend at the same update
    num_updates = int(state["num_updates"])
    setup.scheduler.step_update(num_updates)
    _say(ctx)(f"resumed from {path} at epoch {int(state['epoch']) + 2} (update {num_updates})")
    return TrainingState(epoch=int(state["epoch"]) + 1, num_updates=num_updates,
                         best_score=float(state.get("best_score", -1.0)), best_epoch=int(state.get("best_epoch", 0)),
                         history=list(state.get("history", [])), resumed_from=path)


# ----------------------------------------------------------------------------- 5. outputs


class RunOutputs:
    """Step 5, outputs: what a run writes in its folder, by rank 0 only, every file
    atomically (``hcast._io``): at the start the task's description (``taxonomy.json`` or
    ``classes.json``) and ``finetune_config.json``; after each validated epoch that
    improves the score, the model folder (``config.json`` + ``model.safetensors``, the
    task's format); after every epoch ``checkpoint-latest.pth`` (for resume) and
    ``log.jsonl``; after every validated epoch ``learning_curves.png``.

    Args:
        folder: the output folder, or ``None`` (nothing written).
        config: the run's config.
        task: the run's task.
        ctx: the process (only rank 0 writes).
        model_args: constructor arguments stored with the model (the task's default if ``None``).
        superpixels: stored in the model's pretrained cfg.
        folder_data_config: the data config stored with the model.
    """

    def __init__(self, folder: Optional[Union[str, os.PathLike]], config: FinetuneConfig, task: Task,
                 ctx: DistributedContext, model_args: Optional[Dict[str, Any]], superpixels: SuperpixelSettings,
                 folder_data_config: Dict[str, Any]) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.config, self.task = config, task
        self.writes = ctx.is_main and self.folder is not None
        self.model_args = model_args if model_args is not None else task.default_model_args(config)
        self.pretrained_cfg = task.pretrained_cfg(superpixels)
        self.folder_data_config = folder_data_config

    def start(self) -> None:
        """Create the folder; write the task's description and the config."""
        if not self.writes:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        self.task.write_description(self.folder)
        write_json(self.config.to_dict(), self.folder / CONFIG_NAME)

    def save_model(self, model: nn.Module, state: TrainingState) -> None:
        """The model folder of the best epoch (``config.json["training"]`` says which)."""
        if not self.writes:
            return
        training = {"best_epoch": state.best_epoch, f"val_{self.task.score_name}": state.best_score,
                    "epochs": self.config.epochs, "recipe": self.config.recipe}
        self.task.save_model(model, self.folder, model_args=self.model_args, data_config=self.folder_data_config,
                             extra_config={"pretrained_cfg": self.pretrained_cfg, "training": training})

    def save_checkpoint(self, setup: TrainingSetup, state: TrainingState, epoch: int) -> None:
        """``checkpoint-latest.pth`` (everything :func:`resume_training` restores), the log
        and the learning curves."""
        if not self.writes:
            return
        save_checkpoint({
            "model": setup.model.state_dict(), "optimizer": setup.optimizer.state_dict(),
            "model_ema": setup.model_ema.state_dict() if setup.model_ema is not None else {},
            "grad_scaler": setup.grad_scaler.state_dict() if setup.grad_scaler is not None else {},
            "attention": setup.attention.state_dict() if setup.attention is not None else {},
            "epoch": epoch, "num_updates": state.num_updates, "best_score": state.best_score,
            "best_epoch": state.best_epoch, "history": state.history, "config": self.config.to_dict(),
            **self.task.checkpoint_entries(),
        }, self.folder / CHECKPOINT_NAME)
        write_log(state.history, self.folder / LOG_NAME)
        if state.history and "val" in state.history[-1]:
            # drawn when there is a new validation point (matplotlib costs a fraction of a second of the budget)
            plot_learning_curves(state.history, self.folder / CURVES_NAME)

    def finish(self, say: Callable[[str], None], state: TrainingState, seconds: float) -> None:
        """The last line: where the model is and how to load it."""
        if self.folder is not None:
            say(f"trained in {seconds:.0f}s; best validation {self.task.score_label} {100 * state.best_score:.2f} at "
                f"epoch {state.best_epoch}; model folder: {self.folder} ({self.task.load_hint(self.folder)})")


# ----------------------------------------------------------------------------- 4. loop


def _budget(config: FinetuneConfig, ctx: DistributedContext, data: FinetuneData, setup: TrainingSetup,
            state: TrainingState) -> Optional[TimeBudget]:
    if not config.time_budget:
        return None
    planned = config.steps or config.epochs * data.steps_per_epoch
    clock = time.process_time if config.budget_clock == "cpu" else time.perf_counter
    if config.val_every:
        # evaluation costs about a third of a training step per image, plus the superpixels
        eval_updates = (config.epochs - state.epoch) * len(data.val_data) / (config.batch_size * ctx.world_size * 2.5)
        return TimeBudget(max(config.time_budget * 60 - data.cache_seconds, 1.0), planned, setup.scheduler,
                          warmup_updates=setup.warmup_updates, reserve_updates=eval_updates + 5,
                          # re-plan often: on a shared machine a slow start must not fix a short schedule
                          replan_every=20, sync=ctx.distributed, start_update=state.num_updates,
                          extend=config.fill_budget, clock=clock)
    # validated once, after training: the budget is the training's (re-planned after 5 and 20
    # updates, then every 50, measured from the first update)
    return TimeBudget(config.time_budget * 60, planned, setup.scheduler, warmup_updates=setup.warmup_updates,
                      skip=0, calibration_updates=5, replan_at=(20,), replan_every=50, sync=ctx.distributed,
                      start_update=state.num_updates, extend=config.fill_budget, clock=clock)


def train_epochs(setup: TrainingSetup, data: FinetuneData, state: TrainingState, config: FinetuneConfig,
                 ctx: DistributedContext, task: Task, outputs: RunOutputs,
                 on_epoch_end: Optional[Callable[[Dict[str, Any]], Optional[bool]]] = None) -> FinetuneResult:
    """Step 4, loop: epochs of the task's training pass (:func:`hcast.train.train_steps`
    under it), each seeded from ``(config.seed, epoch, rank)``; validation every
    ``config.val_every`` epochs (and after the last), the best score's model and every
    epoch's checkpoint through ``outputs``; ends after ``config.epochs`` (or
    ``config.steps`` updates), when the time budget is spent, or when ``on_epoch_end``
    returns ``True``.

    Returns:
        the run's :class:`FinetuneResult`.

    Raises:
        FloatingPointError: the loss became NaN or infinite.
    """
    say = _say(ctx)
    model = setup.model
    budget = _budget(config, ctx, data, setup, state)
    total_updates = config.steps or config.epochs * data.steps_per_epoch

    def should_stop(num_updates: int) -> bool:
        if budget is not None:
            return budget(num_updates)
        return config.steps is not None and num_updates >= config.steps

    planned_epochs = config.epochs if not config.steps else -(-config.steps // data.steps_per_epoch)
    # fill_budget: as many epochs as the budget holds (the budget ends the loop)
    last_epoch = planned_epochs if budget is None or not budget.extend else planned_epochs * 1000
    metrics: Dict[str, Any] = next((r["val"] for r in reversed(state.history) if "val" in r), {})
    stopped_early, attention_said = False, setup.attention is not None and setup.attention.chosen is not None
    start = time.perf_counter()
    for epoch in range(state.epoch, last_epoch):
        _seed_epoch(config.seed, epoch, ctx.rank)
        data.train_sampler.set_epoch(epoch)
        stats = task.train_epoch(setup, data, config, ctx, epoch=epoch, num_updates=state.num_updates,
                                 should_stop=should_stop)
        attention = setup.attention
        if attention is not None and attention.chosen is not None and attention.medians and not attention_said:
            attention_said = True
            say(attention.describe())
        state.num_updates = stats["num_updates"]
        if ctx.distributed:
            # BatchNorm running statistics moved apart in the last step's local forward (DDP
            # broadcasts buffers only at the start of a forward): evaluate, on every rank, the
            # buffers rank 0 saves
            for buffer in model.buffers():
                torch.distributed.broadcast(buffer, 0)
        out_of_budget = budget is not None and budget(state.num_updates)
        done = out_of_budget or (config.steps is not None and state.num_updates >= config.steps) or \
            epoch + 1 >= last_epoch
        record: Dict[str, Any] = {"epoch": epoch + 1, "train": stats}
        judged = setup.model_ema.module if (setup.model_ema is not None and config.ema_eval) else model
        validate = done or (config.val_every and (epoch + 1) % config.val_every == 0)
        if validate:
            metrics = task.evaluate(judged, data, setup, ctx)
            record["val"] = metrics
        state.history.append(record)
        planned = planned_epochs if last_epoch == planned_epochs else max(
            epoch + 1, -(-budget.total_updates // data.steps_per_epoch))
        if config.steps:
            planned = max(epoch + 1, -(-min(total_updates, budget.total_updates if budget else total_updates)
                                       // data.steps_per_epoch))
        say(f"epoch {epoch + 1}/{planned}: loss {stats['loss']:.4f}, lr {stats['lr']:.2e}, "
            f"{stats['images_per_s']:.0f} img/s, {stats['seconds']:.0f}s"
            + (f" | val {task.summary(metrics)}" if validate else f" | {state.num_updates} updates"))
        if validate and task.score(metrics) > state.best_score:
            state.best_score, state.best_epoch = task.score(metrics), epoch + 1
            outputs.save_model(judged, state)
        outputs.save_checkpoint(setup, state, epoch)
        stop = bool(on_epoch_end(record)) if on_epoch_end is not None else False
        if done or stop:
            stopped_early = epoch + 1 < planned_epochs and not (
                config.steps is not None and state.num_updates >= config.steps)
            _say_budget(say, budget, config, state.num_updates)
            break
    task.set_training_outputs(model, False)
    outputs.finish(say, state, time.perf_counter() - start)
    return FinetuneResult(model=model, best_epoch=state.best_epoch, best_score=state.best_score, metrics=metrics,
                          history=state.history, lr=setup.lr, output=outputs.folder, stopped_early=stopped_early,
                          num_updates=state.num_updates)


def _say_budget(say: Callable[[str], None], budget: Optional[TimeBudget], config: FinetuneConfig,
                num_updates: int) -> None:
    unit = "CPU min" if config.budget_clock == "cpu" else "min"
    planned = f"{budget.planned_updates} planned" if budget is not None else ""
    if budget is not None and budget.extended:
        say(f"time budget of {config.time_budget:g} {unit}: filled with {num_updates} updates "
            f"({planned} for {config.epochs} epochs; {budget.seconds_per_update or 0:.2f} s each); the schedule ran "
            "to the end of the budget")
    elif budget is not None and budget.shortened:
        say(f"time budget of {config.time_budget:g} {unit}: stopped after {num_updates} of {planned} updates ("
            + (f"{budget.seconds_per_update:.2f} s each" if budget.seconds_per_update is not None
               else "out of time before the step time was measured")
            + "); the schedule was shortened to match")


# ----------------------------------------------------------------------------- finetune


def finetune(
    model: nn.Module,
    train_set: Dataset,
    val_set: Dataset,
    task: Union[Taxonomy, Task],
    config: Optional[FinetuneConfig] = None,
    *,
    output: Optional[Union[str, os.PathLike]] = None,
    resume: Optional[Union[str, os.PathLike]] = None,
    model_args: Optional[Dict[str, Any]] = None,
    on_epoch_end: Optional[Callable[[Dict[str, Any]], Optional[bool]]] = None,
) -> FinetuneResult:
    """Fine-tune ``model`` on ``train_set``, validating on ``val_set``: steps 1-5 of the
    module docstring in order.

    Args:
        model: classification: a timm model returning per-level logits, finest first, one
            head per level of the taxonomy (``level_classes=taxonomy.num_classes``); CAST /
            H-CAST models get superpixels, Hier-ViT images only. Segmentation: a
            :class:`hcast.models.segmentation_heads.CASTSegmenter` (``(B, K, H, W)`` logits).
        train_set, val_set: classification: ``(PIL image, fine label int)`` items, labels in
            the taxonomy's fine order (e.g. :func:`hcast.data.create_train_val_datasets` with
            ``None`` transforms); items that are already tensors pass untransformed.
            Segmentation: ``(image (3, H, W) float normalised, labels (H, W) int64)`` or
            ``((image, segments (H, W) int64), labels)`` items
            (:class:`hcast.train.tasks.SegmentationTensors`, :class:`hcast.data.PascalVOC`).
        task: the taxonomy (a classification run: the class tree, levels finest first), or a
            :mod:`hcast.train.tasks` object (:class:`~hcast.train.tasks.SegmentationTask`
            for ``config.task == "segmentation"``).
        config: the run's settings (default :class:`FinetuneConfig`).
        output: folder for ``config.json`` + ``model.safetensors`` (the best validated epoch;
            ``config.json["training"]`` says which), the task's description
            (``taxonomy.json`` / ``classes.json``), ``checkpoint-latest.pth`` (every epoch,
            for ``resume``), ``log.jsonl``, ``learning_curves.png`` and
            ``finetune_config.json``; ``None``: nothing written.
        resume: a checkpoint written by a run with the same config, or ``"auto"`` for
            ``output/checkpoint-latest.pth``: training continues after its epoch and ends
            in the state an uninterrupted run reaches.
        model_args: constructor arguments stored in ``config.json`` to rebuild the model
            (default: the task's, e.g. ``{"level_classes": taxonomy.num_classes}`` plus
            ``img_size``).
        on_epoch_end: called with each epoch's log record on every process; returning
            ``True`` ends the run (early stopping; under DDP, answer alike on every process).
            With ``config.val_every=0`` a run ended this way is not validated; its
            checkpoint resumes it.

    Returns:
        a :class:`FinetuneResult`.

    Raises:
        ValueError: a model that does not fit the task (heads vs. taxonomy), a task that is
            not ``config.task``, too few images for one batch, a resume checkpoint that is
            missing, unreadable, or written for another taxonomy or model (:func:`check_resume`).
        FloatingPointError: the loss became NaN or infinite.
    """
    config = config or FinetuneConfig()
    config.validate()
    task = create_task(config, task)
    task.check_model(model)
    ctx = init_distributed(config.device)
    data = prepare_data(model, train_set, val_set, config, ctx, task)                       # 1. data
    setup = prepare_training(model, config, ctx, data.steps_per_epoch, task)                 # 2. model, optimizer
    state = resume_training(setup, resume_checkpoint_path(resume, output) if resume is not None else None,
                            task, ctx)                                                       # 3. resume
    outputs = RunOutputs(output, config, task, ctx, model_args, data.superpixels, data.folder_data_config)
    outputs.start()                                                                          # 5. outputs
    _describe_run(config, ctx, data, setup, task)
    return train_epochs(setup, data, state, config, ctx, task, outputs, on_epoch_end)        # 4. loop


def _describe_run(config: FinetuneConfig, ctx: DistributedContext, data: FinetuneData, setup: TrainingSetup,
                  task: Task) -> None:
    model = setup.model
    n_params = sum(p.numel() for p in model.parameters())
    sp = data.superpixels
    sp_note = f"superpixels {sp.method} ({sp.num_segments}) in the {config.superpixels}" if sp.used else "patches"
    length = f"{config.steps} updates ({data.steps_per_epoch} a epoch)" if config.steps else \
        f"{config.epochs} epochs x {data.steps_per_epoch} steps"
    _say(ctx)(f"hcast finetune: {type(model).__name__} ({n_params / 1e6:.2f}M parameters) on {ctx.device} "
              f"x{ctx.world_size}, {len(data.train_data)} train / {len(data.val_data)} val images, {task.describe()}, "
              f"{sp_note}, precision {_PRECISION_NAMES[setup.amp_dtype]}, {length}, peak LR {setup.lr:.3g}"
              + (f", recipe {config.recipe}" if config.recipe else ""))
