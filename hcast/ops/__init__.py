"""Tensor ops for superpixel transformers: superpixels, superpixel pooling,
farthest point sampling and hierarchical segmentation."""

from hcast.ops.farthest_point_sampling import farthest_point_sampling
from hcast.ops.hierarchical_segmentation import hierarchical_segmentation
from hcast.ops.superpixel_pool import resize_segments, superpixel_pool
from hcast.ops.upsampled_superpixel_pool import upsampled_superpixel_pool
from hcast.ops.superpixels import (
    SuperpixelTransform,
    enforce_connectivity,
    explained_variation,
    max_superpixels,
    superpixels,
    torch_slic,
)

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
