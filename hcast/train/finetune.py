"""Fine-tune a hierarchical classifier from Python: :func:`finetune`.

::

    import timm, hcast
    from hcast.train import finetune, get_recipe

    model = timm.create_model("hcast_small.deit_in1k", pretrained=True, level_classes=taxonomy.num_classes,
                              fresh_heads=True)
    config = get_recipe("hcast-cub").config.replace(epochs=30, batch_size=64)
    result = finetune(model, train_set, val_set, taxonomy, config, output="runs/cub")
    print(result.best_epoch, result.best_fpa)

``train_set`` / ``val_set`` yield ``(PIL image, fine label)``; :func:`finetune` adds timm's
transforms (:mod:`hcast.train.transforms`) and the superpixels of the augmented image.
Under ``torchrun`` it trains with DDP (gloo on CPU, nccl on CUDA); rank 0 prints and
writes. Everything ``hcast finetune`` does goes through here; the CLI only parses
arguments. For a loop of your own, use :func:`hcast.train.train_one_epoch` and
:func:`hcast.train.evaluate` (``examples/train_loop_minimal.py``).

Follows the H-CAST authors' ``deit/main_suppix_hier.py`` (github:ngocquanai/HiOT at
b1a222b): timm's transforms, hierarchical mixup/cutmix, EMA, repeated augmentation under
DDP, AdamW, a cosine schedule with warm-up, the best validation epoch kept.
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

from hcast.hierarchy import Taxonomy
from hcast.train.config import FinetuneConfig
from hcast.train.distributed import ShardSampler, init_distributed, resolve_training_precision
from hcast.train.evaluation import evaluate
from hcast.train.loop import AttentionBackendChooser, TimeBudget, train_one_epoch
from hcast.train.outputs import (CHECKPOINT_NAME, CONFIG_NAME, CURVES_NAME, LOG_NAME, plot_learning_curves,
                                 save_model_folder, write_log)
from hcast.train.transforms import create_train_transform, create_val_transform, val_data_config
from hcast._io import write_json
from hcast.weights.folder import load_checkpoint, save_checkpoint

__all__ = ["finetune", "check_resume", "FinetuneResult", "TransformedDataset", "create_optimizer_and_scheduler",
           "uses_superpixels"]


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns.

    Attributes:
        model: the trained model (unwrapped), holding the *last* epoch's weights; the
            output folder holds the best epoch's.
        best_epoch: 1-based epoch with the highest validation FPA (plain decoding).
        best_fpa: that FPA, in [0, 1].
        metrics: the last epoch's validation metrics (:func:`hcast.train.evaluate`).
        history: one record per epoch, as written to ``log.jsonl``.
        lr: the peak learning rate used (``config.lr`` after batch-size scaling).
        output: the output folder, or ``None``.
        stopped_early: the time budget or ``on_epoch_end`` ended the run before
            ``config.epochs``.
    """

    model: nn.Module
    best_epoch: int
    best_fpa: float
    metrics: Dict[str, Any]
    history: List[Dict[str, Any]] = field(default_factory=list)
    lr: float = 0.0
    output: Optional[Path] = None
    stopped_early: bool = False


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


_PRECISION_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def uses_superpixels(model: nn.Module) -> bool:
    """Whether ``model.forward`` takes superpixel ids (CAST, H-CAST) or reads patches (Hier-ViT)."""
    return "segments" in inspect.signature(model.forward).parameters


def _attention_backend(config: FinetuneConfig, ctx: Any) -> Optional[AttentionBackendChooser]:
    """``config.attention`` as the training loop's chooser: ``auto`` measures on CPUs
    (PyTorch's own choice on GPUs), ``math`` / ``default`` fix the backend."""
    if config.attention == "default" or (config.attention == "auto" and ctx.device.type != "cpu"):
        return None
    chooser = AttentionBackendChooser(sync=ctx.distributed)
    if config.attention == "math":
        chooser.chosen = "math"
    return chooser


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


def _fused_ok(model: nn.Module) -> bool:
    # the fused AdamW kernel updates all parameters in one pass (CPU and CUDA): 7 ms instead of
    # 26 ms a step for hcast_tiny on 2 CPU cores
    params = list(model.parameters())
    devices = {p.device.type for p in params}
    return len(devices) == 1 and devices <= {"cpu", "cuda"} and all(
        p.dtype in (torch.float32, torch.float16, torch.bfloat16) for p in params)


