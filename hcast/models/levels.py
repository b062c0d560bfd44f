"""Per-level classifiers, one rule for H-CAST and Hier-ViT.

Both models put one linear head per taxonomy level (finest first) on features of
different depths: H-CAST on the class tokens of CAST's stages (github.com/ngocquanai/HiOT
``cast_models/cast_deit_hier.py``), Hier-ViT on the class token after different ViT
blocks (the authors' baseline). What they share lives here, once:

* :func:`resolve_level_classes`: ``level_classes`` / ``taxonomy`` / ``num_classes`` to the
  per-level class counts;
* :class:`LevelHeads`: the heads under timm's model contract (``get_classifier`` returns
  the finest level's head, ``reset_classifier`` takes a count per level, 0, or the finest
  level's count) and the per-level output switch ``set_level_outputs`` (timm's
  ``set_distilled_training`` in ``deit.py`` is the precedent).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from hcast import _validation as V

__all__ = ["resolve_level_classes", "LevelHeads"]


def resolve_level_classes(level_classes: Optional[Sequence[int]], taxonomy: Any, num_classes: Optional[int],
                          default_classes: Optional[int] = None, max_levels: Optional[int] = None,
                          model: str = "the model") -> Tuple[int, ...]:
    """Class count per level, finest first, from a model's arguments.

    Args:
        level_classes: counts per level, finest first, or ``None``.
        taxonomy: an object with a ``num_classes`` tuple (:class:`hcast.hierarchy.Taxonomy`)
            or ``None``; its counts must equal ``level_classes`` when both are given.
        num_classes: timm's argument. With levels: the finest level's count (must agree),
            or 0 (every head removed: the counts come back as zeros). Alone: one level.
        default_classes: the one-level count when nothing is given (``None``: an error,
            and ``num_classes=0`` alone is one too: there is no level to read features of).
        max_levels: the most levels the model has features for.
        model: the model's name, for messages.

    Returns:
        tuple of ints >= 0, one per level, finest first.

    Raises:
        TypeError: ``num_classes`` or a count not an int; ``taxonomy`` without
            ``num_classes``; ``level_classes`` not a sequence.
        ValueError: counts below 0, no level, too many levels, or arguments that disagree.
    """
    if num_classes is not None:
        num_classes = V.check_int("num_classes (0 builds no classifier)", num_classes, 0)
    if taxonomy is not None:
        counts = getattr(taxonomy, "num_classes", None)
        if counts is None:
            raise TypeError(f"taxonomy: expected an hcast.hierarchy.Taxonomy (with a .num_classes tuple), got "
                            f"{type(taxonomy).__name__}.")
        counts = tuple(int(c) for c in counts)
        if level_classes is not None and tuple(level_classes) != counts:
            raise ValueError(f"level_classes: got {tuple(level_classes)}, but the taxonomy has {counts} classes "
                             f"per level (finest first); pass one of them.")
        level_classes = counts
    if level_classes is None:
        one = default_classes if num_classes is None else num_classes
        if one is None or (one == 0 and default_classes is None):
            raise ValueError(f"{model} needs level_classes=(n_fine, ..., n_coarse), taxonomy=Taxonomy(...) or "
                             f"num_classes=N (a one-level model).")
        return (one,)
    if isinstance(level_classes, (int, str, bytes)) or not isinstance(level_classes, Sequence):
        raise TypeError(f"level_classes: expected a sequence of class counts, finest level first (e.g. "
                        f"(100, 70, 30)), got {level_classes!r}.")
    counts = tuple(V.check_int(f"level_classes[{i}]", c, 0) for i, c in enumerate(level_classes))
    if not counts or (max_levels is not None and len(counts) > max_levels):
        raise ValueError(f"level_classes: {model} takes 1 to {max_levels or 'any number of'} taxonomy levels, got "
                         f"{counts}.")
    if num_classes == 0:
        return (0,) * len(counts)  # no heads: per-level features
    if num_classes is not None and num_classes != counts[0]:
        raise ValueError(f"num_classes: got {num_classes}, but level_classes={counts} puts {counts[0]} classes at "
                         f"the finest level; pass level_classes only, or num_classes=0 for features.")
    return counts


class LevelHeads:
    """Mixin for models with one classifier per taxonomy level (``self.heads``, finest first).

    The model class provides ``_new_head(num_classes) -> nn.Module`` (a head for one level,
    initialised as its original code does) and sets ``self.taxonomy`` and
    ``self.level_outputs = False`` before calling :meth:`_set_heads`.

    Attributes:
        heads: ``nn.ModuleList``, one head per level (``nn.Identity`` for a count of 0).
        level_classes: tuple of counts, finest first; ``num_classes`` is the finest one.
        level_outputs: whether ``forward`` returns the per-level tuple.
    """

    def _new_head(self, num_classes: int) -> nn.Module:
        raise NotImplementedError

    def _set_heads(self, level_classes: Sequence[int]) -> None:
        """New heads for ``level_classes`` (every one freshly initialised)."""
        self.heads = nn.ModuleList(self._new_head(n) if n > 0 else nn.Identity() for n in level_classes)
        self.level_classes = tuple(level_classes)
        self.num_classes = self.level_classes[0]

    @property
    def num_levels(self) -> int:
        """Number of taxonomy levels (heads)."""
        return len(self.level_classes)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """The finest level's head (``model.heads`` holds every level's)."""
        return self.heads[0]

    @torch.jit.ignore
    def set_level_outputs(self, enable: bool = True) -> None:
        """Make ``forward`` return the per-level logits tuple, finest first (as
        ``forward_levels``), or, with ``enable=False``, the finest level's tensor (the
        default). For code that can only call ``forward``: DDP, ``torch.compile``, export.
        timm's ``set_distilled_training`` (``deit.py``) is the precedent."""
        self.level_outputs = bool(enable)

    def _reset_level_heads(self, num_classes: Union[int, Sequence[int]]) -> None:
        """``reset_classifier``'s heads: a per-level sequence replaces every head; ``0``
        removes every head (features, as timm's ``reset_classifier(0)``); another int
        replaces the finest level's head only (the one :meth:`get_classifier` returns). A
        taxonomy whose counts no longer match is dropped.

        Raises:
            TypeError: a count that is not an int.
            ValueError: a sequence of the wrong length, or a negative count.
        """
        finest_only = isinstance(num_classes, int) and not isinstance(num_classes, bool) and num_classes > 0
        if finest_only:
            counts = (num_classes,) + self.level_classes[1:]
        elif isinstance(num_classes, int) and not isinstance(num_classes, bool):
            counts = (V.check_int("num_classes (0 builds no classifier)", num_classes, 0),) * self.num_levels
        else:
            counts = resolve_level_classes(num_classes, None, None)
        if len(counts) != self.num_levels:
            raise ValueError(f"num_classes: expected {self.num_levels} class counts (one per level, finest first), "
                             f"got {counts}.")
        old = self.heads
        self._set_heads(counts)
        if finest_only:
            for level in range(1, self.num_levels):
                self.heads[level] = old[level]  # only the finest head is new
        if self.level_classes != tuple(getattr(self.taxonomy, "num_classes", ())):
            self.taxonomy = None
