"""Deprecated alias of :mod:`hcast.metric_learning.hier` (the HIER regulariser and Poincare helpers).

Importing ``hcast.hierarchy.hier`` warns with ``DeprecationWarning``; it will be removed in the
next release. Import from ``hcast.metric_learning`` (or the modules above) instead.
"""
import importlib as _importlib
import warnings as _warnings

_NEW = ('hcast.metric_learning.hier',)
_MODULES = [_importlib.import_module(_m) for _m in _NEW]
__all__ = [_n for _m in _MODULES for _n in getattr(_m, "__all__", [])]
globals().update({_n: getattr(_m, _n) for _m in _MODULES for _n in getattr(_m, "__all__", [])})


def __getattr__(name):  # private names of the old module keep resolving
    for m in _MODULES:
        if hasattr(m, name):
            return getattr(m, name)
    raise AttributeError(f"module 'hcast.hierarchy.hier' has no attribute {name!r}")


_warnings.warn(
    "hcast.hierarchy.hier is deprecated and will be removed in the next release; import from hcast.metric_learning instead.",
    DeprecationWarning,
    stacklevel=2,
)
