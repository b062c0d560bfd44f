"""Deprecated alias of :mod:`hcast.hierarchy.taxonomies` (the taxonomy builders).

Importing ``hcast.hierarchy.datasets`` warns with ``DeprecationWarning``; it will be removed in the
next release. Import from ``hcast.hierarchy`` (or the modules above) instead.
"""
import importlib as _importlib
import warnings as _warnings

_NEW = ('hcast.hierarchy.taxonomies',)
_MODULES = [_importlib.import_module(_m) for _m in _NEW]
__all__ = [_n for _m in _MODULES for _n in getattr(_m, "__all__", [])]
globals().update({_n: getattr(_m, _n) for _m in _MODULES for _n in getattr(_m, "__all__", [])})


def __getattr__(name):  # private names of the old module keep resolving
    for m in _MODULES:
        if hasattr(m, name):
            return getattr(m, name)
    raise AttributeError(f"module 'hcast.hierarchy.datasets' has no attribute {name!r}")


_warnings.warn(
    "hcast.hierarchy.datasets is deprecated and will be removed in the next release; import from hcast.hierarchy instead.",
    DeprecationWarning,
    stacklevel=2,
)
