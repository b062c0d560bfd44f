"""Deprecated alias of the module(s) that now hold the HIER regulariser and Poincare helpers:

  :mod:`hcast.metric_learning.hier`

Importing ``hcast.hierarchy.hier`` warns with ``DeprecationWarning``; the alias will be removed
in the next release. Import from ``hcast.metric_learning`` instead.
"""
from hcast._deprecation import alias_module

alias_module(
    globals(),
    [
        "hcast.metric_learning.hier",
    ],
    use_instead="hcast.metric_learning",
)
