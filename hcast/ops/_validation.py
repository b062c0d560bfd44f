"""Input checks shared by the ops in :mod:`hcast.ops`.

Every check raises :class:`ValueError` (or :class:`TypeError` for a non-tensor)
whose message names the argument, what was expected, what was received and what
to do about it, so a user can fix the call without reading the op's source.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "check_tensor", "check_rank", "check_floating", "check_integer", "check_non_empty",
    "check_non_negative", "check_finite", "check_same_batch", "check_same_device",
    "check_int", "check_sequence",
]


def _shape(tensor: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in tensor.shape) + ")"


def check_tensor(name: str, value: object) -> torch.Tensor:
    """Raise TypeError unless ``value`` is a :class:`torch.Tensor`."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}.")
    return value


def check_rank(name: str, tensor: torch.Tensor, rank: int, layout: str) -> None:
    """Raise ValueError unless ``tensor`` has ``rank`` dimensions laid out as ``layout``."""
    if tensor.dim() != rank:
        raise ValueError(
            f"{name} must have shape {layout} ({rank} dimensions), got shape "
            f"{_shape(tensor)} ({tensor.dim()} dimensions)."
        )


def check_floating(name: str, tensor: torch.Tensor) -> None:
    """Raise ValueError unless ``tensor`` has a floating point dtype."""
    if not tensor.is_floating_point():
        raise ValueError(
            f"{name} must have a floating point dtype, got {tensor.dtype}; "
            f"convert it with .float()."
        )


def check_integer(name: str, tensor: torch.Tensor) -> None:
    """Raise ValueError unless ``tensor`` holds integers (ids, labels)."""
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise ValueError(
            f"{name} must hold integer ids (dtype torch.int64), got dtype {tensor.dtype}; "
            f"convert it with .long() after checking that the values are whole numbers."
        )


def check_non_empty(name: str, tensor: torch.Tensor, layout: str) -> None:
    """Raise ValueError if any dimension of ``tensor`` has size 0."""
    if tensor.numel() == 0:
        raise ValueError(
            f"{name} must not be empty: expected shape {layout} with every size >= 1, "
            f"got shape {_shape(tensor)}."
        )


def check_non_negative(name: str, tensor: torch.Tensor) -> None:
    """Raise ValueError if an integer ``tensor`` holds a negative value."""
    if tensor.numel() and bool((tensor < 0).any()):
        raise ValueError(
            f"{name} must hold ids >= 0, got minimum {int(tensor.min())}; "
            f"relabel the ids to 0..S-1 (e.g. with torch.unique(..., return_inverse=True))."
        )


def check_finite(name: str, tensor: torch.Tensor) -> None:
    """Raise ValueError if ``tensor`` holds NaN or infinity."""
    if not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise ValueError(
            f"{name} must be finite, got {bad} NaN or infinite value(s) in a tensor of "
            f"shape {_shape(tensor)}; check the upstream computation."
        )


def check_same_batch(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    """Raise ValueError unless ``a`` and ``b`` have the same batch size (dim 0)."""
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"{name_a} and {name_b} must have the same batch size, got {name_a} of shape "
            f"{_shape(a)} and {name_b} of shape {_shape(b)}."
        )


def check_same_device(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    """Raise ValueError unless ``a`` and ``b`` live on the same device."""
    if a.device != b.device:
        raise ValueError(
            f"{name_a} and {name_b} must be on the same device, got {a.device} and "
            f"{b.device}; move one with .to({a.device!s})."
        )


def check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    """Return ``value`` as an int, raising unless it is an integer in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, (int, torch.SymInt)):
        if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
            value = int(value)
        else:
            raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r}).")
    value = int(value)
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {bounds}, got {value}.")
    return value


def check_sequence(name: str, value: object) -> Sequence:
    """Raise TypeError unless ``value`` is a non-empty list or tuple."""
    if isinstance(value, torch.Tensor) or not isinstance(value, (list, tuple)):
        raise TypeError(
            f"{name} must be a list or tuple with one entry per stage, got "
            f"{type(value).__name__}."
        )
    if len(value) == 0:
        raise ValueError(f"{name} must hold at least one stage, got an empty {type(value).__name__}.")
    return value
