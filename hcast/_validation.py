"""The argument checks of the whole package: one vocabulary, one rule for exception types.

Every public op, loss, metric and model of hcast checks its inputs through these
functions (the bottom of the package: it imports nothing from hcast), so the same
mistake raises the same exception everywhere:

* :class:`TypeError` for a wrong *type or dtype*: a list where a tensor is needed, a
  single tensor where a per-level sequence is needed, integer logits, float class ids,
  a float where an int is needed, an object that is not the expected class;
* :class:`ValueError` for a wrong *value or shape*: a wrong rank or size, an empty
  tensor, batch sizes or devices that differ, NaN or infinite values, ids out of range,
  a name that is not one of the choices.

Every message names the argument as the caller wrote it (``features``, ``logits[1]``,
``targets``), says what was expected and what was received, and, where there is one,
what to do about it.

Checks that read values (NaN, ranges) cost a pass over the tensor and a host sync;
callers run them only under their ``validate_args`` switch. Rank, dtype, batch and
device checks read metadata only and always run.
"""
from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Sequence
from typing import Any, Optional

import torch

__all__ = [
    # tensors
    "check_tensor", "check_rank", "check_floating", "check_integer", "check_non_empty",
    "check_non_negative", "check_finite", "check_scores", "check_same_batch", "check_same_device",
    # class ids and logits
    "check_labels", "check_class_ids", "check_logits",
    # per-level sequences, finest first
    "as_levels", "check_level_logits", "check_level_count",
    # Python values
    "check_int", "check_number", "check_sequence", "check_choice", "check_instance",
]


def _shape(tensor: torch.Tensor) -> str:
    return str(tuple(tensor.shape))


def _describe(value: object) -> str:
    """``a torch.float32 tensor of shape (3, 4)`` or the type name of a non-tensor."""
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {_shape(value)}"
    return type(value).__name__


# ----------------------------------------------------------------------------- tensors

