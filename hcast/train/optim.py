"""Optimizers and learning-rate schedules of every hcast fine-tuning task.

* :func:`create_optimizer_and_scheduler`: a ``timm.optim`` optimizer and a per-update
  schedule from a :class:`~hcast.train.FinetuneConfig`: the cosine with a linear warm-up
  before it (classification, the H-CAST authors') or the poly decay (segmentation, the
  CAST authors' SPML / Segmenter fine-tuning);
* :class:`PolyLR`: that poly decay, a timm scheduler;
* :func:`segmentation_parameter_groups`: the segmentation recipes' parameter groups (no
  weight decay on norms, biases and embeddings; the head's learning rate scaled).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from timm.scheduler.scheduler import Scheduler

__all__ = ["PolyLR", "create_optimizer_and_scheduler", "segmentation_parameter_groups"]


class PolyLR(Scheduler):
    """Poly learning rate per update, after a linear warm-up (SPML's and Segmenter's schedule).

    Update ``t`` (0-based) runs at ``lr * (t + 1) / warmup_t`` while ``t < warmup_t``, then at
    ``lr * (1 - t / t_initial) ** power`` (``t`` counted from the first update, warm-up
    included, so the decay ends at 0 on update ``t_initial``). A parameter group's
    ``lr_scale`` multiplies its rate (timm's convention).

    Args:
        optimizer: its groups' ``lr`` is the peak rate.
        t_initial: total updates of the decay; :class:`hcast.train.TimeBudget` lowers it
            when a budget shortens the run.
        power: the exponent (0.9).
        warmup_t: warm-up updates.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, t_initial: int, power: float = 0.9,
                 warmup_t: int = 0) -> None:
        super().__init__(optimizer, param_group_field="lr", t_in_epochs=False)
        self.t_initial, self.power, self.warmup_t = int(t_initial), float(power), int(warmup_t)
        self.step_update(0)

    def _get_lr(self, t: int) -> List[float]:
        if t < self.warmup_t:
            return [v * (t + 1) / self.warmup_t for v in self.base_values]
        factor = max(0.0, 1 - t / max(self.t_initial, 1)) ** self.power
        return [v * factor for v in self.base_values]


def segmentation_parameter_groups(model: nn.Module, weight_decay: float, head_lr_scale: float = 1.0
                                  ) -> List[Dict[str, Any]]:
    """Parameter groups of a segmenter: no weight decay on 1-d parameters (norms, biases) and
    on the position / class embeddings (``pos_embed``, ``cls_token``, ``cls_emb``), and the
    head's (``model.head``) learning rate times ``head_lr_scale`` (SPML: 10 for its
    classifier).

    Returns:
        groups with ``params``, ``weight_decay`` and ``lr_scale`` (honoured by timm's
        schedulers and :class:`PolyLR`).
    """
    head = getattr(model, "head", None)
    head_ids = {id(p) for p in head.parameters()} if isinstance(head, nn.Module) else set()
    groups: Dict[Tuple[bool, bool], List[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or name.endswith(("pos_embed", "cls_token", "cls_emb"))
        groups.setdefault((id(p) in head_ids, no_decay), []).append(p)
    return [dict(params=ps, lr_scale=head_lr_scale if is_head else 1.0, weight_decay=0.0 if no_decay else weight_decay)
            for (is_head, no_decay), ps in groups.items()]


def _fused_ok(params: List[nn.Parameter]) -> bool:
    # the fused AdamW kernel updates all parameters in one pass (CPU and CUDA): 7 ms instead of
    # 26 ms a step for hcast_tiny on 2 CPU cores
    devices = {p.device.type for p in params}
    return len(devices) == 1 and devices <= {"cpu", "cuda"} and all(
        p.dtype in (torch.float32, torch.float16, torch.bfloat16) for p in params)


def create_optimizer_and_scheduler(model: nn.Module, config: Any, steps_per_epoch: int, lr: float,
                                   param_groups: Optional[List[Dict[str, Any]]] = None):
    """The optimizer (``timm.optim.create_optimizer_v2``: ``config.opt``, e.g. ``"adamw"``,
    ``"momentum"`` for SGD with momentum; without ``param_groups`` no weight decay on norms,
    biases and the model's ``no_weight_decay()`` names) and the per-update schedule
    ``config.sched``:

    * ``"cosine"``: ``timm.scheduler.CosineLRScheduler`` with a linear warm-up before it
      (``warmup_prefix=True``) that ends at ``config.min_lr`` on the last update;
    * ``"poly"``: :class:`PolyLR` over all updates, warm-up included.

    The run's length is ``config.steps`` updates if set, else ``config.epochs *
    steps_per_epoch``; the warm-up ``config.warmup_steps`` updates if set, else
    ``config.warmup_epochs`` epochs.

    Args:
        model: the (unwrapped) model.
        config: a :class:`hcast.train.FinetuneConfig`.
        steps_per_epoch: updates per epoch.
        lr: the peak learning rate (``config.lr`` after batch-size scaling).
        param_groups: groups to optimise instead of timm's (e.g.
            :func:`segmentation_parameter_groups`).

    Returns:
        ``(optimizer, scheduler, warmup_updates)``; ``warmup_updates`` is what a
        :class:`hcast.train.TimeBudget` subtracts from the total it sets as the scheduler's
        ``t_initial`` (the cosine's warm-up; 0 for the poly decay, which counts it in).
    """
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler

    params = [p for g in param_groups for p in g["params"]] if param_groups is not None else list(model.parameters())
    extra = {"fused": True} if config.opt.lower() == "adamw" and _fused_ok(params) else {}
    optimizer = create_optimizer_v2(param_groups if param_groups is not None else model, opt=config.opt, lr=lr,
                                    weight_decay=config.weight_decay, momentum=config.momentum, **extra)
    total = max(1, config.steps or config.epochs * steps_per_epoch)
    warmup = config.warmup_steps if config.warmup_steps is not None else int(round(config.warmup_epochs * steps_per_epoch))
    if config.sched == "poly":
        return optimizer, PolyLR(optimizer, total, power=config.poly_power, warmup_t=warmup), 0
    warmup = min(warmup, total - 1)  # the cosine needs at least one update after its warm-up
    scheduler = CosineLRScheduler(optimizer, t_initial=max(1, total - warmup), lr_min=config.min_lr, warmup_t=warmup,
                                  warmup_lr_init=config.warmup_lr, warmup_prefix=True, t_in_epochs=False)
    scheduler.step_update(0)
    return optimizer, scheduler, warmup
