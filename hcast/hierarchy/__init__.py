"""Taxonomies, hierarchical losses, metrics and consistent decoding."""
