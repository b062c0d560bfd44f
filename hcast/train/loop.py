"""The training loop of H-CAST-style hierarchical classifiers, usable in your own scripts.

* :func:`train_one_epoch`: one pass with AMP where the device has it, gradient
  clipping, hierarchical mixup/cutmix, the H-CAST loss, a per-step LR schedule and an
  optional EMA of the weights (``timm.utils.ModelEmaV3``), with a tqdm bar showing loss
  and images/s.
* :func:`train_steps`: the task-independent pass under it (forward and loss from the
  task, AMP, clipping, optimizer, EMA, schedule, budget), which the segmentation task
  (:mod:`hcast.train.tasks`) runs too.
* :class:`TimeBudget`: fit a run into a wall-clock budget by shortening its cosine (or, with
  ``extend``, lengthening it to the end of the budget).
* :class:`AttentionBackendChooser`: the SDPA backend whose training steps are faster on this
  machine, measured on the run's own first steps.
* :func:`level_targets`: per-level labels from fine labels.

The loop follows the H-CAST authors' DeiT-based engine (``deit/engine_hier.py`` in
github:ngocquanai/HiOT at b1a222b): superpixels travel with the images, mixup mixes
every level's targets with one permutation, the loss is one cross-entropy per level
plus the tree-path KL term, the EMA is updated after every optimizer step.
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn

from hcast.hierarchy import Taxonomy
from hcast.precision import autocast
from hcast.train.batches import SuperpixelFn, progress_bar, unpack_batch
from timm.utils import unwrap_model

__all__ = ["AttentionBackendChooser", "level_logits", "level_targets", "train_one_epoch", "train_steps", "TimeBudget"]

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


def level_logits(model: nn.Module, *inputs: torch.Tensor) -> List[torch.Tensor]:
    """Per-level logits, finest first, from ``model(*inputs)``: an H-CAST / Hier-ViT (or a
    DDP / compile wrapper of one) returns them with its level outputs switched on
    (``set_level_outputs``, switched back afterwards if it was off); any other classifier
    counts as one level. The call goes through ``model(...)``, so hooks and wrappers run.

    Args:
        model: the model, possibly wrapped.
        *inputs: ``images`` (B, 3, H, W) and, optionally, ``segments`` (B, H, W); a
            ``None`` is left out (the model computes superpixels itself, or reads patches).

    Returns:
        list of (B, n_l) tensors, finest first.
    """
    inputs = tuple(x for x in inputs if x is not None)
    net = unwrap_model(model)
    switch = getattr(net, "set_level_outputs", None)
    if switch is None or net.level_outputs:
        out = model(*inputs)
    else:
        switch(True)
        try:
            out = model(*inputs)
        finally:
            switch(False)
    return [out] if isinstance(out, torch.Tensor) else list(out)


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
    model_ema: Any = None,
    attention: Optional["AttentionBackendChooser"] = None,
) -> Dict[str, float]:
    """Train ``model`` for one pass over ``loader``.

    Args:
        model: returns per-level logits, finest first, from ``model(images, segments)``
            (may be wrapped in ``DistributedDataParallel``).
        loader: yields ``((images (B,3,H,W) float, segments (B,H,W) int64), fine (B,) int64)``
            or ``(images, fine)`` (superpixels then come from ``superpixel_fn``, or the
            model computes them); ``None`` batches (all images unreadable,
            :func:`hcast.data.collate_readable`) are skipped, and with ``mixup`` a batch
            left odd by an unreadable image loses its last image.
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
        amp_dtype: autocast dtype (:func:`hcast.precision.resolve_precision` with ``training=True``), ``None`` for float32.
        grad_scaler: a ``torch.amp.GradScaler`` for float16 AMP.
        clip_grad: max global gradient norm, ``None``/0 for no clipping.
        superpixel_fn: (B,3,H,W) -> (B,H,W) int64 superpixels computed on the device
            (e.g. ``hcast.ops.superpixels(..., method="torch_slic")``) when the loader
            does not provide them. Computed after mixup, on the mixed images.
        max_steps: stop after this many batches (quick runs and tests).
        progress: show a tqdm bar with loss and images/s (only when stderr is a terminal).
        world_size: number of processes, to report global images/s.
        should_stop: called with ``num_updates`` after every update; ``True`` ends the
            epoch early (e.g. a :class:`TimeBudget`). Under DDP it must answer the same on
            every process.
        model_ema: a ``timm.utils.ModelEmaV3`` of the (unwrapped) model, updated after
            every optimizer step with ``step=num_updates``, as the authors'
            ``deit/engine_hier.py`` updates theirs; ``None`` for no EMA.
        attention: an :class:`AttentionBackendChooser` that picks the SDPA backend of each
            step (forward, backward and update) and is told the step's time; ``None``:
            PyTorch's default backend.

    Returns:
        dict with ``loss`` (mean over the epoch), ``lr`` (last), ``images_per_s``
        (global), ``num_updates`` (after the epoch), ``steps`` and ``seconds``.

    Raises:
        FloatingPointError: when the loss becomes NaN or infinite.
    """
    paths = taxonomy.paths().to(device)

    def prepare(batch: Any) -> Optional[Tuple[torch.Tensor, Optional[torch.Tensor], Sequence[torch.Tensor]]]:
        images, segments, fine = unpack_batch(batch, device)
        if mixup is not None and images.shape[0] % 2:
            # an unreadable image left the batch one short; mixup pairs images with the mirrored batch
            if images.shape[0] == 1:
                return None
            images, fine = images[:-1], fine[:-1]
            segments = segments[:-1] if segments is not None else None
        targets: Sequence[torch.Tensor] = level_targets(fine, paths)
        if mixup is not None:
            if segments is not None:  # the same cut is pasted into the superpixel ids
                images, segments, targets = mixup(images, targets, segments)
            else:
                images, targets = mixup(images, targets)
        if segments is None and superpixel_fn is not None:
            with torch.no_grad():
                segments = superpixel_fn(images)
        return images, segments, targets

    def compute_loss(images: torch.Tensor, segments: Optional[torch.Tensor], targets: Any) -> torch.Tensor:
        logits = level_logits(model, images, segments)
        return criterion([lg.float() for lg in logits], targets)

    return train_steps(model, loader, prepare, compute_loss, optimizer, device, epoch=epoch, scheduler=scheduler,
                       num_updates=num_updates, amp_dtype=amp_dtype, grad_scaler=grad_scaler, clip_grad=clip_grad,
                       max_steps=max_steps, progress=progress, world_size=world_size, should_stop=should_stop,
                       model_ema=model_ema, attention=attention)


def train_steps(
    model: nn.Module,
    loader: Iterable,
    prepare: Callable[[Any], Optional[Tuple[torch.Tensor, Optional[torch.Tensor], Any]]],
    compute_loss: Callable[[torch.Tensor, Optional[torch.Tensor], Any], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    epoch: int = 0,
    scheduler: Any = None,
    num_updates: int = 0,
    amp_dtype: Optional[torch.dtype] = None,
    grad_scaler: Optional[torch.amp.GradScaler] = None,
    clip_grad: Optional[float] = None,
    max_steps: Optional[int] = None,
    progress: bool = True,
    world_size: int = 1,
    should_stop: Optional[Callable[[int], bool]] = None,
    model_ema: Any = None,
    attention: Optional["AttentionBackendChooser"] = None,
) -> Dict[str, float]:
    """The task-independent training pass every hcast task runs (classification:
    :func:`train_one_epoch`; segmentation: :class:`hcast.train.tasks.SegmentationTask`):
    per batch ``prepare`` -> forward and loss under autocast and the attention backend ->
    backward (scaled for float16), clipping, the optimizer step -> EMA, scheduler, budget.

    Args:
        model: the model being trained (possibly DDP-wrapped); put in training mode.
        loader: any iterable of batches; ``None`` batches (every image unreadable,
            :func:`hcast.data.collate_readable`) are skipped.
        prepare: ``batch -> (images (B,3,H,W), segments (B,H,W) int64 or None, targets)``
            on the device, or ``None`` to skip the batch; runs outside the timed step.
        compute_loss: ``(images, segments, targets) -> scalar loss`` (float32), run under
            autocast and the attention backend.
        optimizer, device, epoch, scheduler, num_updates, amp_dtype, grad_scaler, clip_grad,
        max_steps, progress, world_size, should_stop, model_ema, attention: as for
            :func:`train_one_epoch`.

    Returns:
        dict with ``loss`` (mean over the pass), ``lr`` (last), ``images_per_s`` (global),
        ``num_updates`` (after the pass), ``steps`` and ``seconds``.

    Raises:
        FloatingPointError: when the loss becomes NaN or infinite.
    """
    model.train()
    total = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
    if max_steps is not None and total is not None:
        total = min(total, max_steps)
    bar = progress_bar(loader, progress, total, f"epoch {epoch}")
    loss_sum, steps, seen = torch.zeros((), device=device), 0, 0
    start = time.perf_counter()
    for batch in bar:
        if max_steps is not None and steps >= max_steps:
            break
        if batch is None:  # every image of the batch was unreadable (hcast.data.collate_readable)
            continue
        prepared = prepare(batch)
        if prepared is None:
            continue
        images, segments, targets = prepared
        step_start = time.perf_counter()
        with attention.backend() if attention is not None else contextlib.nullcontext():
            with autocast(device, amp_dtype):
                loss = compute_loss(images, segments, targets)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss is {loss.item()} at epoch {epoch}, step {steps}; lower --lr, raise --warmup-epochs, "
                    "or use --precision fp32."
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
        if attention is not None:
            attention.record(time.perf_counter() - step_start)
        num_updates += 1
        if model_ema is not None:
            model_ema.update(unwrap_model(model), step=num_updates)
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
        if progress and steps % 5 == 0 and hasattr(bar, "set_postfix"):  # a bar only on a terminal
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

    With ``extend`` the total may also grow past the plan: the cosine then runs to the end
    of the budget, so a faster machine spends its budget learning instead of stopping
    early (the run takes as many more epochs as it needs).

    Under DDP every process must reach the same decision: ``sync=True`` averages the
    measurements over processes (an all-reduce per call).

    Args:
        seconds: the budget for the whole training loop, wall clock, from construction.
        total_updates: the planned number of optimizer updates.
        scheduler: a timm scheduler (``warmup_prefix=True``), or ``None``.
        warmup_updates: warm-up length of ``scheduler``.
        reserve_updates: time to keep for what follows the updates (evaluation, saving),
            in units of one update's measured time.
        calibration_updates, skip, replan_every: the measuring windows (``skip=0``:
            measured from construction).
        replan_at: more measured-update counts to re-plan at (e.g. ``(20,)``).
        sync: all-reduce the measurements across processes.
        start_update: updates already done (a resumed run).
        clock: seconds, monotonic: ``time.perf_counter`` (wall) or ``time.process_time``
            (CPU seconds of this process: the same work on a machine shared with other jobs).
        extend: let the total grow past ``total_updates`` to fill the budget.

    Raises:
        ValueError: for a budget that is not positive.
    """

    def __init__(self, seconds: float, total_updates: int, scheduler: Any = None, warmup_updates: int = 0,
                 reserve_updates: float = 0.0, calibration_updates: int = 20, skip: int = 3,
                 replan_every: int = 50, sync: bool = False, start_update: int = 0,
                 clock: Callable[[], float] = time.perf_counter, extend: bool = False,
                 replan_at: Sequence[int] = ()) -> None:
        if seconds <= 0:
            raise ValueError(f"seconds: expected a positive time budget, got {seconds}.")
        self.seconds, self.planned_updates = float(seconds), int(total_updates)
        self.total_updates, self.scheduler = int(total_updates), scheduler
        self.warmup_updates, self.reserve_updates = int(warmup_updates), float(reserve_updates)
        self.calibration_updates, self.skip = int(calibration_updates), int(skip)
        self.replan_every, self.sync = max(1, int(replan_every)), sync
        self.clock, self.extend = clock, bool(extend)
        self.start = clock()
        self.start_update = int(start_update)
        self.replan_at = frozenset(int(n) for n in replan_at)
        self._mark: Optional[float] = self.start if self.skip == 0 else None
        self.seconds_per_update: Optional[float] = None
        self.reserve_seconds = 0.0

    @property
    def shortened(self) -> bool:
        """Whether the run was cut below its planned number of updates."""
        return self.total_updates < self.planned_updates

    @property
    def extended(self) -> bool:
        """Whether the run was lengthened past its planned number of updates (``extend``)."""
        return self.total_updates > self.planned_updates

    def elapsed(self) -> float:
        return self.clock() - self.start

    def __call__(self, num_updates: int) -> bool:
        done = num_updates - self.start_update
        if done == self.skip and self._mark is None:
            self._mark = self.clock()
        measured = done - self.skip
        if self._mark is not None and measured >= self.calibration_updates and (
                measured == self.calibration_updates or measured % self.replan_every == 0
                or measured in self.replan_at):
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
        total = fit if self.extend else min(self.planned_updates, fit)
        if total != self.total_updates:
            self.total_updates = total
            if self.scheduler is not None and hasattr(self.scheduler, "t_initial"):
                self.scheduler.t_initial = max(1, total - self.warmup_updates)