def create_optimizer_and_scheduler(model: nn.Module, config: FinetuneConfig, steps_per_epoch: int, lr: float):
    """AdamW (``timm.optim.create_optimizer_v2``: no weight decay on norms, biases and the
    model's ``no_weight_decay()`` names) and a per-update cosine with a linear warm-up before
    it (``timm.scheduler.CosineLRScheduler``, ``warmup_prefix=True``) that ends at
    ``config.min_lr`` on the last update.

    Returns:
        ``(optimizer, scheduler, warmup_updates)``.
    """
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler

    extra = {"fused": True} if config.opt.lower() == "adamw" and _fused_ok(model) else {}
    optimizer = create_optimizer_v2(model, opt=config.opt, lr=lr, weight_decay=config.weight_decay, **extra)
    total = max(1, config.epochs * steps_per_epoch)
    warmup = min(int(round(config.warmup_epochs * steps_per_epoch)), total - 1)
    scheduler = CosineLRScheduler(optimizer, t_initial=max(1, total - warmup), lr_min=config.min_lr, warmup_t=warmup,
                                  warmup_lr_init=config.warmup_lr, warmup_prefix=True, t_in_epochs=False)
    scheduler.step_update(0)
    return optimizer, scheduler, warmup


def _check_levels(model: nn.Module, taxonomy: Taxonomy) -> None:
    levels = getattr(model, "level_classes", None)
    if levels is not None and tuple(levels) != tuple(taxonomy.num_classes):
        raise ValueError(
            f"model: its heads have level_classes {tuple(levels)} but the taxonomy has {tuple(taxonomy.num_classes)} "
            "classes per level (finest first); build it with level_classes=taxonomy.num_classes, fresh_heads=True.")


def check_resume(state: Dict[str, Any], path: Union[str, os.PathLike], model: nn.Module, taxonomy: Taxonomy) -> None:
    """Check that a training checkpoint fits the run resuming from it, before anything is loaded.

    Resuming on a taxonomy in another class order would continue training on swapped labels,
    and weights of another shape fail deep in ``load_state_dict``: both are refused here.
    The checkpoint's taxonomy is the one it stores (written by :func:`finetune`), else the
    ``taxonomy.json`` next to it.

    Args:
        state: the loaded checkpoint (``model``, ``taxonomy`` ...).
        path: its file, for messages.
        model: the model about to load ``state["model"]``.
        taxonomy: the taxonomy of the resuming run.

    Raises:
        ValueError: starting ``"resume:"``, naming the file, the difference and what to do.
    """
    path = Path(path)
    stored = state.get("taxonomy")
    if stored is None and (path.parent / "taxonomy.json").is_file():
        stored = Taxonomy.load(path.parent / "taxonomy.json").to_dict()
    difference = Taxonomy.from_dict(stored).disagreement(taxonomy, "there", "here") if stored is not None else None
    if difference:
        raise ValueError(
            f"resume: {str(path)!r} was trained on another taxonomy ({difference}); resuming would continue on "
            "other labels. Resume with the taxonomy it was trained on (--taxonomy), or start a new run in another "
            "output folder.")
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


