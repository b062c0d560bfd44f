"""One call to the fastest inference path for the device at hand.

:func:`optimize_for_inference` (named after ``torch.jit.optimize_for_inference``) returns a
copy of a model that takes ``(images, segments)`` like the model and returns what the model
returns in its output mode, built as the fastest path measured on hcast's CPUs
(docs/benchmarks.md):

* **Weights cast once.** Where bfloat16 is native (CPUs with AVX-512 BF16 or AMX, GPUs with
  bfloat16; :func:`hcast.precision.choose_precision`) the linear, convolution and
  attention weights are cast to bfloat16 once, and the images with them: no per-call
  autocast copies of the weights (autocast re-casts every weight on every call). The
  LayerNorm and BatchNorm parameters stay float32 on CPUs (PyTorch's CPU kernels take
  bfloat16 inputs with float32 parameters and normalise in float32), farthest point
  sampling stays float64 (:func:`hcast.ops.farthest_point_sampling`, DGL's indices),
  superpixels are computed on the float32 images and the outputs are returned as float32.
  Elsewhere the model runs in float32.
* **Attention.** PyTorch's default CPU SDPA kernel (flash attention) was the fastest
  measured for CAST's token counts at inference (the math backend: 52.5 vs 96 images/s,
  AMX, cast_small); with ``example_inputs`` the math backend is measured as well and kept
  where it is faster.
* **torch.compile** (inductor with frozen weights, ``torch._inductor.config.freezing``)
  only where it measurably pays: with ``example_inputs`` the compiled module is timed
  against eager on them and kept only when faster; without them, eager (compiling takes
  minutes on a small CPU and does not pay on every CPU).

Every fallback warns (:class:`OptimizationWarning`): a precision the device cannot run, a
bfloat16 module whose logits on ``example_inputs`` differ from float32's by more than
2e-2 (relative), a compile that fails.
"""
from __future__ import annotations

import contextlib
import copy
import time
import warnings
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from hcast import _validation as V
from hcast.precision import PRECISIONS, choose_precision

__all__ = ["InferenceModule", "OptimizationWarning", "benchmark_inference", "optimize_for_inference",
           "BF16_MAX_REL_DIFF"]

#: largest relative difference (Frobenius norm) of bfloat16 logits from float32 logits that
#: :func:`optimize_for_inference` accepts on ``example_inputs`` before it falls back to fp32
BF16_MAX_REL_DIFF = 2e-2

# Modules whose parameters stay float32 on CPUs: their CPU kernels take bfloat16 inputs with
# float32 parameters (mixed types) and normalise in float32.
_FP32_NORMS = (nn.LayerNorm, nn.BatchNorm2d, nn.GroupNorm)


class OptimizationWarning(UserWarning):
    """:func:`optimize_for_inference` took a slower or more precise path than asked."""


