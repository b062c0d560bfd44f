"""Training and evaluation engine for hierarchical classifiers (H-CAST style).

What ``hcast finetune`` / ``hcast evaluate`` run, usable from your own scripts:

* :func:`train_one_epoch`: one pass with AMP where the device has it, gradient
  clipping, hierarchical mixup/cutmix, the H-CAST loss and a per-step LR schedule,
  with a progress bar showing loss and images/s.
* :func:`evaluate`: per-level accuracy, full-path accuracy (FPA), tree-based
  inconsistency error (TICE) and mistake severity, for plain per-level argmax and for
  consistent (taxonomy-path) decoding; predictions are gathered with torchmetrics, so
  the numbers under DDP equal a single-process run.
* :func:`save_model_folder` (a ``timm.create_model("local-dir:FOLDER", pretrained=True)`` folder);
  :func:`save_checkpoint` / :func:`load_checkpoint`, :func:`atomic_write` and
  :func:`write_json` are :mod:`hcast.weights.folder`'s, re-exported here.
* DDP helpers: :func:`init_distributed` (reads ``torchrun``'s environment),
  :class:`ShardSampler` (evaluation shards without padding).

The loop follows the H-CAST authors' DeiT-based engine (``deit/engine_hier.py`` in
github:ngocquanai/HiOT at b1a222b): superpixels travel with the images, mixup mixes
every level's targets with one permutation, the loss is one cross-entropy per level
plus the tree-path KL term.
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Union

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import Sampler

from hcast.hierarchy import Taxonomy
from hcast.weights.folder import atomic_write, load_checkpoint, save_checkpoint, save_for_hf, write_json

__all__ = [
    "DistributedContext",
    "init_distributed",
    "destroy_distributed",
    "resolve_device",
    "resolve_amp_dtype",
    "ShardSampler",
    "level_targets",
    "unwrap_model",
    "train_one_epoch",
    "TimeBudget",
    "evaluate",
    "format_metrics_table",
    "atomic_write",
    "save_checkpoint",
    "load_checkpoint",
    "save_model_folder",
]

SuperpixelFn = Callable[[torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------- devices and DDP


@dataclass(frozen=True)
class DistributedContext:
    """Where this process runs: ``rank`` of ``world_size`` processes on ``device``.

    ``is_main`` is True on rank 0, the one process that prints and writes files.
    ``distributed`` is True when a process group is initialised (``torchrun``).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    distributed: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(device: Optional[str] = None, local_rank: int = 0) -> torch.device:
    """``"auto"``/``None`` -> CUDA when available else CPU; ``"cuda"`` -> this rank's GPU.

    Raises:
        ValueError: when CUDA is asked for but not available.
    """
    name = (device or "auto").lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device: {device!r} was asked for but CUDA is not available here; use --device cpu.")
        if name == "cuda":
            name = f"cuda:{local_rank}"
    return torch.device(name)