def check_tensor(name: str, value: object) -> torch.Tensor:
    """Return ``value``; :class:`TypeError` unless it is a :class:`torch.Tensor`."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}.")
    return value


def check_rank(name: str, tensor: torch.Tensor, rank: int, layout: str) -> None:
    """:class:`ValueError` unless ``tensor`` has ``rank`` dimensions laid out as ``layout``."""
    if tensor.dim() != rank:
        raise ValueError(
            f"{name} must have shape {layout} ({rank} dimensions), got shape "
            f"{_shape(tensor)} ({tensor.dim()} dimensions)."
        )


def check_floating(name: str, tensor: torch.Tensor, how: str = "convert it with .float()") -> None:
    """:class:`TypeError` unless ``tensor`` has a floating point dtype; ``how`` says what to do."""
    if not tensor.is_floating_point():
        raise TypeError(f"{name} must have a floating point dtype, got {tensor.dtype}; {how}.")


_TO_INTEGER = "convert it with .long() after checking that the values are whole numbers"


def check_integer(name: str, tensor: torch.Tensor, how: str = _TO_INTEGER) -> None:
    """:class:`TypeError` unless ``tensor`` holds integers (ids, labels; not bool); ``how``
    says what to do."""
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer ids (dtype torch.int64), got dtype {tensor.dtype}; {how}.")


def check_non_empty(name: str, tensor: torch.Tensor, layout: str) -> None:
    """:class:`ValueError` if any dimension of ``tensor`` has size 0."""
    if tensor.numel() == 0:
        raise ValueError(
            f"{name} must not be empty: expected shape {layout} with every size >= 1, "
            f"got shape {_shape(tensor)}."
        )


def check_non_negative(name: str, tensor: torch.Tensor) -> None:
    """:class:`ValueError` if an integer ``tensor`` of ids holds a negative value (a host sync)."""
    if tensor.numel() and bool((tensor < 0).any()):
        raise ValueError(
            f"{name} must hold ids >= 0, got minimum {int(tensor.min())}; "
            f"relabel the ids to 0..S-1 (e.g. with torch.unique(..., return_inverse=True))."
        )


def check_finite(name: str, tensor: torch.Tensor) -> None:
    """:class:`ValueError` if ``tensor`` holds NaN or infinity (a host sync)."""
    if not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise ValueError(
            f"{name} must be finite, got {bad} NaN or infinite value(s) in a tensor of "
            f"shape {_shape(tensor)}; check the upstream computation."
        )


def check_scores(name: str, scores: torch.Tensor, posinf: bool = False) -> None:
    """:class:`ValueError` naming the first sample (row) whose scores hold NaN (and, with
    ``posinf``, +inf): an argmax over NaN picks an arbitrary class, a log-softmax over +inf
    is NaN. -inf (a masked class) is allowed. Integer tensors pass. A host sync."""
    if not scores.is_floating_point():
        return
    bad = torch.isnan(scores) | torch.isposinf(scores) if posinf else torch.isnan(scores)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        what = "NaN" if bool(torch.isnan(scores[i]).any()) else "+inf"
        raise ValueError(
            f"{name} holds {what} scores (first at sample {i}); their argmax or log-probability is "
            f"meaningless. Check the model's output (a diverged run, NaN inputs), or pass "
            f"validate_args=False to skip this check."
        )


def check_same_batch(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    """:class:`ValueError` unless ``a`` and ``b`` have the same batch size (dim 0)."""
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"{name_a} and {name_b} must have the same batch size, got {name_a} of shape "
            f"{_shape(a)} and {name_b} of shape {_shape(b)}."
        )


def check_same_device(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    """:class:`ValueError` unless ``a`` and ``b`` live on the same device."""
    if a.device != b.device:
        raise ValueError(
            f"{name_a} and {name_b} must be on the same device, got {a.device} and "
            f"{b.device}; move one with .to({a.device!s})."
        )


# ----------------------------------------------------------------------------- class ids and logits

def check_labels(name: str, labels: object, batch: Optional[int] = None, against: str = "logits",
                 num_classes: Optional[int] = None, where: str = "") -> torch.Tensor:
    """Return ``labels``, an (N,) integer tensor of class ids.

    Args:
        name: the argument name used in messages.
        labels: the value to check.
        batch: N, when known (``against`` names what sets it).
        num_classes: when given, every id must be in ``[0, num_classes)`` (a host sync;
            see :func:`check_class_ids`, ``where`` as there).

    Raises:
        TypeError: not a tensor, or a float, complex or bool dtype.
        ValueError: not 1-D, not ``batch`` entries, or an id outside ``[0, num_classes)``.
    """
    check_tensor(name, labels)
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(
            f"{name} must be an integer (N,) tensor of class ids (dtype torch.int64), got "
            f"{_describe(labels)}; hard labels are class ids, convert them with .long()."
        )
    if labels.dim() != 1:
        raise ValueError(f"{name} must be an (N,) tensor of class ids, got shape {_shape(labels)}.")
    if batch is not None and labels.shape[0] != batch:
        raise ValueError(f"{name} has {labels.shape[0]} entries but {against} has {batch}.")
    if num_classes is not None:
        check_class_ids(name, labels, num_classes, where)
    return labels


def check_class_ids(name: str, ids: torch.Tensor, num_classes: int, where: str = "") -> None:
    """:class:`ValueError` naming the first entry of ``ids`` outside ``[0, num_classes)``
    (a host sync); ``where`` says whose classes they are (``" at level 1 of the taxonomy"``)."""
    bad = (ids < 0) | (ids >= num_classes)
    if bool(bad.any()):
        i = int(bad.reshape(-1).nonzero()[0, 0])
        raise ValueError(
            f"{name}[{i}] is {int(ids.reshape(-1)[i])}, outside [0, {num_classes}){where}; class ids must "
            f"be 0..{num_classes - 1}: check the label encoding or the class count."
        )


def check_logits(name: str, logits: object, num_classes: Optional[int] = None) -> torch.Tensor:
    """Return ``logits``, a floating (N, C) tensor (C = ``num_classes`` when given).

    Raises:
        TypeError: not a tensor, or not floating point.
        ValueError: not 2-D, or not ``num_classes`` columns.
    """
    check_tensor(name, logits)
    c = "C" if num_classes is None else num_classes
    if not logits.is_floating_point():
        raise TypeError(f"{name} must be a floating (N, {c}) tensor of logits, got {_describe(logits)}.")
    if logits.dim() != 2 or (num_classes is not None and logits.shape[1] != num_classes):
        raise ValueError(f"{name} must have shape (N, {c}) (one column per class), got shape {_shape(logits)}.")
    return logits


# ----------------------------------------------------------------------------- per-level sequences

def as_levels(x: Any, name: str) -> list[torch.Tensor]:
    """``x`` as a non-empty list of tensors, one per taxonomy level, finest first.

    Raises:
        TypeError: ``x`` is a single tensor or not a sequence, or an entry is not a tensor.
        ValueError: ``x`` is empty.
    """
    if isinstance(x, torch.Tensor):
        raise TypeError(
            f"{name} must be a sequence of per-level tensors, one tensor per level, finest first (e.g. "
            f"[fine, coarse], the tuple an H-CAST model returns), got a single tensor of shape "
            f"{_shape(x)}; wrap it in a list for one level."
        )
    if isinstance(x, (str, bytes)) or not hasattr(x, "__iter__"):
        raise TypeError(f"{name} must be a sequence of per-level tensors, finest first, got {type(x).__name__}.")
    out = list(x)
    if not out:
        raise ValueError(f"{name} is empty; give one tensor per level, finest first.")
    for level, t in enumerate(out):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}[{level}] must be a tensor, got {type(t).__name__}.")
    return out


def check_level_logits(
    logits: Any, name: str = "logits", num_classes: Optional[Sequence[int]] = None, floating: bool = True
) -> list[torch.Tensor]:
    """Check per-level (N, C_l) logits, finest first, and return them as a list.

    Args:
        logits: a sequence of (N, C_l) tensors, one per level.
        name: the argument name used in messages.
        num_classes: when given (a taxonomy's ``num_classes``), the level count and every
            C_l must match it.
        floating: require floating point logits.

    Raises:
        TypeError: see :func:`as_levels`; integer logits when ``floating``.
        ValueError: an entry that is not 2-D, batch sizes that differ from ``logits[0]``,
            or level / class counts that differ from ``num_classes``.
    """
    out = as_levels(logits, name)
    n = out[0].shape[0] if out[0].dim() > 0 else None
    for level, x in enumerate(out):
        if x.dim() != 2:
            raise ValueError(f"{name}[{level}] must be a (N, C_{level}) tensor, got shape {_shape(x)}.")
        if floating and not x.is_floating_point():
            raise TypeError(f"{name}[{level}] must be a floating (N, C_{level}) tensor, got dtype {x.dtype}.")
        if x.shape[0] != n:
            raise ValueError(f"{name}[{level}] has batch size {x.shape[0]} but {name}[0] has {n}.")
    if num_classes is not None:
        check_level_count(name, len(out), len(num_classes))
        for level, (x, c) in enumerate(zip(out, num_classes)):
            if x.shape[1] != c:
                raise ValueError(
                    f"{name}[{level}] has {x.shape[1]} classes but level {level} of the taxonomy has {c}; give "
                    f"one (N, C_l) tensor per level, finest first, with the taxonomy's class counts."
                )
    return out


def check_level_count(name: str, levels: int, expected: int, of: str = "the taxonomy") -> None:
    """:class:`ValueError` unless ``name`` has ``expected`` levels (those of ``of``)."""
    if levels != expected:
        raise ValueError(
            f"{name} has {levels} levels but {of} has {expected}; give one tensor per level, finest first."
        )


# ----------------------------------------------------------------------------- Python values

def check_int(name: str, value: object, low: int, high: Optional[int] = None) -> int:
    """Return ``value`` as an int in ``[low, high]``.

    Raises:
        TypeError: not an int (a bool, a float, a float tensor).
        ValueError: outside the bounds.
    """
    if isinstance(value, bool) or not isinstance(value, (int, torch.SymInt)):
        if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point() \
                and value.dtype != torch.bool:
            value = int(value)
        elif type(value).__module__ == "numpy" and hasattr(value, "dtype") and value.dtype.kind in "iu":
            value = int(value)  # numpy integer scalars
        else:
            raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r}).")
    value = int(value)
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {bounds}, got {value}.")
    return value


def check_number(name: str, value: object, low: Optional[float] = None, high: Optional[float] = None,
                 low_open: bool = False, high_open: bool = False) -> float:
    """Return ``value`` as a finite float in the interval from ``low`` to ``high`` (closed
    unless ``low_open`` / ``high_open``; ``None``: unbounded).

    Raises:
        TypeError: not a real number (a bool, a string, a tensor).
        ValueError: NaN, infinite, or outside the interval.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} ({value!r}).")
    value = float(value)
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if not math.isfinite(value) or below or above:
        interval = ("(" if low_open else "[") + ("-inf" if low is None else f"{low:g}") + ", " + (
            "inf" if high is None else f"{high:g}") + (")" if high_open or high is None else "]")
        raise ValueError(f"{name} must be a finite number in {interval}, got {value!r}.")
    return value


