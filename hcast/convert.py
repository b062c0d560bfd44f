"""Deprecated: moved to :mod:`hcast.weights` (removed in the next release).

``from hcast.convert import convert_checkpoint, guess_model_name`` still works for one
release, with a ``DeprecationWarning``; import them from :mod:`hcast.weights`.
"""
import warnings

from hcast.weights.folder import convert_checkpoint
from hcast.weights.original import guess_model_name

__all__ = ["convert_checkpoint", "guess_model_name"]

warnings.warn(
    "hcast.convert is deprecated and will be removed in the next release: import convert_checkpoint and "
    "guess_model_name from hcast.weights.",
    DeprecationWarning,
    stacklevel=2,
)
