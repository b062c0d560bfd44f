"""docs/architecture.md's rules that a machine can check (the import layering is
tests/test_layering.py).

* Every file hcast writes goes through ``hcast._io.atomic_write``: each call that writes a
  file (``open`` for writing, ``Path.write_text`` / ``write_bytes``, ``torch.save``,
  ``savefig``, ``np.save``, ``json.dump``) sits inside a ``with atomic_write(...)`` block
  (or a writer that uses one: ``save_state``, ``write_json``), checked on the source.
* ``import hcast`` imports none of the heavy optional libraries (they load where used).
"""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1] / "hcast"
WRITE_METHODS = {"write_text", "write_bytes", "savefig", "save", "dump", "to_csv", "tofile"}
WRITE_MODES = set("wax+")


def _is_write(call: ast.Call) -> bool:
    func = call.func
    if isinstance(func, ast.Name) and func.id == "open":
        mode = call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg == "mode"), None)
        return isinstance(mode, ast.Constant) and isinstance(mode.value, str) and bool(WRITE_MODES & set(mode.value))
    if isinstance(func, ast.Attribute) and func.attr in WRITE_METHODS:
        owner = ast.unparse(func.value)
        if func.attr == "save" and owner not in ("torch", "np", "numpy"):
            return False  # e.g. an image's own .save handled below, a Taxonomy.save call
        if func.attr == "dump" and owner != "json":
            return False
        return True
    return False


def _unguarded_writes(path: Path) -> list:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []

    def visit(node: ast.AST, guarded: bool) -> None:
        if isinstance(node, (ast.With, ast.AsyncWith)):
            guarded = guarded or any("atomic_write" in ast.unparse(item.context_expr) for item in node.items)
        if isinstance(node, ast.Call) and _is_write(node) and not guarded:
            found.append(f"{path.relative_to(ROOT.parent)}:{node.lineno}: {ast.unparse(node)[:80]}")
        for child in ast.iter_child_nodes(node):
            visit(child, guarded)

    visit(tree, False)
    return found


def test_every_file_write_goes_through_atomic_write():
    offenders = [w for path in sorted(ROOT.rglob("*.py")) if path.name != "_io.py" for w in _unguarded_writes(path)]
    assert not offenders, "writes outside `with atomic_write(...)`:\n" + "\n".join(offenders)


def test_the_write_check_can_fail(tmp_path):
    bad = tmp_path / "hcast" / "bad.py"
    bad.parent.mkdir()
    bad.write_text("import torch, json\n"
                   "def f(p, s):\n"
                   "    torch.save(s, p)\n"
                   "    with open(p, 'w') as f:\n"
                   "        json.dump(s, f)\n"
                   "    with atomic_write(p) as tmp:\n"
                   "        torch.save(s, tmp)\n")
    global ROOT
    saved, ROOT = ROOT, bad.parent
    try:
        found = _unguarded_writes(bad)
    finally:
        ROOT = saved
    assert [line.split(":")[1] for line in found] == ["3", "4", "5"]


HEAVY = ["torchmetrics", "matplotlib", "scipy", "onnx", "onnxruntime", "cv2", "segmentation_models_pytorch",
         "hcast.inference", "hcast.train"]


def test_import_hcast_leaves_heavy_libraries_unloaded():
    code = (f"import sys, hcast, timm; timm.create_model('hcast_tiny'); "
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", f"import hcast loaded {out.stdout.strip()}"


def _undocumented_files(doc_text: str) -> list:
    """Python files of hcast that docs/architecture.md (its diagram and package table) does not name."""
    names = set(re.findall(r"[\w/]+\.py\b", doc_text))
    files = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py") if p.name != "__init__.py"]
    return sorted(f for f in files if not any(f == n or f.endswith("/" + n) for n in names))


def test_architecture_md_names_every_file():
    """"Every concept lives in the file named after it": the table lists every file of the package."""
    doc = (ROOT.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    assert _undocumented_files(doc) == []
    # and the check can fail: a file the table drops is reported
    assert _undocumented_files(doc.replace("`levels.py`", "")) == ["models/levels.py"]
