"""Deprecated alias of the module(s) that now hold the taxonomy builders:

  :mod:`hcast.hierarchy.taxonomies`

Importing ``hcast.hierarchy.datasets`` warns with ``DeprecationWarning``; the alias will be removed
in the next release. Import from ``hcast.hierarchy.taxonomies`` instead.
"""
from hcast._deprecation import alias_module

alias_module(
    globals(),
    [
        "hcast.hierarchy.taxonomies",
    ],
    use_instead="hcast.hierarchy.taxonomies (or hcast.hierarchy)",
)