class AttentionBackendChooser:
    """The scaled-dot-product-attention backend whose training steps are fastest here,
    measured on the run's own steps.

    Which SDPA kernel trains faster depends on the CPU and the token count: on an AMX Xeon
    the math backend's backward made a whole hcast_tiny step 1.40x faster than the default
    (flash) kernel's, while for inference flash was faster (issue 24). Rather than a table
    of CPUs, the first steps of the run alternate between the candidates (after ``skip``
    warm-up steps on the default), ``trials`` steps each, and the backend with the lower
    median step time is kept for the rest of the run. Both compute the same attention, so
    training is unaffected beyond rounding. Used by :func:`train_one_epoch`:
    ``with chooser.backend(): <step>`` then ``chooser.record(seconds)``.

    Args:
        skip: warm-up steps (default backend) before measuring.
        trials: measured steps per candidate.
        sync: under DDP, sum the measurements over processes so every rank keeps the same
            backend (an all-reduce once, when choosing).

    Attributes:
        chosen: ``"default"`` or ``"math"`` once chosen, else ``None``.
        medians: seconds per step of each candidate once chosen.
    """

    CANDIDATES = ("default", "math")

    def __init__(self, skip: int = 2, trials: int = 4, sync: bool = False) -> None:
        if skip < 0 or trials < 1:
            raise ValueError(f"skip must be >= 0 and trials >= 1, got skip={skip}, trials={trials}.")
        self.skip, self.trials, self.sync = int(skip), int(trials), sync
        self.steps = 0
        self.times: Dict[str, List[float]] = {name: [] for name in self.CANDIDATES}
        self.chosen: Optional[str] = None
        self.medians: Dict[str, float] = {}

    def _current(self) -> str:
        if self.chosen is not None:
            return self.chosen
        if self.steps < self.skip:
            return "default"
        return self.CANDIDATES[(self.steps - self.skip) % len(self.CANDIDATES)]

    def backend(self):
        """A context manager running the next step with the backend to measure or the
        chosen one."""
        name = self._current()
        if name == "default":
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([SDPBackend.MATH])

    def record(self, seconds: float) -> None:
        """The wall time of the step just run with :meth:`backend`."""
        name = self._current()
        self.steps += 1
        if self.chosen is not None or self.steps <= self.skip:
            return
        self.times[name].append(float(seconds))
        if all(len(v) >= self.trials for v in self.times.values()):
            medians = torch.tensor([float(torch.tensor(self.times[n]).median()) for n in self.CANDIDATES],
                                   dtype=torch.float64)
            if self.sync and dist.is_initialized():
                dist.all_reduce(medians)
                medians /= dist.get_world_size()
            self.medians = dict(zip(self.CANDIDATES, medians.tolist()))
            self.chosen = min(self.CANDIDATES, key=lambda n: self.medians[n])

    def state_dict(self) -> Dict[str, Any]:
        """The measuring state (steps so far, step times, the choice), for checkpoints: a
        resumed run goes on with the same backend at the same update as an uninterrupted
        one. (A run resumed inside the measuring window times its remaining steps on
        another run's clock, so its choice can differ from the uninterrupted run's.)"""
        return {"steps": self.steps, "times": {k: list(v) for k, v in self.times.items()},
                "chosen": self.chosen, "medians": dict(self.medians)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""
        self.steps = int(state["steps"])
        self.times = {name: [float(t) for t in state["times"].get(name, [])] for name in self.CANDIDATES}
        self.chosen = state.get("chosen")
        self.medians = {k: float(v) for k, v in state.get("medians", {}).items()}

    def describe(self) -> str:
        """One line: the chosen backend and the measured seconds per step."""
        if self.chosen is None:
            return "attention backend: not chosen yet (measuring)"
        times = ", ".join(f"{n} {t:.3f} s" for n, t in self.medians.items())
        return f"attention backend for training: {self.chosen} (median step: {times})"
