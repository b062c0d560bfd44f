"""The layout of hcast.hierarchy and hcast.metric_learning: public names.
(Every public module's ``__all__`` and docstrings: tests/test_public_api.py.)"""
import hcast.hierarchy
import hcast.metric_learning

def test_hierarchy_names_are_exported_by_hcast_hierarchy():
    from hcast.hierarchy.losses import HCASTLoss, hxe_edge_weights, level_targets_to_probs, ramp_weight
    from hcast.hierarchy.decoding import path_log_probs

    for obj in (HCASTLoss, hxe_edge_weights, level_targets_to_probs, ramp_weight, path_log_probs):
        assert getattr(hcast.hierarchy, obj.__name__) is obj
        assert obj.__name__ in hcast.hierarchy.__all__


