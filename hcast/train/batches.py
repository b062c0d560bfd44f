"""What every hcast training and evaluation loop does with a batch before the model sees it.

* :func:`unpack_batch`: a loader's batch -> ``(images, segments, targets)`` on the device,
  superpixels computed there when the loader brings none;
* :func:`progress_bar`: a tqdm bar over a loader, only where someone watches (stderr a
  terminal).

Used by :func:`hcast.train.train_one_epoch`, :func:`hcast.train.evaluate` and the
segmentation task (:mod:`hcast.train.tasks`); public for loops of your own.
"""
from __future__ import annotations

import sys
from typing import Any, Callable, Iterable, Optional, Tuple

import torch

__all__ = ["progress_bar", "unpack_batch"]

#: (B, 3, H, W) float images -> (B, H, W) int64 superpixel ids, e.g. ``hcast.ops.superpixels``
SuperpixelFn = Callable[[torch.Tensor], torch.Tensor]


def unpack_batch(batch: Any, device: torch.device, superpixel_fn: Optional[SuperpixelFn] = None
                 ) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """A batch on ``device`` as ``(images, segments, targets)``.

    Args:
        batch: ``((images (B,3,H,W) float, segments (B,H,W) int64), targets)`` or
            ``(images, targets)``; targets are (B,) int64 fine labels (classification) or
            (B, H, W) int64 label maps (segmentation), anything ``torch.as_tensor`` takes.
        device: where the model lives (copies are non-blocking).
        superpixel_fn: computes the segments on ``device`` when the batch has none;
            ``None``: segments stay ``None`` (the model computes its own, or reads patches).

    Returns:
        ``(images, segments or None, targets)``, all on ``device``.
    """
    inputs, targets = batch
    if isinstance(inputs, (list, tuple)):
        images, segments = inputs
        segments = segments.to(device, non_blocking=True)
    else:
        images, segments = inputs, None
    images = images.to(device, non_blocking=True)
    targets = torch.as_tensor(targets).to(device, non_blocking=True)
    if segments is None and superpixel_fn is not None:
        segments = superpixel_fn(images)
    return images, segments, targets


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, OSError, ValueError):  # no isatty, a closed file, a bad descriptor
        return False


def progress_bar(iterable: Iterable, enabled: bool, total: Optional[int], desc: str) -> Iterable:
    """``iterable`` inside a tqdm bar when ``enabled`` and stderr is a terminal, else
    ``iterable`` itself (log files and CI get the loops' own lines instead; no bar either
    without a stderr: ``2>&-``, or launchers that set ``sys.stderr`` to ``None``). Callers
    check ``hasattr(bar, "set_postfix")`` before updating it."""
    stream = sys.stderr
    if not enabled or stream is None or not _isatty(stream):
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, dynamic_ncols=True, leave=False, mininterval=1.0)
