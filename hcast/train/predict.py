"""Prediction helpers: the best taxonomy paths of a batch, with names and probabilities.

What ``hcast predict`` prints, as library code: :func:`predict_paths` scores every path of
the taxonomy (the sum of its levels' log-probabilities,
:func:`hcast.hierarchy.decoding.path_log_probs`) and returns the best ``top_k``.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List

import torch

__all__ = ["predict_paths"]


def predict_paths(model: Any, images: Any, segments: Any, taxonomy: Any, top_k: int = 1) -> List[List[Dict[str, Any]]]:
    """The ``top_k`` best taxonomy paths of each image.

    Args:
        model: returns per-level logits, finest first (a flat classifier: one level).
        images: (B,3,H,W) normalised float.
        segments: (B,H,W) int64 superpixels, or ``None`` (the model computes them, or
            reads patches).
        taxonomy: the model's class tree.
        top_k: paths per image (at most the number of fine classes).

    Returns:
        per image, a list of ``top_k`` paths, each ``{"score": p(path), "levels": [{"level",
        "class_id", "name", "probability"}, ...]}`` (finest first; ``probability`` is the
        level's softmax probability of that class; ``score`` the product over levels).
    """
    from hcast.hierarchy.decoding import path_log_probs

    from hcast.train.loop import level_logits

    with torch.no_grad():
        logits = level_logits(model, images, segments)
    probs = [lg.float().softmax(-1).cpu() for lg in logits]
    scores = path_log_probs([lg.float() for lg in logits], taxonomy).cpu()
    paths = taxonomy.paths()
    results = []
    for b in range(images.shape[0]):
        best = scores[b].topk(min(top_k, scores.shape[1]))
        rows = []
        for score, fine in zip(best.values.tolist(), best.indices.tolist()):
            levels = []
            for level, class_id in enumerate(paths[fine].tolist()):
                names = taxonomy.names[level]
                levels.append({
                    "level": taxonomy.level_names[level],
                    "class_id": class_id,
                    "name": names[class_id] if names is not None else str(class_id),
                    "probability": float(probs[level][b, class_id]),
                })
            rows.append({"score": math.exp(score), "levels": levels})
        results.append(rows)
    return results