def finetune(
    model: nn.Module,
    train_set: Dataset,
    val_set: Dataset,
    taxonomy: Taxonomy,
    config: Optional[FinetuneConfig] = None,
    *,
    output: Optional[Union[str, os.PathLike]] = None,
    resume: Optional[Union[str, os.PathLike]] = None,
    model_args: Optional[Dict[str, Any]] = None,
    on_epoch_end: Optional[Callable[[Dict[str, Any]], Optional[bool]]] = None,
) -> FinetuneResult:
    """Fine-tune ``model`` on ``train_set``, validating on ``val_set`` after every epoch.

    Args:
        model: a timm model returning per-level logits, finest first, one head per level of
            ``taxonomy`` (``level_classes=taxonomy.num_classes``); CAST / H-CAST models get
            superpixels, Hier-ViT images only.
        train_set, val_set: ``(PIL image, fine label int)`` items, labels in the taxonomy's
            fine order (e.g. :func:`hcast.data.create_train_val_datasets` with ``None``
            transforms); items that are already tensors pass untransformed.
        taxonomy: the class tree (levels finest first).
        config: the run's settings (default :class:`FinetuneConfig`).
        output: folder for ``config.json`` + ``model.safetensors`` (the best epoch by
            validation FPA; ``config.json["training"]`` says which), ``taxonomy.json``,
            ``checkpoint-latest.pth`` (every epoch, for ``resume``), ``log.jsonl``,
            ``learning_curves.png`` and ``finetune_config.json``; ``None``: nothing written.
        resume: a checkpoint written by a run with the same config, or ``"auto"`` for
            ``output/checkpoint-latest.pth``: training continues after its epoch and ends
            in the state an uninterrupted run reaches.
        model_args: constructor arguments stored in ``config.json`` to rebuild the model
            (default ``{"level_classes": taxonomy.num_classes}`` plus ``img_size``).
        on_epoch_end: called with each epoch's log record on every process; returning
            ``True`` ends the run (early stopping; under DDP, answer alike on every process).

    Returns:
        a :class:`FinetuneResult`.

    Raises:
        ValueError: heads that do not match the taxonomy, too few images for one batch,
            a resume checkpoint that is missing, unreadable, or written for another taxonomy
            or model (:func:`check_resume`).
        FloatingPointError: the loss became NaN or infinite.
    """
    from timm.data import resolve_data_config

    from hcast.data import (SkipUnreadable, SuperpixelCache, WithSuperpixels, collate_readable,
                            resolve_superpixel_settings)
    from hcast.hierarchy.losses import HCASTLoss
    from hcast.ops import SuperpixelTransform, superpixels

    config = config or FinetuneConfig()
    config.validate()
    _check_levels(model, taxonomy)
    ctx = init_distributed(config.device)
    say = (lambda text: print(text, flush=True)) if ctx.is_main else (lambda text: None)
    out = Path(output) if output is not None else None
    show_progress = config.progress and ctx.is_main

    data_cfg = resolve_data_config({}, model=model)
    if config.input_size:
        data_cfg["input_size"] = (3, config.input_size, config.input_size)
    with_superpixels = uses_superpixels(model)
    # on the device the batched torch_slic runs unless asked otherwise; else the model's method
    method, num_segments = resolve_superpixel_settings(
        model, config.superpixel_method or ("torch_slic" if config.superpixels == "device" else None),
        config.num_segments, data_cfg["input_size"][-2:])
    train_tf = create_train_transform(config, data_cfg)
    val_tf = create_val_transform(config, data_cfg)
    if config.superpixels == "cache":  # SuperpixelCache flips the training images with their superpixels
        train_tf = create_val_transform(config.replace(eval_mean=None, eval_std=None), data_cfg)
    val_cfg = {**data_cfg, **val_data_config(config)}  # as create_val_transform: its own mean/std if set
    superpixel_fn = None
    if with_superpixels and config.superpixels in ("loader", "cache"):
        sp = SuperpixelTransform(num_segments=num_segments, method=method, mean=data_cfg["mean"], std=data_cfg["std"])
        val_sp = SuperpixelTransform(num_segments=num_segments, method=method, mean=val_cfg["mean"],
                                     std=val_cfg["std"])
        train_tf, val_tf = WithSuperpixels(train_tf, sp), WithSuperpixels(val_tf, val_sp)
    elif with_superpixels:

        def superpixel_fn(images: torch.Tensor) -> torch.Tensor:
            return superpixels(images, num_segments=num_segments, method=method)

    # an image file that cannot be read is left out of its batch with a warning naming it, in
    # training and validation alike (hcast.data.images), as `hcast predict` skips it
    train_data: Dataset = SkipUnreadable(TransformedDataset(train_set, train_tf))
    val_data: Dataset = SkipUnreadable(TransformedDataset(val_set, val_tf))
    cache_seconds = 0.0
    if config.superpixels == "cache":
        t0 = time.perf_counter()
        # every process caches the whole training set: the sampler reshuffles shards each epoch
        train_data = SuperpixelCache(train_data, hflip=config.hflip, num_workers=config.workers, progress=show_progress)
        val_data = SuperpixelCache(val_data, hflip=0.0, num_workers=config.workers, progress=show_progress)
        cache_seconds = time.perf_counter() - t0
        what = "superpixels of" if with_superpixels else "decoded"
        say(f"{what} {len(train_data)} + {len(val_data)} images cached in {cache_seconds:.0f}s "
            f"({(train_data.images.nbytes + val_data.images.nbytes) / 2 ** 20:.0f} MiB of images)")

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
    if len(train_loader) == 0:
        raise ValueError(f"train_set: {len(train_data)} images give no full batch of {config.batch_size} per process "
                         f"on {ctx.world_size} process(es); lower batch_size.")

    model.to(ctx.device)
    net: nn.Module = model
    if ctx.distributed:
        # DDP only calls forward: the per-level logits must come from it (set back at the end)
        if hasattr(model, "set_level_outputs"):
            model.set_level_outputs(True)
        net = nn.parallel.DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda"
                                                  else None)
    steps_per_epoch = min(len(train_loader), config.max_steps or len(train_loader))
    lr = config.lr * (config.batch_size * ctx.world_size / config.lr_base_batch if config.lr_base_batch else 1.0)
    optimizer, scheduler, warmup_updates = create_optimizer_and_scheduler(model, config, steps_per_epoch, lr)
    amp_dtype = resolve_training_precision(ctx.device, config.precision, verbose=ctx.is_main)
    grad_scaler = torch.amp.GradScaler(ctx.device.type) if amp_dtype == torch.float16 else None
    model_ema = None
    if config.ema_decay > 0:
        from timm.utils import ModelEmaV3

        model_ema = ModelEmaV3(model, decay=config.ema_decay)
    mixup = None
    if config.mixup > 0 or config.cutmix > 0:
        from hcast.hierarchy.mixup import HierarchicalMixup

        mixup = HierarchicalMixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, prob=config.mixup_prob,
                                  switch_prob=config.mixup_switch_prob, label_smoothing=config.label_smoothing,
                                  level_classes=taxonomy.num_classes)
    criterion = HCASTLoss(kl_weight=config.kl_weight, label_smoothing=config.label_smoothing)

    start_epoch, num_updates, best_fpa, best_epoch = 0, 0, -1.0, 0
    history: List[Dict[str, Any]] = []
    if resume is not None:
        path = (out / CHECKPOINT_NAME) if str(resume) == "auto" and out is not None else Path(resume)
        state = load_checkpoint(path, map_location=ctx.device)
        check_resume(state, path, model, taxonomy)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if model_ema is not None and state.get("model_ema"):
            model_ema.load_state_dict(state["model_ema"])
        if grad_scaler is not None and state.get("grad_scaler"):
            grad_scaler.load_state_dict(state["grad_scaler"])
        start_epoch, num_updates = int(state["epoch"]) + 1, int(state["num_updates"])
        best_fpa, best_epoch = float(state.get("best_fpa", -1.0)), int(state.get("best_epoch", 0))
        history = list(state.get("history", []))
        scheduler.step_update(num_updates)
        say(f"resumed from {path} at epoch {start_epoch + 1} (update {num_updates})")

    if model_args is None:
        model_args = {"level_classes": list(taxonomy.num_classes)}
        if config.input_size:
            model_args["img_size"] = config.input_size
    pretrained_cfg = {"level_classes": list(taxonomy.num_classes)}
    if with_superpixels:
        pretrained_cfg.update(superpixel_method=method, num_segments=num_segments)
    folder_data_cfg = {"input_size": tuple(data_cfg["input_size"]), **val_data_config(config)}
    if ctx.is_main and out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_json(taxonomy.to_dict(), out / "taxonomy.json")  # atomically, as every file of the run
        write_json(config.to_dict(), out / CONFIG_NAME)
    n_params = sum(p.numel() for p in model.parameters())
    sp_note = f"superpixels {method} ({num_segments}) in the {config.superpixels}" if with_superpixels else "patches"
    say(f"hcast finetune: {type(model).__name__} ({n_params / 1e6:.2f}M parameters) on {ctx.device} x{ctx.world_size}, "
        f"{len(train_data)} train / {len(val_data)} val images, levels {taxonomy.num_classes}, {sp_note}, "
        f"precision {_PRECISION_NAMES[amp_dtype]}, {config.epochs} epochs x {steps_per_epoch} steps, peak LR {lr:.3g}"
        + (f", recipe {config.recipe}" if config.recipe else ""))

    budget = None
    if config.time_budget:
        # evaluation costs about a third of a training step per image, plus the superpixels
        eval_updates = (config.epochs - start_epoch) * len(val_data) / (config.batch_size * ctx.world_size * 2.5)
        budget = TimeBudget(max(config.time_budget * 60 - cache_seconds, 1.0), config.epochs * steps_per_epoch,
                            scheduler, warmup_updates=warmup_updates, reserve_updates=eval_updates + 5,
                            # re-plan often: on a shared machine a slow start must not fix a short schedule
                            replan_every=20, sync=ctx.distributed, start_update=num_updates,
                            extend=config.fill_budget)
    attention, attention_said = _attention_backend(config, ctx), False
    if resume is not None and attention is not None and state.get("attention"):
        attention.load_state_dict(state["attention"])  # the same backend at the same update
        attention_said = attention.chosen is not None
    # fill_budget: as many epochs as the budget holds (the budget ends the loop)
    last_epoch = config.epochs if budget is None or not budget.extend else config.epochs * 1000
    metrics: Dict[str, Any] = history[-1]["val"] if history else {}
    stopped_early = False
    train_start = time.perf_counter()
    for epoch in range(start_epoch, last_epoch):
        _seed_epoch(config.seed, epoch, ctx.rank)
        train_sampler.set_epoch(epoch)
        stats = train_one_epoch(
            net, train_loader, criterion, optimizer, taxonomy, ctx.device, epoch=epoch, scheduler=scheduler,
            num_updates=num_updates, mixup=mixup, amp_dtype=amp_dtype, grad_scaler=grad_scaler,
            clip_grad=config.clip_grad, superpixel_fn=superpixel_fn, max_steps=config.max_steps,
            progress=show_progress, world_size=ctx.world_size, should_stop=budget, model_ema=model_ema,
            attention=attention,
        )
        if attention is not None and attention.chosen is not None and attention.medians and not attention_said:
            attention_said = True
            say(attention.describe())
        num_updates = stats["num_updates"]
        if ctx.distributed:
            # BatchNorm running statistics moved apart in the last step's local forward (DDP
            # broadcasts buffers only at the start of a forward): evaluate, on every rank, the
            # buffers rank 0 saves
            for buffer in model.buffers():
                torch.distributed.broadcast(buffer, 0)
        out_of_budget = budget is not None and budget(num_updates)
        judged = model_ema.module if (model_ema is not None and config.ema_eval) else model
        metrics = evaluate(judged, val_loader, taxonomy, ctx.device, superpixel_fn=superpixel_fn, amp_dtype=amp_dtype)
        fpa = metrics["plain"]["fpa"]
        record = {"epoch": epoch + 1, "train": stats, "val": metrics}
        history.append(record)
        accs = " ".join(f"{n} {100 * a:.2f}" for n, a in zip(metrics["level_names"], metrics["plain"]["level_accuracy"]))
        planned = config.epochs if last_epoch == config.epochs else max(
            epoch + 1, -(-budget.total_updates // steps_per_epoch))
        say(f"epoch {epoch + 1}/{planned}: loss {stats['loss']:.4f}, lr {stats['lr']:.2e}, "
            f"{stats['images_per_s']:.0f} img/s, {stats['seconds']:.0f}s | val {accs}, FPA {100 * fpa:.2f}, "
            f"TICE {100 * metrics['plain']['tice']:.2f}")
        improved = fpa > best_fpa
        if improved:
            best_fpa, best_epoch = fpa, epoch + 1
        if ctx.is_main and out is not None:
            if improved:
                save_model_folder(judged, out, taxonomy, model_args=model_args, data_config=folder_data_cfg,
                                  extra_config={"pretrained_cfg": pretrained_cfg,
                                                "training": {"best_epoch": best_epoch, "val_fpa": best_fpa,
                                                             "epochs": config.epochs, "recipe": config.recipe}})
            save_checkpoint({
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "model_ema": model_ema.state_dict() if model_ema is not None else {},
                "grad_scaler": grad_scaler.state_dict() if grad_scaler is not None else {},
                "attention": attention.state_dict() if attention is not None else {},
                "epoch": epoch, "num_updates": num_updates, "best_fpa": best_fpa, "best_epoch": best_epoch,
                "history": history, "config": config.to_dict(), "taxonomy": taxonomy.to_dict(),
            }, out / CHECKPOINT_NAME)
            write_log(history, out / LOG_NAME)
            plot_learning_curves(history, out / CURVES_NAME)
        stop = bool(on_epoch_end(record)) if on_epoch_end is not None else False
        if out_of_budget or stop:
            stopped_early = epoch + 1 < config.epochs
            if budget is not None and budget.extended:
                say(f"time budget of {config.time_budget:g} min: filled with {num_updates} updates "
                    f"({budget.planned_updates} planned for {config.epochs} epochs; "
                    f"{budget.seconds_per_update or 0:.2f} s each); the cosine ran to the end of the budget")
            elif budget is not None and budget.shortened:
                say(f"time budget of {config.time_budget:g} min: stopped after {num_updates} of "
                    f"{budget.planned_updates} planned updates ("
                    + (f"{budget.seconds_per_update:.2f} s each" if budget.seconds_per_update is not None
                       else "out of time before the step time was measured")
                    + "); the cosine schedule was shortened to match")
            break
    if hasattr(model, "set_level_outputs"):
        model.set_level_outputs(False)
    if out is not None:
        say(f"trained in {time.perf_counter() - train_start:.0f}s; best validation FPA {100 * best_fpa:.2f} at epoch "
            f"{best_epoch}; model folder: {out} (timm.create_model('local-dir:{out}', pretrained=True))")
    return FinetuneResult(model=model, best_epoch=best_epoch, best_fpa=best_fpa, metrics=metrics, history=history,
                          lr=lr, output=out, stopped_early=stopped_early)
