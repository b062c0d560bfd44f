"""Deprecated alias of the module(s) that now hold the Making Better Mistakes losses:

  :mod:`hcast.hierarchy.losses.hierarchical_cross_entropy`
  :mod:`hcast.hierarchy.losses.soft_labels`
  :mod:`hcast.hierarchy.losses.level_weighted`

Importing ``hcast.hierarchy.better_mistakes`` warns with ``DeprecationWarning``; the alias will be removed
in the next release. Import from ``hcast.hierarchy.losses`` instead.
"""
from hcast._deprecation import alias_module

alias_module(
    globals(),
    [
        "hcast.hierarchy.losses.hierarchical_cross_entropy",
        "hcast.hierarchy.losses.soft_labels",
        "hcast.hierarchy.losses.level_weighted",
        "hcast.hierarchy.losses._common",
    ],
    use_instead="hcast.hierarchy.losses",
)
