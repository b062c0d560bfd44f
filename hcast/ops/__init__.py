"""Tensor ops for superpixel transformers: superpixels, superpixel pooling,
farthest point sampling and hierarchical segmentation."""
