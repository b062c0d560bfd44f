"""Datasets and transforms that carry superpixels and per-level targets."""