def _map_tensors(out: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(out, torch.Tensor):
        return fn(out)
    if isinstance(out, tuple):
        return tuple(_map_tensors(o, fn) for o in out)
    if isinstance(out, list):
        return [_map_tensors(o, fn) for o in out]
    if isinstance(out, dict):
        return {k: _map_tensors(v, fn) for k, v in out.items()}
    return out


def _to_float32(out: Any) -> Any:
    return _map_tensors(out, lambda t: t.float() if t.is_floating_point() and t.dtype != torch.float64 else t)


class InferenceModule(nn.Module):
    """What :func:`optimize_for_inference` returns: the copied model in its inference
    precision, behind the model's own call signature.

    ``forward(images, segments=None)``: images (B, 3, H, W) float32 (any float dtype),
    segments (B, H, W) int64 or None (CAST / H-CAST compute them from the float32 images,
    as the model would). Returns what the wrapped model returns (one tensor, or a tuple of
    per-level logits when an H-CAST model's per-level switch is on), float tensors as
    float32. ``forward_levels`` is offered where the model has it. Runs without autograd.

    Attributes:
        model: the copied, converted model (eval mode, no gradients).
        dtype: the compute dtype (``torch.bfloat16`` or ``torch.float32``).
        path: a short description of the chosen path (precision, attention, compile),
            what ``hcast benchmark`` prints.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype, sdpa_backend: Optional[Any] = None,
                 path: str = "") -> None:
        super().__init__()
        self.model = model
        self.dtype = dtype
        self.sdpa_backend = sdpa_backend
        self.path = path
        self._compiled: Optional[Callable[..., Any]] = None
        super().train(False)

    def _attention(self):
        if self.sdpa_backend is None:
            return contextlib.nullcontext()
        from torch.nn.attention import sdpa_kernel

        return sdpa_kernel([self.sdpa_backend])

    def _prepare(self, images: torch.Tensor, segments: Optional[torch.Tensor]):
        if segments is None and callable(getattr(self.model, "superpixels", None)):
            segments = self.model.superpixels(images)  # on the float32 images, as the model would
        if isinstance(images, torch.Tensor) and images.is_floating_point() and images.dtype != self.dtype:
            images = images.to(self.dtype)
        return images, segments

    def _call(self, fn: Callable[..., Any], images: torch.Tensor, segments: Optional[torch.Tensor]) -> Any:
        with torch.no_grad():
            images, segments = self._prepare(images, segments)
            with self._attention():
                out = fn(images) if segments is None else fn(images, segments)
        return _to_float32(out)

    def forward(self, images: torch.Tensor, segments: Optional[torch.Tensor] = None) -> Any:
        if self._compiled is None:
            return self._call(self.model, images, segments)
        import torch._inductor.config as inductor_config

        # Freezing (weights as constants, prepacked for oneDNN) applies when inductor
        # compiles, i.e. at the first call and at any recompilation.
        with inductor_config.patch(freezing=True):
            return self._call(self._compiled, images, segments)

    def forward_levels(self, images: torch.Tensor, segments: Optional[torch.Tensor] = None) -> Any:
        """The wrapped model's ``forward_levels`` (per-level logits, finest first) in the
        optimized precision (eager; AttributeError where the model has none)."""
        if not hasattr(self.model, "forward_levels"):
            raise AttributeError(f"{type(self.model).__name__} has no forward_levels.")
        return self._call(self.model.forward_levels, images, segments)

    def train(self, mode: bool = True) -> "InferenceModule":
        if mode:
            raise RuntimeError("an optimize_for_inference module is for inference only; train the original model.")
        return super().train(False)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            # The model's own attributes and switches (num_classes, pretrained_cfg,
            # set_level_outputs, ...) through the wrapper.
            model = self.__dict__.get("_modules", {}).get("model")
            if model is None:
                raise
            return getattr(model, name)


def _convert(model: nn.Module, dtype: torch.dtype, device: torch.device) -> nn.Module:
    if dtype == torch.float32:
        return model
    model = model.to(dtype)
    if device.type == "cpu":
        for module in model.modules():
            if isinstance(module, _FP32_NORMS):
                module.float()
    return model


def _rel_diff(out: Any, ref: Any) -> float:
    outs = out if isinstance(out, (tuple, list)) else (out,)
    refs = ref if isinstance(ref, (tuple, list)) else (ref,)
    worst = 0.0
    for o, r in zip(outs, refs):
        if isinstance(o, torch.Tensor) and o.is_floating_point():
            r = r.double()
            worst = max(worst, float((o.double() - r).norm() / r.norm().clamp(min=1e-12)))
    return worst


def _time(fn: Callable[[], Any], repeats: int = 3) -> float:
    """Best wall time of ``repeats`` calls after one warm-up, in seconds."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _example_args(example_inputs: Any) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    if isinstance(example_inputs, torch.Tensor):
        return example_inputs, None
    if isinstance(example_inputs, (tuple, list)) and 1 <= len(example_inputs) <= 2 and all(
            x is None or isinstance(x, torch.Tensor) for x in example_inputs):
        images = example_inputs[0]
        segments = example_inputs[1] if len(example_inputs) == 2 else None
        if isinstance(images, torch.Tensor):
            return images, segments
    raise TypeError("example_inputs must be an images tensor (B, 3, H, W) or a tuple (images, segments), got "
                    f"{type(example_inputs).__name__}.")


def optimize_for_inference(model: nn.Module, precision: str = "auto",
                           example_inputs: Optional[Union[torch.Tensor, Sequence[Optional[torch.Tensor]]]] = None,
                           *, compile: Optional[bool] = None, verbose: bool = False) -> InferenceModule:
    """The fastest inference path of ``model`` on the device its parameters are on.

    Named after ``torch.jit.optimize_for_inference``. ``model`` is left unchanged: the
    returned module holds a deep copy, in eval mode, without gradients.

    Args:
        model: a CAST / H-CAST / Hier-ViT model (any module taking ``(images[, segments])``
            works). Its output mode is kept: an H-CAST model whose per-level switch is on
            returns the per-level tuple through the optimized module too.
        precision: ``'auto'`` (bfloat16 where the device computes it natively, float32
            elsewhere; :func:`hcast.precision.choose_precision`), ``'bf16'`` or ``'fp32'``.
        example_inputs: an images tensor or ``(images, segments)`` of the kind the module
            will see. With them the choices are measured: the bfloat16 logits are checked
            against float32 (relative difference <= :data:`BF16_MAX_REL_DIFF`, else a
            warning and float32), the math SDPA backend is timed against the default one,
            and (``compile=None``) the inductor-compiled module against eager; the fastest
            is kept. Without them: the default SDPA kernel, eager.
        compile: True: always compile (inductor, frozen weights); False: never; None
            (default): only where measured faster on ``example_inputs``.
        verbose: print the chosen path and the measurements.

    Returns:
        :class:`InferenceModule`: ``module(images, segments=None)`` as the model, outputs
        float32; ``module.path`` names the chosen path.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, or ``example_inputs`` is neither a
            tensor nor an (images, segments) tuple.
        ValueError: an unknown ``precision``.

    Warns:
        OptimizationWarning: whenever a fallback is taken (bfloat16 asked for on a device
            without it: float32; bfloat16 logits too far from float32's on
            ``example_inputs``: float32; compiling fails: eager).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype, why = choose_precision(precision, device)
    if dtype is not None and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        warnings.warn(f"precision {precision!r}: the GPU has no bfloat16; falling back to fp32.",
                      OptimizationWarning, stacklevel=2)
        dtype, why = None, "the GPU lacks bfloat16"
    elif precision == "bf16" and device.type == "cpu":
        from hcast.precision import cpu_has_native_bf16

        if not cpu_has_native_bf16():
            warnings.warn("precision 'bf16' on a CPU without native bfloat16 (no AVX-512 BF16 / AMX): it is "
                          "emulated and usually slower than fp32; precision='auto' picks fp32 here.",
                          OptimizationWarning, stacklevel=2)
    dtype = dtype or torch.float32
    base = copy.deepcopy(model).eval().requires_grad_(False)
    example = _example_args(example_inputs) if example_inputs is not None else None

    reference = None
    if example is not None and dtype != torch.float32:
        fp32 = InferenceModule(base, torch.float32)
        reference = fp32(*example)
    module = InferenceModule(_convert(copy.deepcopy(base) if reference is not None else base, dtype, device), dtype)
    notes = [f"{'bf16' if dtype == torch.bfloat16 else 'fp32'} ({why})"]
    if reference is not None:
        diff = _rel_diff(module(*example), reference)
        notes.append(f"bf16 vs fp32 relative difference {diff:.2e}")
        if not diff <= BF16_MAX_REL_DIFF:
            warnings.warn(f"bfloat16 logits differ from float32's by {diff:.3g} (relative) on example_inputs, "
                          f"more than {BF16_MAX_REL_DIFF}; falling back to fp32.", OptimizationWarning, stacklevel=2)
            dtype = torch.float32
            module = InferenceModule(base, dtype)
            notes = [f"fp32 (bf16 was {diff:.3g} from fp32)"]
    if example is not None:
        from torch.nn.attention import SDPBackend

        default_s = _time(lambda: module(*example))
        module.sdpa_backend = SDPBackend.MATH
        math_s = _time(lambda: module(*example))
        if math_s < default_s:
            notes.append(f"math SDPA ({math_s:.3f} s vs {default_s:.3f} s per batch)")
        else:
            module.sdpa_backend = None
            notes.append(f"default SDPA ({default_s:.3f} s vs math {math_s:.3f} s per batch)")
        eager_s = min(default_s, math_s)
    if compile or (compile is None and example is not None):
        try:
            module._compiled = torch.compile(module.model)
            if example is not None:
                compiled_s = _time(lambda: module(*example))
        except Exception as error:  # noqa: BLE001 - any backend failure means: stay eager
            module._compiled = None
            warnings.warn(f"torch.compile failed ({type(error).__name__}: {error}); falling back to eager.",
                          OptimizationWarning, stacklevel=2)
        else:
            if example is not None and compile is None and not compiled_s < eager_s:
                module._compiled = None
                notes.append(f"eager (compiled {compiled_s:.3f} s vs eager {eager_s:.3f} s per batch)")
            else:
                notes.append("inductor, frozen weights" + (f" ({compiled_s:.3f} s vs eager {eager_s:.3f} s)"
                                                          if example is not None else ""))
    module.path = "; ".join(notes)
    if verbose:
        print(f"optimize_for_inference: {module.path}", flush=True)
    return module


def benchmark_inference(model: nn.Module, images: torch.Tensor, segments: Optional[torch.Tensor] = None, *,
                        repeats: int = 3, compile: bool = False) -> list:
    """Images/s of each inference path of ``model`` on ``images``, and its agreement with
    float32 eager: what ``hcast benchmark`` prints.

    Paths: ``fp32 eager`` (the model as it is, under ``torch.no_grad``), ``bf16 autocast
    eager`` (bfloat16 autocast around the float32 model: weights re-cast on every call),
    ``optimize_for_inference(auto)`` (eager) and, where ``auto`` picked float32 here,
    ``optimize_for_inference(bf16)`` as well; with ``compile``, the same with inductor and
    frozen weights (compiling takes minutes on a small CPU). The paths are timed round-robin
    (``repeats`` rounds after one warm-up call each; the best round counts), so background
    load hits them alike.

    Args:
        model: the model (left unchanged).
        images (Tensor[B, 3, H, W], float32): normalised images.
        segments (Tensor[B, H, W], int64 or None): superpixels computed beforehand, as a
            data loader would (None: a patch model, or let the model compute them inside
            the timed call).
        repeats: timed rounds, >= 1.
        compile: add the compiled paths.

    Returns:
        list of dicts ``{"path", "images_per_s", "top1_agreement", "max_rel_diff",
        "detail"}``: top-1 agreement (fraction of images, finest output) and the largest
        relative difference (Frobenius norm, any output) with float32 eager.

    Raises:
        TypeError: ``repeats`` not an int.
        ValueError: ``repeats`` < 1.
    """
    repeats = V.check_int("repeats", repeats, 1)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    fp32 = InferenceModule(copy.deepcopy(model).eval().requires_grad_(False), torch.float32, path="fp32 eager")

    def autocast_path(images, segments=None):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return fp32(images, segments)

    paths: Dict[str, Tuple[Callable[..., Any], str]] = {
        "fp32 eager": (fp32, "the model as it is"),
        "bf16 autocast eager": (autocast_path, "weights re-cast on every call"),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizationWarning)  # bf16 on purpose below
        auto = optimize_for_inference(model, "auto", compile=False)
        paths["optimize_for_inference(auto)"] = (auto, auto.path)
        if auto.dtype != torch.bfloat16:
            forced = optimize_for_inference(model, "bf16", compile=False)
            paths["optimize_for_inference(bf16)"] = (forced, forced.path)
        if compile:
            for name in [n for n in paths if n.startswith("optimize_for_inference")]:
                precision = "bf16" if paths[name][0].dtype == torch.bfloat16 else "fp32"
                compiled = optimize_for_inference(model, precision, compile=True)
                paths[name.replace(")", ", compiled)")] = (compiled, compiled.path)
    outputs = {}
    best = {name: float("inf") for name in paths}
    for round_ in range(repeats + 1):  # round 0: warm-up (and compilation)
        for name, (fn, _) in paths.items():
            start = time.perf_counter()
            out = fn(images, segments)
            elapsed = time.perf_counter() - start
            if round_ == 0:
                outputs[name] = out
            else:
                best[name] = min(best[name], elapsed)
    ref = _map_tensors(outputs["fp32 eager"], lambda t: t.float())
    ref_first = ref[0] if isinstance(ref, (tuple, list)) else ref
    rows = []
    for name, (_, detail) in paths.items():
        out = outputs[name]
        first = (out[0] if isinstance(out, (tuple, list)) else out).float()
        agreement = float((first.argmax(-1) == ref_first.argmax(-1)).float().mean()) if first.ndim >= 2 else 1.0
        rows.append(dict(path=name, images_per_s=images.shape[0] / best[name], top1_agreement=agreement,
                         max_rel_diff=_rel_diff(_map_tensors(out, lambda t: t.float()), ref), detail=detail))
    return rows
