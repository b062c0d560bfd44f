"""hcast's public surface: every public module declares ``__all__``, every name in it imports
and is documented, and importing the packages raises no DeprecationWarning (only the old
module paths kept for one release do)."""
from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys

import pytest

import hcast

# old module paths kept for one release; each warns when imported (tested where it moved)
DEPRECATED = {
    "hcast.convert",
    "hcast.engine",
    "hcast.hierarchy.datasets",
    "hcast.hierarchy.better_mistakes",
    "hcast.hierarchy.hier",
    "hcast.hierarchy.retrieval",
}


def _public_modules() -> list[str]:
    names = ["hcast"]
    for info in pkgutil.walk_packages(hcast.__path__, prefix="hcast."):
        if any(part.startswith("_") for part in info.name.split(".")) or info.name in DEPRECATED:
            continue
        names.append(info.name)
    return sorted(names)


PUBLIC_MODULES = _public_modules()


def test_the_walk_finds_every_layer():
    for package in ("hcast.models", "hcast.ops", "hcast.hierarchy", "hcast.data", "hcast.weights",
                    "hcast.metric_learning", "hcast.train", "hcast.train.recipes", "hcast.cli"):
        assert package in PUBLIC_MODULES


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_public_module_declares_all_and_documents_it(name):
    module = importlib.import_module(name)
    assert module.__doc__ and module.__doc__.strip(), f"{name} has no module docstring"
    exported = getattr(module, "__all__", None)
    assert exported, f"{name} has no __all__, or an empty one"
    assert len(set(exported)) == len(exported), f"{name}.__all__ lists a name twice"
    for attr in exported:
        assert hasattr(module, attr), f"{name}.__all__ names {attr!r}, which {name} does not define"
        obj = getattr(module, attr)
        if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismodule(obj) or callable(obj):
            doc = inspect.getdoc(obj)
            assert doc and doc.strip(), f"{name}.{attr} has no docstring"


# one fresh interpreter (an import warns only the first time): the packages import under
# -W error::DeprecationWarning, then each old path, imported on its own, warns
_IMPORT_CHECK = """
import importlib, sys, warnings
import hcast, hcast.hierarchy, hcast.hierarchy.losses, hcast.ops, hcast.models, hcast.data, hcast.weights
import hcast.metric_learning, hcast.train, hcast.cli
print("packages: clean")
for name in sys.argv[1:]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        importlib.import_module(name)
    deprecations = [w for w in caught if issubclass(w.category, DeprecationWarning)]
    print(name, "warned" if deprecations else "silent")
"""


def test_packages_import_without_deprecation_warnings_and_only_old_paths_warn():
    res = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-c", _IMPORT_CHECK, *sorted(DEPRECATED)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "packages: clean"
    assert lines[1:] == [f"{name} warned" for name in sorted(DEPRECATED)]
