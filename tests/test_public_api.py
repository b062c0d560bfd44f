"""hcast's public surface: every public module declares ``__all__``, every name in it imports
and is documented, and importing the packages raises no DeprecationWarning."""
from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys

import pytest

import hcast

def _public_modules() -> list[str]:
    names = ["hcast"]
    for info in pkgutil.walk_packages(hcast.__path__, prefix="hcast."):
        if any(part.startswith("_") for part in info.name.split(".")):
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


# a fresh interpreter: the packages import under -W error::DeprecationWarning
_IMPORT_CHECK = """
import hcast, hcast.hierarchy, hcast.hierarchy.losses, hcast.ops, hcast.models, hcast.data, hcast.weights
import hcast.metric_learning, hcast.train, hcast.cli
print("packages: clean")
"""


def test_packages_import_without_deprecation_warnings():
    res = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-c", _IMPORT_CHECK],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["packages: clean"]