def init_distributed(device: Optional[str] = None, backend: Optional[str] = None) -> DistributedContext:
    """Join the process group ``torchrun`` describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``).

    Without those variables (a plain ``python``/``hcast`` call) this returns a
    single-process context and starts nothing. The backend is ``nccl`` on CUDA and
    ``gloo`` on CPU unless ``backend`` says otherwise. Rendezvous uses torchrun's
    ``MASTER_ADDR``/``MASTER_PORT`` (localhost by default).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size <= 1:
        return DistributedContext(device=dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend or ("nccl" if dev.type == "cuda" else "gloo"))
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev, distributed=True)


def destroy_distributed() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def resolve_amp_dtype(device: torch.device, amp: str = "auto") -> Optional[torch.dtype]:
    """The autocast dtype for ``device``: ``None`` means full float32.

    ``amp="auto"``: bfloat16 on CUDA GPUs that support it, float16 on older GPUs, off on
    CPU (CPU autocast is slower than float32 for these models on most machines).
    ``"bf16"``/``"fp16"`` force a dtype, ``"off"`` disables AMP.

    Raises:
        ValueError: for an unknown ``amp`` value.
    """
    amp = amp.lower()
    if amp not in ("auto", "bf16", "fp16", "off"):
        raise ValueError(f"amp: expected 'auto', 'bf16', 'fp16' or 'off', got {amp!r}.")
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _autocast(device: torch.device, dtype: Optional[torch.dtype]):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class ShardSampler(Sampler[int]):
    """Evaluation sampler: rank ``r`` of ``w`` reads indices ``r, r+w, r+2w, ...``.

    Unlike ``DistributedSampler`` it never pads with repeated samples, so metrics
    gathered over all ranks count every image exactly once and equal a
    single-process evaluation (shards may differ in length by one).
    """

    def __init__(self, dataset_len: int, rank: int = 0, world_size: int = 1) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank/world_size: expected 0 <= rank < world_size, got rank={rank}, world_size={world_size}.")
        self.dataset_len, self.rank, self.world_size = dataset_len, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.dataset_len, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.dataset_len, self.world_size))


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside a ``DistributedDataParallel`` / ``torch.compile`` wrapper."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


# ----------------------------------------------------------------------------- batches


def level_targets(fine_targets: torch.Tensor, paths: torch.Tensor) -> List[torch.Tensor]:
    """Per-level labels, finest first, from fine labels.

    Args:
        fine_targets: (N,) int64 fine class ids.
        paths: (num_fine, num_levels) int64, ``taxonomy.paths()`` on the same device.

    Returns:
        list of ``num_levels`` (N,) int64 tensors; entry 0 is ``fine_targets``.
    """
    rows = paths[fine_targets]
    return [rows[:, level] for level in range(paths.shape[1])]


def _unpack_batch(batch: Any, device: torch.device, superpixel_fn: Optional[SuperpixelFn]):
    inputs, fine = batch
    if isinstance(inputs, (list, tuple)):
        images, segments = inputs
        segments = segments.to(device, non_blocking=True)
    else:
        images, segments = inputs, None
    images = images.to(device, non_blocking=True)
    fine = torch.as_tensor(fine).to(device, non_blocking=True)
    if segments is None and superpixel_fn is not None:
        segments = superpixel_fn(images)
    return images, segments, fine


def _forward(model: nn.Module, images: torch.Tensor, segments: Optional[torch.Tensor]) -> List[torch.Tensor]:
    out = model(images, segments) if segments is not None else model(images)
    if isinstance(out, torch.Tensor):  # a flat classifier: one level
        return [out]
    return list(out)


def _progress(iterable: Iterable, enabled: bool, total: Optional[int], desc: str):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, dynamic_ncols=True, leave=False, mininterval=1.0)


# ----------------------------------------------------------------------------- training


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    taxonomy: Taxonomy,
    device: torch.device,
    epoch: int = 0,
    scheduler: Any = None,
    num_updates: int = 0,
    mixup: Optional[Callable] = None,
    amp_dtype: Optional[torch.dtype] = None,
    grad_scaler: Optional[torch.amp.GradScaler] = None,
    clip_grad: Optional[float] = None,
    superpixel_fn: Optional[SuperpixelFn] = None,
    max_steps: Optional[int] = None,
    progress: bool = True,
    world_size: int = 1,
    should_stop: Optional[Callable[[int], bool]] = None,
) -> Dict[str, float]:
    """Train ``model`` for one pass over ``loader``.

    Args:
        model: returns per-level logits, finest first, from ``model(images, segments)``
            (may be wrapped in ``DistributedDataParallel``).
        loader: yields ``((images (B,3,H,W) float, segments (B,H,W) int64), fine (B,) int64)``
            or ``(images, fine)`` (superpixels then come from ``superpixel_fn``, or the
            model computes them).
        criterion: e.g. :class:`hcast.hierarchy.losses.HCASTLoss`; called as
            ``criterion(logits, targets)`` with per-level lists.
        optimizer: e.g. AdamW.
        taxonomy: maps fine labels to every level's labels.
        device: where the model lives.
        epoch: shown in the progress bar.
        scheduler: a timm scheduler stepped per update with ``step_update(num_updates)``,
            or a torch LR scheduler stepped every update.
        num_updates: optimizer steps taken before this epoch (for the schedule).
        mixup: ``mixup(images, level_targets[, segments]) -> (images[, segments], soft level
            targets)`` (:class:`hcast.hierarchy.mixup.HierarchicalMixup`, which cuts the
            loader's superpixel ids with the same box), or ``None``.
        amp_dtype: autocast dtype (:func:`resolve_amp_dtype`), ``None`` for float32.
        grad_scaler: a ``torch.amp.GradScaler`` for float16 AMP.
        clip_grad: max global gradient norm, ``None``/0 for no clipping.
        superpixel_fn: (B,3,H,W) -> (B,H,W) int64 superpixels computed on the device
            (e.g. ``hcast.ops.superpixels(..., method="torch_slic")``) when the loader
            does not provide them. Computed after mixup, on the mixed images.
        max_steps: stop after this many batches (quick runs and tests).
        progress: show a tqdm bar with loss and images/s.
        world_size: number of processes, to report global images/s.
        should_stop: called with ``num_updates`` after every update; ``True`` ends the
            epoch early (e.g. a :class:`TimeBudget`). Under DDP it must answer the same on
            every process.

    Returns:
        dict with ``loss`` (mean over the epoch), ``lr`` (last), ``images_per_s``
        (global), ``num_updates`` (after the epoch), ``steps`` and ``seconds``.

    Raises:
        FloatingPointError: when the loss becomes NaN or infinite.
    """
    model.train()
    paths = taxonomy.paths().to(device)
    total = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
    if max_steps is not None and total is not None:
        total = min(total, max_steps)
    bar = _progress(loader, progress, total, f"epoch {epoch}")
    loss_sum, steps, seen = torch.zeros((), device=device), 0, 0
    start = time.perf_counter()
    for batch in bar:
        if max_steps is not None and steps >= max_steps:
            break
        images, segments, fine = _unpack_batch(batch, device, None)
        targets: Sequence[torch.Tensor] = level_targets(fine, paths)
        if mixup is not None:
            if segments is not None:  # the same cut is pasted into the superpixel ids
                images, segments, targets = mixup(images, targets, segments)
            else:
                images, targets = mixup(images, targets)
        if segments is None and superpixel_fn is not None:
            with torch.no_grad():
                segments = superpixel_fn(images)
        with _autocast(device, amp_dtype):
            logits = _forward(model, images, segments)
            loss = criterion([lg.float() for lg in logits], targets)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss is {loss.item()} at epoch {epoch}, step {steps}; lower --lr, raise --warmup-epochs, "
                "or use --amp off."
            )
        optimizer.zero_grad(set_to_none=True)
        if grad_scaler is not None:
            grad_scaler.scale(loss).backward()
            if clip_grad:
                grad_scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            grad_scaler.step(optimizer)
            grad_scaler.update()
        else:
            loss.backward()
            if clip_grad:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            optimizer.step()
        num_updates += 1
        if scheduler is not None:
            if hasattr(scheduler, "step_update"):
                scheduler.step_update(num_updates=num_updates)
            else:
                scheduler.step()
        loss_sum += loss.detach()
        steps += 1
        seen += images.shape[0]
        if should_stop is not None and should_stop(num_updates):
            break
        if progress and steps % 5 == 0:
            elapsed = time.perf_counter() - start
            bar.set_postfix(  # type: ignore[union-attr]
                loss=f"{loss_sum.item() / steps:.3f}",
                lr=f"{optimizer.param_groups[0]['lr']:.2e}",
                img_s=f"{seen * world_size / max(elapsed, 1e-9):.0f}",
            )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    if hasattr(bar, "close"):
        bar.close()
    return {
        "loss": loss_sum.item() / max(steps, 1),
        "lr": float(optimizer.param_groups[0]["lr"]),
        "images_per_s": seen * world_size / max(seconds, 1e-9),
        "num_updates": num_updates,
        "steps": steps,
        "seconds": seconds,
    }


class TimeBudget:
    """Fit a training run into a wall-clock budget by shortening its schedule.

    From update ``skip`` on (the first ones pay for allocator and data-worker warm-up)
    it measures the mean seconds per update; after ``calibration_updates`` more, and
    again every ``replan_every`` updates (machines slow down and speed up), it sets the
    run's total to what fits in ``seconds`` (less the time of ``reserve_updates`` updates,
    kept for evaluation and saving), never above the original plan, and re-plans the
    LR schedule's cosine to end at that total (``scheduler.t_initial`` of a timm
    scheduler built with ``warmup_prefix=True``), so the learning rate still anneals.
    Called after each update, it returns ``True`` once the total is reached or the
    budget is spent.

    Under DDP every process must reach the same decision: ``sync=True`` averages the
    measurements over processes (an all-reduce per call).

    Args:
        seconds: the budget for the whole training loop, wall clock, from construction.
        total_updates: the planned number of optimizer updates.
        scheduler: a timm scheduler (``warmup_prefix=True``), or ``None``.
        warmup_updates: warm-up length of ``scheduler``.
        reserve_updates: time to keep for what follows the updates (evaluation, saving),
            in units of one update's measured time.
        calibration_updates, skip, replan_every: the measuring windows.
        sync: all-reduce the measurements across processes.
        start_update: updates already done (a resumed run).
        clock: seconds, monotonic (``time.perf_counter``).

    Raises:
        ValueError: for a budget that is not positive.
    """

    def __init__(self, seconds: float, total_updates: int, scheduler: Any = None, warmup_updates: int = 0,
                 reserve_updates: float = 0.0, calibration_updates: int = 20, skip: int = 3,
                 replan_every: int = 50, sync: bool = False, start_update: int = 0,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        if seconds <= 0:
            raise ValueError(f"seconds: expected a positive time budget, got {seconds}.")
        self.seconds, self.planned_updates = float(seconds), int(total_updates)
        self.total_updates, self.scheduler = int(total_updates), scheduler
        self.warmup_updates, self.reserve_updates = int(warmup_updates), float(reserve_updates)
        self.calibration_updates, self.skip = int(calibration_updates), int(skip)
        self.replan_every, self.sync = max(1, int(replan_every)), sync
        self.clock = clock
        self.start = clock()
        self.start_update = int(start_update)
        self._mark: Optional[float] = None
        self.seconds_per_update: Optional[float] = None
        self.reserve_seconds = 0.0

    @property
    def shortened(self) -> bool:
        """Whether the run was cut below its planned number of updates."""
        return self.total_updates < self.planned_updates

    def elapsed(self) -> float:
        return self.clock() - self.start

    def __call__(self, num_updates: int) -> bool:
        done = num_updates - self.start_update
        if done == self.skip and self._mark is None:
            self._mark = self.clock()
        measured = done - self.skip
        if self._mark is not None and measured >= self.calibration_updates and (
                measured == self.calibration_updates or measured % self.replan_every == 0):
            self._replan(num_updates, (self.clock() - self._mark) / measured)
        out_of_time = self.elapsed() > self.seconds - self.reserve_seconds
        if self.sync and dist.is_initialized():
            flag = torch.tensor([float(out_of_time)])
            dist.all_reduce(flag)
            out_of_time = bool(flag.item() > 0)
        if out_of_time:
            self.total_updates = min(self.total_updates, num_updates)
        return num_updates >= self.total_updates or out_of_time

    def _replan(self, num_updates: int, per_update: float) -> None:
        if self.sync and dist.is_initialized():
            t = torch.tensor([per_update], dtype=torch.float64)
            dist.all_reduce(t)
            per_update = float(t.item()) / dist.get_world_size()
        self.seconds_per_update = per_update
        self.reserve_seconds = self.reserve_updates * per_update
        left = self.seconds - self.reserve_seconds - self.elapsed()
        fit = num_updates + max(1, int(left / max(per_update, 1e-9)))
        total = min(self.planned_updates, fit)
        if total != self.total_updates:
            self.total_updates = total
            if self.scheduler is not None and hasattr(self.scheduler, "t_initial"):
                self.scheduler.t_initial = max(1, total - self.warmup_updates)


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    taxonomy: Taxonomy,
    device: torch.device,
    superpixel_fn: Optional[SuperpixelFn] = None,
    amp_dtype: Optional[torch.dtype] = None,
    max_steps: Optional[int] = None,
    progress: bool = False,
) -> Dict[str, Any]:
    """Hierarchical metrics of ``model`` on ``loader``, plain and consistent decoding.

    Counts are kept in :class:`hcast.hierarchy.metrics.HierarchicalMetrics` (torchmetrics,
    summed over processes under DDP), so with a :class:`ShardSampler` the result equals
    a single-process run exactly.

    Args:
        model: per-level logits, finest first (a DDP wrapper is unwrapped: evaluation
            needs no gradient sync, and shards may differ in length).
        loader: as for :func:`train_one_epoch`.
        taxonomy: the class tree the model's levels follow.
        device: where the model lives.
        superpixel_fn: device superpixels when the loader has none.
        amp_dtype: autocast dtype or ``None``.
        max_steps: stop after this many batches.
        progress: show a tqdm bar.

    Returns:
        ``{"num_samples": N, "level_names": [...], "plain": {...}, "consistent": {...}}``;
        ``plain`` decodes each level by argmax, ``consistent`` takes the taxonomy path
        with the highest summed log-probability
        (:func:`hcast.hierarchy.decoding.consistent_decode`). Each holds
        ``level_accuracy`` (list of floats in [0,1], finest first), ``fpa``, ``tice``,
        ``mistake_severity`` (mean LCA height of fine-level mistakes, 0 without
        mistakes), ``hdist@1``, ``hprecision``, ``hrecall``, ``hf1``.

    Raises:
        ValueError: when the model's number of levels differs from the taxonomy's.
    """
    import warnings

    from hcast.hierarchy.decoding import argmax_decode, consistent_decode
    from hcast.hierarchy.metrics import HierarchicalMetrics

    net = unwrap_model(model)
    was_training = net.training
    net.eval()
    paths = taxonomy.paths().to(device)
    metrics = {key: HierarchicalMetrics(taxonomy).to(device) for key in ("plain", "consistent")}
    total = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
    if max_steps is not None and total is not None:
        total = min(total, max_steps)
    steps = 0
    for batch in _progress(loader, progress, total, "evaluate"):
        if max_steps is not None and steps >= max_steps:
            break
        images, segments, fine = _unpack_batch(batch, device, superpixel_fn)
        with _autocast(device, amp_dtype):
            logits = [lg.float() for lg in _forward(net, images, segments)]
        if len(logits) != taxonomy.num_levels:
            raise ValueError(
                f"model: returned {len(logits)} levels of logits but the taxonomy has {taxonomy.num_levels} "
                "levels; evaluate with the taxonomy the model was trained on."
            )
        targets = level_targets(fine, paths)
        metrics["plain"].update(argmax_decode(logits), targets)
        metrics["consistent"].update(consistent_decode(logits, taxonomy), targets)
        steps += 1
    net.train(was_training)
    result: Dict[str, Any] = {"level_names": list(taxonomy.level_names)}
    with warnings.catch_warnings():
        # a rank whose shard is empty computes zeros before the sum over ranks: expected
        warnings.filterwarnings("ignore", message=".*compute.*before.*update.*")
        for key, metric in metrics.items():
            values = {k: float(v) for k, v in metric.compute().items()}
            result["num_samples"] = int(metric.total.item()) if not dist.is_initialized() else _synced_total(metric)
            result[key] = {
                "level_accuracy": [values.pop(f"{name}_acc@1") for name in taxonomy.level_names],
                **values,
            }
    return result


def _synced_total(metric: Any) -> int:
    total = metric.total.detach().clone().to(metric.device)
    dist.all_reduce(total)
    return int(total.item())


def format_metrics_table(metrics: Dict[str, Any]) -> str:
    """A plain-text table of :func:`evaluate`'s result: one row per decoding.

    Columns: accuracy per level (finest first, named by the taxonomy's level names),
    FPA, TICE (percent) and mistake severity (mean LCA height of fine mistakes).
    """
    names = metrics.get("level_names") or [f"level {i}" for i in range(len(metrics["plain"]["level_accuracy"]))]
    header = ["decoding"] + [f"acc {n}" for n in names] + ["FPA", "TICE", "mistake sev."]
    rows = []
    for key in ("plain", "consistent"):
        m = metrics[key]
        rows.append(
            [key]
            + [f"{100 * a:.2f}" for a in m["level_accuracy"]]
            + [f"{100 * m['fpa']:.2f}", f"{100 * m['tice']:.2f}", f"{m['mistake_severity']:.3f}"]
        )
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    lines = [fmt(header), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows]
    lines.append(f"({metrics['num_samples']} images; accuracy, FPA and TICE in %)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- checkpoints


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
