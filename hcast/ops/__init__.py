"""Tensor ops for superpixel transformers: superpixels, superpixel pooling,
farthest point sampling and hierarchical segmentation.

One concept per module: :mod:`~hcast.ops.superpixels` (SEEDS, scikit-image SLIC and the
one call over all methods), :mod:`~hcast.ops.torch_slic` (batched SLIC in torch),
:mod:`~hcast.ops.connectivity` (4-connected ids), :mod:`~hcast.ops.superpixel_metrics`
(explained variation), :mod:`~hcast.ops.superpixel_pool`,
:mod:`~hcast.ops.upsampled_superpixel_pool`, :mod:`~hcast.ops.farthest_point_sampling`,
:mod:`~hcast.ops.hierarchical_segmentation` and :mod:`~hcast.ops.segmentation_metrics`
(IoU, mIoU)."""

from hcast.ops.connectivity import enforce_connectivity
from hcast.ops.farthest_point_sampling import farthest_point_sampling
from hcast.ops.hierarchical_segmentation import hierarchical_segmentation
from hcast.ops.superpixel_metrics import explained_variation
from hcast.ops.superpixel_pool import resize_segments, superpixel_pool
from hcast.ops.superpixels import SuperpixelTransform, max_superpixels, superpixels
from hcast.ops.torch_slic import torch_slic
from hcast.ops.upsampled_superpixel_pool import upsampled_superpixel_pool

__all__ = [
    "superpixels",
    "torch_slic",
    "enforce_connectivity",
    "max_superpixels",
    "explained_variation",
    "SuperpixelTransform",
    "superpixel_pool",
    "resize_segments",
    "upsampled_superpixel_pool",
    "farthest_point_sampling",
    "hierarchical_segmentation",
]
