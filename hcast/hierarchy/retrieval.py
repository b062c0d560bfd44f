"""Deprecated alias of the module(s) that now hold Recall@K:

  :mod:`hcast.metric_learning.retrieval`

Importing ``hcast.hierarchy.retrieval`` warns with ``DeprecationWarning``; the alias will be removed
in the next release. Import from ``hcast.metric_learning`` instead.
"""
from hcast._deprecation import alias_module

alias_module(
    globals(),
    [
        "hcast.metric_learning.retrieval",
    ],
    use_instead="hcast.metric_learning",
)