def check_sequence(name: str, value: object, entry: str = "one entry per stage") -> Sequence:
    """Return ``value``, a non-empty list or tuple.

    Raises:
        TypeError: not a list or tuple (a tensor included).
        ValueError: empty.
    """
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a list or tuple with {entry}, got {type(value).__name__}.")
    if len(value) == 0:
        raise ValueError(f"{name} must hold {entry}, got an empty {type(value).__name__}.")
    return value


def check_choice(name: str, value: object, choices: Sequence) -> Any:
    """Return ``value``; :class:`ValueError` unless it is one of ``choices``."""
    if not any(value == c and type(value) is type(c) for c in choices):
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}.")
    return value


def _public_name(cls: type) -> str:
    """``hcast.hierarchy.Taxonomy`` for a class defined in ``hcast.hierarchy.taxonomy``: the
    shortest enclosing package that exports it."""
    parts = cls.__module__.split(".")
    for end in range(1, len(parts) + 1):
        module = sys.modules.get(".".join(parts[:end]))
        if module is not None and getattr(module, cls.__name__, None) is cls:
            return f"{'.'.join(parts[:end])}.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def check_instance(name: str, value: object, cls: type) -> Any:
    """Return ``value``; :class:`TypeError` unless it is an instance of ``cls``."""
    if not isinstance(value, cls):
        public = _public_name(cls)
        raise TypeError(f"{name} must be an {public}, got {type(value).__name__}; build one with {public}(...).")
    return value
