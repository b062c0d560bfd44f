"""The public surface of hcast.ops: every exported name imports and is documented, and
the backends never import the public modules back (issue 11, section 3)."""
import ast
import importlib
import inspect
from pathlib import Path

import pytest

import hcast.ops

OPS_DIR = Path(hcast.ops.__file__).parent
MODULES = sorted(f"hcast.ops.{p.stem}" for p in OPS_DIR.glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("module_name", ["hcast.ops"] + MODULES)
def test_every_module_exports_documented_names(module_name):
    module = importlib.import_module(module_name)
    assert isinstance(module.__all__, list) and module.__all__, f"{module_name} has no __all__"
    for name in module.__all__:
        obj = getattr(module, name)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            assert inspect.getdoc(obj), f"{module_name}.{name} has no docstring"


def test_package_exports_the_public_ops():
    for name in ("superpixels", "torch_slic", "enforce_connectivity", "max_superpixels",
                 "explained_variation", "SuperpixelTransform", "superpixel_pool",
                 "resize_segments", "farthest_point_sampling", "hierarchical_segmentation"):
        assert name in hcast.ops.__all__
    public = {n for n, o in vars(hcast.ops).items()
              if not n.startswith("_") and (inspect.isfunction(o) or inspect.isclass(o))}
    assert public <= set(hcast.ops.__all__)


def test_triton_backend_imports_no_public_op_module():
    """The public functions choose the backend; the Triton launchers never call back
    into them (as torchvision's ops and their kernels)."""
    tree = ast.parse((OPS_DIR / "_triton.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
            imported.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
    assert not {m for m in imported if m.startswith("hcast")}, imported
