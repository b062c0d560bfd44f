"""Deprecated alias of the modules that now hold the training and evaluation engine:

  :mod:`hcast.train` (:mod:`hcast.train.loop`, :mod:`hcast.train.evaluation`,
  :mod:`hcast.train.distributed`, :mod:`hcast.train.outputs`) and, for checkpoints,
  :mod:`hcast.weights.folder`

Importing ``hcast.engine`` warns with ``DeprecationWarning``; the alias will be removed in the
next release. Import from ``hcast.train`` instead.
"""
from hcast._deprecation import alias_module

alias_module(
    globals(),
    [
        "hcast.train",
        "hcast.train.loop",
        "hcast.train.distributed",
        "hcast.weights.folder",
    ],
    use_instead="hcast.train",
)
