"""Numerical precision for inference: float32, or bfloat16 autocast where the hardware
computes it natively.

bfloat16 autocast runs the linear layers, attention and convolutions in bfloat16; what
must stay exact does not follow it: farthest point sampling runs in float64 with
autocast switched off (DGL's indices; :func:`hcast.ops.farthest_point_sampling`), the
superpixel means are taken in float32 (the model adds the float32 position embedding
before pooling), and losses take float32 logits (``.float()``). On a CPU without native
bfloat16 (AVX-512 BF16 or AMX) bfloat16 is emulated and usually slower than float32,
which is why ``'auto'`` picks float32 there.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch

__all__ = ["PRECISIONS", "cpu_has_native_bf16", "resolve_precision"]

#: the values :func:`resolve_precision` accepts
PRECISIONS = ("fp32", "bf16", "auto")

_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16(cpuinfo: Union[str, Path] = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bfloat16 natively: AVX-512 BF16 or AMX, from torch's
    CPU capability (``torch.backends.cpu.get_cpu_capability()``, ``'AVX512_BF16'`` /
    ``'AMX'`` ...) or the flags of ``cpuinfo`` (Linux)."""
    capability = str(torch.backends.cpu.get_cpu_capability()).upper()
    if "BF16" in capability or "AMX" in capability:
        return True
    try:
        flags = Path(cpuinfo).read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in _BF16_CPU_FLAGS)


def resolve_precision(precision: str, device: Union[str, torch.device], verbose: bool = True
                      ) -> Optional[torch.dtype]:
    """The autocast dtype for ``precision`` on ``device``: ``None`` for float32.

    Args:
        precision: ``'fp32'`` (no autocast), ``'bf16'`` (bfloat16 autocast, even where it
            is emulated) or ``'auto'``: bfloat16 on CUDA (when the GPU supports it) and on
            CPUs with native bfloat16 (:func:`cpu_has_native_bf16`), float32 elsewhere.
        device: where the model runs.
        verbose: print which precision ``'auto'`` chose, and why.

    Returns:
        ``torch.bfloat16`` or ``None``.

    Raises:
        ValueError: an unknown ``precision``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    device = torch.device(device)
    if device.type == "cuda":
        chosen = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        why = "the GPU supports bfloat16" if chosen else "the GPU lacks bfloat16"
    elif device.type == "cpu":
        chosen = cpu_has_native_bf16()
        why = ("the CPU has native bfloat16 (AVX-512 BF16 / AMX)" if chosen else
               f"the CPU has no native bfloat16 (capability {torch.backends.cpu.get_cpu_capability()}, "
               f"no avx512_bf16 / amx_bf16 flag): bfloat16 would be emulated")
    else:
        chosen, why = False, f"no bfloat16 rule for device type {device.type!r}"
    if verbose:
        print(f"precision auto: {'bf16' if chosen else 'fp32'} on {device} ({why})", flush=True)
    return torch.bfloat16 if chosen else None
