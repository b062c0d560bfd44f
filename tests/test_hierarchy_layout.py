"""The layout of hcast.hierarchy and hcast.metric_learning: public names, old module paths.
(Every public module's ``__all__`` and docstrings: tests/test_public_api.py.)"""
import importlib
import inspect
import subprocess
import sys

import pytest

import hcast.hierarchy
import hcast.metric_learning

# old module path -> the modules that now hold its names
OLD_PATHS = {
    "hcast.hierarchy.datasets": ["hcast.hierarchy.taxonomies"],
    "hcast.hierarchy.better_mistakes": [
        "hcast.hierarchy.losses.hierarchical_cross_entropy",
        "hcast.hierarchy.losses.soft_labels",
        "hcast.hierarchy.losses.level_weighted",
    ],
    "hcast.hierarchy.hier": ["hcast.metric_learning.hier"],
    "hcast.hierarchy.retrieval": ["hcast.metric_learning.retrieval"],
}


@pytest.mark.parametrize("old", sorted(OLD_PATHS))
def test_old_module_path_warns_and_gives_the_same_objects(old, monkeypatch):
    monkeypatch.delitem(sys.modules, old, raising=False)
    with pytest.warns(DeprecationWarning, match=rf"{old} is deprecated.*import from hcast\."):
        mod = importlib.import_module(old)
    names = 0
    for new in OLD_PATHS[old]:
        new_mod = importlib.import_module(new)
        for name in new_mod.__all__:
            assert getattr(mod, name) is getattr(new_mod, name), f"{old}.{name}"
            names += 1
    assert names >= 2
    assert sorted(mod.__all__) == sorted(n for new in OLD_PATHS[old] for n in importlib.import_module(new).__all__)


def test_old_paths_keep_private_names_and_tests_can_still_reach_known_constants(monkeypatch):
    monkeypatch.delitem(sys.modules, "hcast.hierarchy.datasets", raising=False)
    with pytest.warns(DeprecationWarning):
        old = importlib.import_module("hcast.hierarchy.datasets")
    from hcast.hierarchy.taxonomies import FASHION_MNIST_CLASSES, _find_wordnet_dir

    assert old.FASHION_MNIST_CLASSES is FASHION_MNIST_CLASSES
    assert old._find_wordnet_dir is _find_wordnet_dir
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        old.nope


def test_deprecation_warning_points_at_the_users_import_line(tmp_path):
    """Python shows DeprecationWarnings by default only when attributed to __main__: it must be the user's line."""
    script = tmp_path / "user_script.py"
    script.write_text("x = 1\nfrom hcast.hierarchy.hier import HIERLoss\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert f"{script}:2: DeprecationWarning: hcast.hierarchy.hier is deprecated" in out.stderr
    assert "import from hcast.metric_learning instead" in out.stderr


def test_names_users_had_stay_exported_by_hcast_hierarchy():
    from hcast.metric_learning import HIERLoss, RecallAtK, ToPoincare, poincare_distance_matrix, recall_at_k, to_poincare
    from hcast.hierarchy.losses import HCASTLoss, hxe_edge_weights, level_targets_to_probs, ramp_weight
    from hcast.hierarchy.decoding import path_log_probs

    for obj in (HIERLoss, RecallAtK, ToPoincare, poincare_distance_matrix, recall_at_k, to_poincare, HCASTLoss,
                hxe_edge_weights, level_targets_to_probs, ramp_weight, path_log_probs):
        assert getattr(hcast.hierarchy, obj.__name__) is obj
        assert obj.__name__ in hcast.hierarchy.__all__


def test_metric_learning_needs_no_taxonomy():
    """hcast.metric_learning imports only torch, geoopt and hcast.ops, never hcast.hierarchy."""
    for m in ("hcast.metric_learning", "hcast.metric_learning.hier", "hcast.metric_learning.retrieval"):
        for line in inspect.getsource(importlib.import_module(m)).splitlines():
            if line.lstrip().startswith(("from hcast", "import hcast")):
                assert line.lstrip().startswith(("from hcast.metric_learning", "from hcast.ops", "import hcast.ops")), line
