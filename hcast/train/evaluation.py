"""Level-aware evaluation: per-level accuracy, FPA, TICE, mistake severity, under DDP too.

:func:`evaluate` gathers counts in torchmetrics states (summed over processes), for
per-level argmax and for consistent (taxonomy-path) decoding, as the H-CAST authors'
``deit/engine_hier_eval.py`` (github:ngocquanai/HiOT at b1a222b) reports them;
:func:`format_metrics_table` prints the result.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, Optional

import torch
import torch.distributed as dist
import torch.nn as nn

from hcast.hierarchy import Taxonomy
from hcast.precision import autocast
from hcast.train.batches import SuperpixelFn, progress_bar, unpack_batch
from timm.utils import unwrap_model
from hcast.train.loop import level_logits, level_targets

__all__ = ["evaluate", "format_metrics_table"]

@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    taxonomy: Taxonomy,
    device: torch.device,
    superpixel_fn: Optional[SuperpixelFn] = None,
    amp_dtype: Optional[torch.dtype] = None,
    max_steps: Optional[int] = None,
    progress: bool = False,
) -> Dict[str, Any]:
    """Hierarchical metrics of ``model`` on ``loader``, plain and consistent decoding.

    Counts are kept in :class:`hcast.hierarchy.metrics.HierarchicalMetrics` (torchmetrics,
    summed over processes under DDP), so with a :class:`ShardSampler` the result equals
    a single-process run exactly.

    Args:
        model: per-level logits, finest first (a DDP wrapper is unwrapped: evaluation
            needs no gradient sync, and shards may differ in length).
        loader: as for :func:`train_one_epoch`.
        taxonomy: the class tree the model's levels follow.
        device: where the model lives.
        superpixel_fn: device superpixels when the loader has none.
        amp_dtype: autocast dtype or ``None``.
        max_steps: stop after this many batches.
        progress: show a tqdm bar.

    Returns:
        ``{"num_samples": N, "level_names": [...], "plain": {...}, "consistent": {...}}``;
        ``plain`` decodes each level by argmax, ``consistent`` takes the taxonomy path
        with the highest summed log-probability
        (:func:`hcast.hierarchy.decoding.consistent_decode`). Each holds
        ``level_accuracy`` (list of floats in [0,1], finest first), ``fpa``, ``tice``,
        ``mistake_severity`` (mean LCA height of fine-level mistakes, 0 without
        mistakes), ``hdist@1``, ``hprecision``, ``hrecall``, ``hf1``.

    Raises:
        ValueError: when the model's number of levels differs from the taxonomy's.
    """
    import warnings

    from hcast.hierarchy.decoding import argmax_decode, consistent_decode
    from hcast.hierarchy.metrics import HierarchicalMetrics

    net = unwrap_model(model)
    was_training = net.training
    net.eval()
    paths = taxonomy.paths().to(device)
    metrics = {key: HierarchicalMetrics(taxonomy).to(device) for key in ("plain", "consistent")}
    total = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
    if max_steps is not None and total is not None:
        total = min(total, max_steps)
    steps = 0
    for batch in progress_bar(loader, progress, total, "evaluate"):
        if max_steps is not None and steps >= max_steps:
            break
        if batch is None:  # every image of the batch was unreadable (hcast.data.collate_readable)
            continue
        images, segments, fine = unpack_batch(batch, device, superpixel_fn)
        with autocast(device, amp_dtype):
            logits = [lg.float() for lg in level_logits(net, images, segments)]
        if len(logits) != taxonomy.num_levels:
            raise ValueError(
                f"model: returned {len(logits)} levels of logits but the taxonomy has {taxonomy.num_levels} "
                "levels; evaluate with the taxonomy the model was trained on."
            )
        targets = level_targets(fine, paths)
        metrics["plain"].update(argmax_decode(logits), targets)
        metrics["consistent"].update(consistent_decode(logits, taxonomy), targets)
        steps += 1
    net.train(was_training)
    result: Dict[str, Any] = {"level_names": list(taxonomy.level_names)}
    with warnings.catch_warnings():
        # a rank whose shard is empty computes zeros before the sum over ranks: expected
        warnings.filterwarnings("ignore", message=".*compute.*before.*update.*")
        for key, metric in metrics.items():
            values = {k: float(v) for k, v in metric.compute().items()}
            result["num_samples"] = int(metric.total.item()) if not dist.is_initialized() else _synced_total(metric)
            result[key] = {
                "level_accuracy": [values.pop(f"{name}_acc@1") for name in taxonomy.level_names],
                **values,
            }
    return result


def _synced_total(metric: Any) -> int:
    total = metric.total.detach().clone().to(metric.device)
    dist.all_reduce(total)
    return int(total.item())


def format_metrics_table(metrics: Dict[str, Any]) -> str:
    """A plain-text table of :func:`evaluate`'s result: one row per decoding.

    Columns: accuracy per level (finest first, named by the taxonomy's level names),
    FPA, TICE (percent) and mistake severity (mean LCA height of fine mistakes).
    """
    names = metrics.get("level_names") or [f"level {i}" for i in range(len(metrics["plain"]["level_accuracy"]))]
    header = ["decoding"] + [f"acc {n}" for n in names] + ["FPA", "TICE", "mistake sev."]
    rows = []
    for key in ("plain", "consistent"):
        m = metrics[key]
        rows.append(
            [key]
            + [f"{100 * a:.2f}" for a in m["level_accuracy"]]
            + [f"{100 * m['fpa']:.2f}", f"{100 * m['tice']:.2f}", f"{m['mistake_severity']:.3f}"]
        )
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    lines = [fmt(header), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows]
    lines.append(f"({metrics['num_samples']} images; accuracy, FPA and TICE in %)")
    return "\n".join(lines)

