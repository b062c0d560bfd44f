"""Tensor ops for superpixel transformers: superpixels, superpixel pooling,
farthest point sampling and hierarchical segmentation."""

from hcast.ops.superpixel_pool import superpixel_pool  # noqa: E402
from hcast.ops.farthest_point_sampling import farthest_point_sampling  # noqa: E402
from hcast.ops.hierarchical_segmentation import hierarchical_segmentation  # noqa: E402
from hcast.ops.superpixels import SuperpixelTransform, explained_variation, superpixels, torch_slic  # noqa: E402
