"""Numerical precision for inference: float32, or bfloat16 autocast where the hardware
computes it natively.

bfloat16 autocast runs the linear layers, attention and convolutions in bfloat16; what
must stay exact does not follow it: farthest point sampling runs in float64 with
autocast switched off (DGL's indices; :func:`hcast.ops.farthest_point_sampling`), the
superpixel means are taken in float32 (the model adds the float32 position embedding
before pooling), and losses take float32 logits (``.float()``). On a CPU without native
bfloat16 (AVX-512 BF16 or AMX) bfloat16 is emulated and usually slower than float32,
which is why ``'auto'`` picks float32 there.

Training adds float16 (with a ``GradScaler``): ``training=True`` accepts ``'fp16'`` and
lets ``'auto'`` fall back to it on a GPU without bfloat16. :func:`autocast` is the
context every hcast forward pass runs under.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import ContextManager, Optional, Tuple, Union

import torch

__all__ = ["PRECISIONS", "TRAINING_PRECISIONS", "autocast", "choose_precision", "cpu_features", "cpu_has_native_bf16",
           "describe_cpu", "resolve_precision"]

#: the values :func:`resolve_precision` accepts for inference
PRECISIONS = ("fp32", "bf16", "auto")
#: the values it accepts with ``training=True`` (float16 needs the loss scaling of a training loop)
TRAINING_PRECISIONS = ("fp32", "bf16", "fp16", "auto")

_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")

# The capability classes that decide CAST's speed on a CPU, and the /proc/cpuinfo flags that
# show them (any one of a tuple's flags is enough).
_CPU_FEATURES = {
    "AVX2": ("avx2",),
    "AVX-512": ("avx512f",),
    "AVX-512 BF16": ("avx512_bf16",),
    "AMX": ("amx_bf16", "amx_tile"),
    "VNNI": ("avx512_vnni", "avx_vnni"),
}


def _cpu_flags(cpuinfo: Union[str, Path]) -> set:
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set(text.split())


def cpu_features(cpuinfo: Union[str, Path] = "/proc/cpuinfo") -> dict:
    """Which of AVX2, AVX-512, AVX-512 BF16, AMX and VNNI this CPU has, from the flags of
    ``cpuinfo`` (Linux; every feature False where the file cannot be read).

    Returns:
        ``{"AVX2": bool, "AVX-512": bool, "AVX-512 BF16": bool, "AMX": bool, "VNNI": bool}``.
    """
    flags = _cpu_flags(cpuinfo)
    return {name: any(f in flags for f in names) for name, names in _CPU_FEATURES.items()}


def describe_cpu(cpuinfo: Union[str, Path] = "/proc/cpuinfo") -> str:
    """One line naming the CPU, torch's CPU capability and :func:`cpu_features`, e.g.
    ``'CPU: Intel Xeon ...; torch capability AVX512; AVX2 yes, AVX-512 yes, AVX-512 BF16
    yes, AMX no, VNNI yes'``: printed beside every speed figure."""
    model = "unknown CPU"
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    features = ", ".join(f"{name} {'yes' if has else 'no'}" for name, has in cpu_features(cpuinfo).items())
    return f"CPU: {model}; torch capability {torch.backends.cpu.get_cpu_capability()}; {features}"


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


def choose_precision(precision: str, device: Union[str, torch.device], training: bool = False
                     ) -> Tuple[Optional[torch.dtype], str]:
    """The one precision rule of hcast: the autocast dtype for ``precision`` on ``device``, and why.

    Args:
        precision: ``'fp32'``, ``'bf16'`` (even where it is emulated), ``'fp16'`` (only with
            ``training``: it needs a ``GradScaler``) or ``'auto'``: bfloat16 on CUDA (when the
            GPU supports it) and on CPUs with native bfloat16 (:func:`cpu_has_native_bf16`),
            float32 elsewhere; with ``training``, float16 on a GPU without bfloat16.
        device: where the model runs.
        training: the choice of a training run (:attr:`hcast.train.FinetuneConfig.precision`).

    Returns:
        ``(torch.bfloat16, torch.float16 or None for float32, reason)``.

    Raises:
        ValueError: an unknown ``precision``.
    """
    allowed = TRAINING_PRECISIONS if training else PRECISIONS
    if precision not in allowed:
        raise ValueError(f"precision must be one of {allowed}, got {precision!r}.")
    if precision == "fp32":
        return None, "fp32 was asked for"
    if precision == "bf16":
        return torch.bfloat16, "bf16 was asked for"
    if precision == "fp16":
        return torch.float16, "fp16 was asked for"
    device = torch.device(device)
    if device.type == "cuda":
        chosen = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        if not chosen and training and torch.cuda.is_available():
            return torch.float16, "the GPU lacks bfloat16: float16 with loss scaling"
        why = "the GPU supports bfloat16" if chosen else "the GPU lacks bfloat16"
    elif device.type == "cpu":
        chosen = cpu_has_native_bf16()
        why = ("the CPU has native bfloat16 (AVX-512 BF16 / AMX)" if chosen else
               f"the CPU has no native bfloat16 (capability {torch.backends.cpu.get_cpu_capability()}, "
               f"no avx512_bf16 / amx_bf16 flag): bfloat16 would be emulated")
    else:
        chosen, why = False, f"no bfloat16 rule for device type {device.type!r}"
    return (torch.bfloat16 if chosen else None), why


def resolve_precision(precision: str, device: Union[str, torch.device], verbose: bool = True,
                      training: bool = False) -> Optional[torch.dtype]:
    """The autocast dtype for ``precision`` on ``device``: ``None`` for float32
    (:func:`choose_precision`'s choice).

    Args:
        precision: ``'fp32'``, ``'bf16'``, ``'auto'``, and with ``training`` ``'fp16'``
            (see :func:`choose_precision`).
        device: where the model runs.
        verbose: print which precision ``'auto'`` chose, and why.
        training: the choice of a training run (float16 allowed).

    Returns:
        ``torch.bfloat16``, ``torch.float16`` or ``None``.

    Raises:
        ValueError: an unknown ``precision``.
    """
    dtype, why = choose_precision(precision, device, training=training)
    if verbose and precision == "auto":
        name = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
        print(f"precision auto: {name} on {torch.device(device)} ({why})", flush=True)
    return dtype


def autocast(device: Union[str, torch.device], dtype: Optional[torch.dtype]) -> ContextManager:
    """``torch.autocast`` on ``device``'s type with ``dtype`` (from :func:`resolve_precision`),
    or a context that does nothing for ``None`` (float32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)
