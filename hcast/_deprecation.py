"""Deprecated module aliases: an old import path that keeps working for one release.

A module that moved is replaced by a short alias module that calls
:func:`alias_module`: its names (public and private) resolve to the objects of the
new modules, and importing it warns with ``DeprecationWarning`` attributed to the
line that imported it (so Python's default filters show it in ``__main__`` and
pytest shows it in tests).
"""
from __future__ import annotations

import importlib
import warnings
from collections.abc import Sequence
from typing import Any

__all__ = ["alias_module"]


def alias_module(module_globals: dict[str, Any], new_modules: Sequence[str], use_instead: str) -> None:
    """Make the calling module an alias of ``new_modules`` and warn that it is deprecated.

    Args:
        module_globals: the alias module's ``globals()``.
        new_modules: the modules that now hold its names; the first one holding a
            name wins.
        use_instead: the import path to recommend (e.g. ``"hcast.hierarchy.losses"``).
    """
    old = module_globals["__name__"]
    modules = [importlib.import_module(m) for m in new_modules]
    public = [n for m in modules for n in getattr(m, "__all__", [])]
    module_globals.update({n: getattr(m, n) for m in reversed(modules) for n in getattr(m, "__all__", [])})
    module_globals["__all__"] = public

    def __getattr__(name: str) -> Any:  # private names of the old module keep resolving
        for m in modules:
            if hasattr(m, name):
                return getattr(m, name)
        raise AttributeError(f"module {old!r} has no attribute {name!r}")

    module_globals["__getattr__"] = __getattr__
    warnings.warn(
        f"{old} is deprecated and will be removed in the next release; import from {use_instead} instead.",
        DeprecationWarning,
        # 1 is this function, 2 the alias module, 3 the line importing it (warnings skips importlib's frames)
        stacklevel=3,
    )
