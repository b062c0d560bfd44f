"""Level-weighted cross-entropy: one cross-entropy per level, weighted and scheduled.

* :func:`ramp_weight`: the schedule factor of a level (0 before its start epoch,
  then a linear ramp to 1).
* :class:`LevelWeightedCrossEntropy`: the ``SimpleHierarchyLoss`` of the CIFAR-100
  follow-up of "Making Better Mistakes" (``github:Akhyate-Brahim/making-better-mistakes``,
  ``custom_loss.py``, read, not copied), generalised to any number of levels.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hcast import _validation as V
from hcast.hierarchy.taxonomy import Taxonomy
from hcast.hierarchy.losses._common import FINE_CLASSES, _level_maps

__all__ = ["ramp_weight", "LevelWeightedCrossEntropy"]


def ramp_weight(epoch: float, start_epoch: float = 0, ramp_epochs: float = 0) -> float:
    """Schedule factor of a level's loss: 0 before ``start_epoch``, then a linear ramp to 1.

    ``0`` if ``epoch < start_epoch``; ``(epoch - start_epoch) / ramp_epochs`` while
    ``epoch < start_epoch + ramp_epochs``; ``1`` afterwards (so the factor is 0 *at*
    ``start_epoch`` when ``ramp_epochs > 0``), as ``SimpleHierarchyLoss._calculate_weight``
    of the CIFAR-100 follow-up. Fractional epochs are allowed, for per-iteration ramps.
    """
    if epoch < start_epoch:
        return 0.0
    if epoch < start_epoch + ramp_epochs:
        return float(epoch - start_epoch) / float(ramp_epochs)
    return 1.0


def _per_level(value: Optional[Sequence[float]], num_levels: int, default: float, arg: str) -> tuple[float, ...]:
    if value is None:
        return (float(default),) * num_levels
    if isinstance(value, (int, float)):
        return (V.check_number(arg, value, low=0),) * num_levels
    value = tuple(V.check_number(f"{arg}[{l}]", v, low=0) for l, v in enumerate(value))
    if len(value) != num_levels:
        raise ValueError(
            f"{arg} has {len(value)} entries but level_weights has {num_levels}; give one value per level, finest first."
        )
    return value


class LevelWeightedCrossEntropy(nn.Module):
    r"""One cross-entropy per taxonomy level, weighted and switched on by a schedule.

    .. math::
        \mathcal{L}(e) = \sum_l w_l\, r_l(e)\, \mathrm{CE}(z_l, y_l),
        \qquad r_l(e) = \mathrm{clip}\Big(\frac{e - s_l}{R_l}, 0, 1\Big)\ (0 \text{ for } e < s_l)

    with per-level weights :math:`w_l` (``level_weights``), start epochs :math:`s_l`
    (``start_epochs``) and ramp lengths :math:`R_l` (``ramp_epochs``), see
    :func:`ramp_weight`. This is the ``SimpleHierarchyLoss`` of the CIFAR-100
    follow-up of "Making Better Mistakes" (``lambda_fine``, ``lambda_coarse``,
    ``*_loss_start_epoch``, ``*_loss_ramp_epochs``) generalised to any number of
    levels; e.g. fine from epoch 0 and coarse switched on at epoch 50, ramped over 20::

        loss_fn = LevelWeightedCrossEntropy((1.0, 0.5), start_epochs=(0, 50), ramp_epochs=(0, 20))
        for epoch in range(epochs):
            loss_fn.set_epoch(epoch)        # or pass epoch=... to forward
            ...
            loss = loss_fn(model(images), level_targets)  # H-CAST: tuple of per-level logits

    Every level's loss is computed even while its factor is 0 (it is multiplied by
    0), so all heads stay in the graph as DistributedDataParallel expects.

    Args:
        level_weights: :math:`w_l`, one per level, finest first (its length sets the
            number of levels).
        start_epochs: :math:`s_l` per level (default all 0), or one number for all.
        ramp_epochs: :math:`R_l` per level (default all 0: full weight at once).
        taxonomy: optional; lets ``targets`` be (N,) fine ids only (ancestors are
            looked up) and ``logits`` be fine logits only (coarser logits derived).
        coarse_logits: how coarser logits are derived from fine ones when only fine
            logits are given: ``"logsumexp"`` (their softmax is the marginal
            probability of each coarse class, the principled choice) or ``"sum"``
            (sum of the children's logits, what ``SimpleHierarchyLoss`` does with
            ``outputs.view(-1, 20, 5).sum(2)``).
        label_smoothing: passed to :func:`torch.nn.functional.cross_entropy`.

    Shape:
        ``forward(logits, targets, epoch=None) -> scalar``:

        * ``logits``: sequence of per-level (N, C_l) float logits, finest first (as
          H-CAST/Hier-ViT models return), or one (N, num_fine) tensor with a taxonomy.
        * ``targets``: sequence of per-level targets, each (N,) int64 class ids or
          (N, C_l) float class probabilities (mixup / soft labels); an (N, num_levels)
          int64 tensor of paths; or one (N,) int64 tensor of fine ids with a taxonomy.
        * ``epoch``: overrides the epoch set by :meth:`set_epoch` for this call.

    Raises:
        TypeError: ``taxonomy`` not a :class:`~hcast.hierarchy.Taxonomy`; logits not
            floating point or not tensors; hard targets not integer.
        ValueError: a level count that does not match ``level_weights``, logits not
            (N, C_l), or an integer target outside ``[0, C_l)`` (message names
            ``targets[l]`` and the id).
    """

    def __init__(
        self,
        level_weights: Sequence[float] = (1.0, 1.0),
        start_epochs: Optional[Union[float, Sequence[float]]] = None,
        ramp_epochs: Optional[Union[float, Sequence[float]]] = None,
        taxonomy: Optional[Taxonomy] = None,
        coarse_logits: str = "logsumexp",
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if isinstance(level_weights, (int, float)) or len(level_weights) == 0:
            raise ValueError(f"level_weights must be a non-empty sequence (one weight per level), got {level_weights!r}.")
        self.level_weights = _per_level(level_weights, len(level_weights), 1.0, "level_weights")
        num_levels = len(self.level_weights)
        self.start_epochs = _per_level(start_epochs, num_levels, 0.0, "start_epochs")
        self.ramp_epochs = _per_level(ramp_epochs, num_levels, 0.0, "ramp_epochs")
        self.coarse_logits = V.check_choice("coarse_logits", coarse_logits, ("logsumexp", "sum"))
        self.label_smoothing = float(label_smoothing)
        self.epoch: float = 0
        self.num_classes: Optional[tuple[int, ...]] = None
        if taxonomy is not None:
            V.check_instance("taxonomy", taxonomy, Taxonomy)
            if taxonomy.num_levels != num_levels:
                raise ValueError(
                    f"taxonomy has {taxonomy.num_levels} levels but level_weights has {num_levels} entries; "
                    f"give one weight per level, finest first."
                )
            self.num_classes = taxonomy.num_classes
            self.register_buffer("level_maps", _level_maps(taxonomy), persistent=False)
        else:
            self.level_maps = None

    @property
    def num_levels(self) -> int:
        return len(self.level_weights)

    def set_epoch(self, epoch: float) -> None:
        """Set the (possibly fractional) epoch the schedule reads; call once per epoch."""
        self.epoch = epoch

    def weights_at(self, epoch: Optional[float] = None) -> tuple[float, ...]:
        """Effective per-level weights :math:`w_l r_l(e)` at ``epoch`` (default: the set epoch)."""
        e = self.epoch if epoch is None else epoch
        return tuple(
            w * ramp_weight(e, s, r) for w, s, r in zip(self.level_weights, self.start_epochs, self.ramp_epochs)
        )

    def _split_logits(self, logits: Union[Tensor, Sequence[Tensor]]) -> list[Tensor]:
        if torch.is_tensor(logits):
            if self.level_maps is None:
                if self.num_levels != 1:
                    raise ValueError(
                        f"logits is a single tensor but the loss has {self.num_levels} levels; pass a sequence of "
                        f"per-level logits (finest first), or a taxonomy to derive coarser logits from fine ones."
                    )
                return [logits]
            V.check_logits("logits", logits, self.num_classes[0])
            out = [logits]
            for l in range(1, self.num_levels):
                index = self.level_maps[l].to(logits.device)[None, :].expand_as(logits)
                shape = (logits.shape[0], self.num_classes[l])
                if self.coarse_logits == "sum":
                    out.append(logits.new_zeros(shape).scatter_add(1, index, logits))
                else:
                    out.append(_scatter_logsumexp(logits, index, shape))
            return out
        V.check_level_count("logits", len(V.as_levels(logits, "logits")), self.num_levels, of="level_weights")
        return V.check_level_logits(logits, "logits", self.num_classes)

    def _split_targets(self, targets: Union[Tensor, Sequence[Tensor]], logits: list[Tensor]) -> list[Tensor]:
        n = logits[0].shape[0]
        if torch.is_tensor(targets) and targets.dim() == 1:
            if self.level_maps is None:
                if self.num_levels != 1:
                    raise ValueError(
                        f"targets is a single (N,) tensor but the loss has {self.num_levels} levels; pass per-level "
                        f"targets (finest first), or a taxonomy to look up the ancestors of fine targets."
                    )
                targets = [targets]
            else:
                V.check_labels("targets", targets, n, num_classes=self.num_classes[0], where=FINE_CLASSES)
                maps = self.level_maps.to(targets.device)
                return [maps[l][targets.long()] for l in range(self.num_levels)]
        if torch.is_tensor(targets) and targets.dim() == 2:
            V.check_integer("targets (an (N, num_levels) tensor of paths)", targets)
            targets = targets.unbind(1)  # (N, num_levels) paths, as Taxonomy.paths()[fine]
        elif torch.is_tensor(targets) and targets.dim() != 1:
            raise ValueError(
                f"targets must be (N,) fine ids (with a taxonomy), an (N, num_levels) integer tensor of paths, "
                f"or a sequence of per-level targets; got a tensor of shape {tuple(targets.shape)}."
            )
        targets = V.as_levels(targets, "targets")
        V.check_level_count("targets", len(targets), self.num_levels, of="level_weights")
        for l, (y, z) in enumerate(zip(targets, logits)):
            if y.is_floating_point() and y.dim() == 2:
                if tuple(y.shape) != tuple(z.shape):
                    raise ValueError(
                        f"targets[{l}] holds class probabilities of shape {tuple(y.shape)}; expected "
                        f"{tuple(z.shape)}, the shape of logits[{l}]."
                    )
            else:
                V.check_labels(f"targets[{l}]", y, n, f"logits[{l}]", num_classes=z.shape[1], where=f" at level {l}")
        return targets

    def forward(
        self,
        logits: Union[Tensor, Sequence[Tensor]],
        targets: Union[Tensor, Sequence[Tensor]],
        epoch: Optional[float] = None,
    ) -> Tensor:
        level_logits = self._split_logits(logits)
        level_targets = self._split_targets(targets, level_logits)
        total = level_logits[0].new_zeros(())
        for w, z, y in zip(self.weights_at(epoch), level_logits, level_targets):
            y = y if y.is_floating_point() else y.long()
            total = total + w * F.cross_entropy(z, y, label_smoothing=self.label_smoothing)
        return total

    def extra_repr(self) -> str:
        return (
            f"level_weights={self.level_weights}, start_epochs={self.start_epochs}, "
            f"ramp_epochs={self.ramp_epochs}, epoch={self.epoch}"
        )


def _scatter_logsumexp(logits: Tensor, index: Tensor, shape: tuple[int, int]) -> Tensor:
    """Per-group logsumexp of ``logits`` columns; ``index`` (N, num_fine) gives each column's group."""
    group_max = logits.new_full(shape, float("-inf")).scatter_reduce(1, index, logits, "amax", include_self=True)
    group_max = group_max.detach()  # a constant shift; keeps the gradient exact
    shifted = torch.exp(logits - group_max.gather(1, index))
    sums = logits.new_zeros(shape).scatter_add(1, index, shifted)
    return sums.log() + group_max
