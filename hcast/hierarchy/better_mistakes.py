"""Deprecated alias of :mod:`hcast.hierarchy.losses.hierarchical_cross_entropy`, :mod:`hcast.hierarchy.losses.soft_labels`, :mod:`hcast.hierarchy.losses.level_weighted` (the Making Better Mistakes losses).

Importing ``hcast.hierarchy.better_mistakes`` warns with ``DeprecationWarning``; it will be removed in the
next release. Import from ``hcast.hierarchy.losses`` (or the modules above) instead.
"""
import importlib as _importlib
import warnings as _warnings

_NEW = ('hcast.hierarchy.losses.hierarchical_cross_entropy', 'hcast.hierarchy.losses.soft_labels', 'hcast.hierarchy.losses.level_weighted', 'hcast.hierarchy.losses._common')
_MODULES = [_importlib.import_module(_m) for _m in _NEW]
__all__ = [_n for _m in _MODULES for _n in getattr(_m, "__all__", [])]
globals().update({_n: getattr(_m, _n) for _m in _MODULES for _n in getattr(_m, "__all__", [])})


def __getattr__(name):  # private names of the old module keep resolving
    for m in _MODULES:
        if hasattr(m, name):
            return getattr(m, name)
    raise AttributeError(f"module 'hcast.hierarchy.better_mistakes' has no attribute {name!r}")


_warnings.warn(
    "hcast.hierarchy.better_mistakes is deprecated and will be removed in the next release; import from hcast.hierarchy.losses instead.",
    DeprecationWarning,
    stacklevel=2,
)
