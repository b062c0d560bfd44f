"""Weights: safe loading of the original checkpoints, hub and Google Drive downloads
(against a local server, see hf_server.py), and sharing in timm's hub format."""
from __future__ import annotations

import argparse
import json
import pickle
import time
import types

import numpy as np
import pytest
import safetensors.torch
import timm
import torch
from huggingface_hub.errors import EntryNotFoundError, OfflineModeIsEnabled
from skimage import data as skdata
from skimage.segmentation import slic
from skimage.transform import resize

import hcast  # noqa: F401  (registers the models with timm)
from hcast import weights
from hcast.weights import UnsafeCheckpointError, load_checkpoint_file, unwrap_state_dict
from hf_server import LocalHub, set_offline, use_local_hub
from reference_cast import ReferenceCAST

# cast_small / hcast_small's registered tags, built narrower than cast_tiny so the test stays small
TINY = dict(img_size=64, embed_dim=96, depths=(3, 3, 3, 2), num_heads=3, num_clusters=(16, 8, 4, 2))
MODEL_TINY = {k: v for k, v in TINY.items() if k != "depths"}
CAST_FILE = "snapshots/deit/imagenet1k/cast_small/best_checkpoint.pth"
LIVING17_ID = "17ouiirBmBxD5wxOuWBi-SulVIzv8oHBL"  # hcast_small.living17
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


@pytest.fixture(scope="module")
def inputs():
    """astronaut at 64 x 64, normalised (1, 3, 64, 64), with SLIC superpixels (1, 64, 64) int64."""
    imgs = [resize(skdata.astronaut(), (64, 64), anti_aliasing=True)]
    x = (torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() - MEAN) / STD
    segments = np.stack([slic(img, n_segments=49, start_label=0) for img in imgs])
    return x, torch.from_numpy(segments).long()


def original_state_dict(seed: int = 0, **kwargs) -> dict:
    """A state dict in the original CAST / H-CAST key layout, random values everywhere."""
    ref = ReferenceCAST(**TINY, **kwargs)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in ref.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5 if name.endswith("running_var")
                        else torch.randn(t.shape, generator=gen) * 0.1)
    return ref.state_dict()


def _shifted(state_dict: dict) -> dict:
    """state_dict + 1, keeping the original's shared tensors shared (smaller files)."""
    done = {}
    return {k: done.setdefault(id(v), v + 1) for k, v in state_dict.items()}


def deit_checkpoint(state_dict: dict) -> dict:
    """What DeiT's / H-CAST's training scripts save: weights, an EMA copy, training state, args."""
    return {
        "model": state_dict,
        "model_ema": _shifted(state_dict),  # must not be loaded
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0]}]},
        "lr_scheduler": {"t_initial": 300, "base_values": [1e-3]},
        "epoch": 299,
        "accuracy": np.float64(80.4),
        "scaler": {"scale": 65536.0, "_growth_tracker": 0},
        "args": argparse.Namespace(model="cast_small", lr=5e-4, nb_classes=[34, 17], output_dir="out"),
    }


def save_bytes(obj) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def outputs(model, inputs):
    x, segments = inputs
    with torch.no_grad():
        return model.eval()(x, segments)


# ----------------------------------------------------------------------------------------
# Safe loading
# ----------------------------------------------------------------------------------------

class _WritesFile:
    """Unpickling this would create a file: stands in for any code a pickle could run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("fmt", ["zip", "legacy", "plain_pickle"])
def test_malicious_pickle_is_refused_not_run(tmp_path, fmt):
    marker = tmp_path / "pwned"
    payload = {"model": {"w": torch.ones(2)}, "args": _WritesFile(marker)}
    path = tmp_path / "best_checkpoint.pth"
    if fmt == "zip":
        torch.save(payload, path)
    elif fmt == "legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint_file(path)
    assert not marker.exists()
    message = str(info.value)
    assert "nothing from this file was executed" in message and "weights_only=False" in message
    if fmt == "zip":  # the inspectable format names the offending global
        assert "io.open" in message
    # the same through timm's factory
    with pytest.raises(UnsafeCheckpointError):
        timm.create_model("cast_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert not marker.exists()


def test_training_checkpoint_globals_load_and_model_beats_ema(tmp_path):
    sd = {"w": torch.arange(3.0)}
    path = tmp_path / "ckpt.pth"
    torch.save(deit_checkpoint(sd), path)
    ckpt = load_checkpoint_file(path)
    assert isinstance(ckpt["args"], argparse.Namespace) and ckpt["args"].nb_classes == [34, 17]
    assert float(ckpt["accuracy"]) == 80.4
    assert torch.equal(unwrap_state_dict(ckpt)["w"], sd["w"])  # 'model', not 'model_ema'
    assert torch.equal(unwrap_state_dict({"state_dict": sd})["w"], sd["w"])
    with pytest.raises(ValueError, match="'model' or 'state_dict'"):
        unwrap_state_dict({"epoch": 3, "args": None})
    with pytest.raises(FileNotFoundError, match="not found"):
        load_checkpoint_file(tmp_path / "missing.pth")


def test_file_overlay_loads_original_format(tmp_path, inputs):
    """pretrained_cfg_overlay=dict(file=...) with DeiT's checkpoint layout (weights under
    'model', an EMA copy, args): outputs equal the original-layout reference model's."""
    original = original_state_dict(num_classes=10)
    path = tmp_path / "best_checkpoint.pth"
    torch.save(deit_checkpoint(original), path)
    # a head of another size than the cfg's (1000 classes) is not loaded, as in timm: say so
    overlay = dict(file=str(path), num_classes=10)
    model = timm.create_model("cast_tiny", pretrained=True, pretrained_cfg_overlay=overlay, num_classes=10,
                              **MODEL_TINY)
    ref = ReferenceCAST(**TINY, num_classes=10)
    ref.load_state_dict(original)
    torch.testing.assert_close(outputs(model, inputs), outputs(ref, inputs), rtol=1e-4, atol=1e-5)
    assert model.pretrained_cfg["file"] == str(path) and "state_dict" not in model.pretrained_cfg


def test_file_overlay_loads_moco_format(tmp_path):
    """MoCo v3's layout ('state_dict', ``module.base_encoder.`` prefix, momentum encoder and
    predictor alongside) gives the same weights as the bare state dict."""
    original = original_state_dict(variant="moco", num_classes=0)
    state = {f"module.base_encoder.{k}": v for k, v in original.items()}
    state.update({f"module.momentum_encoder.{k}": v for k, v in _shifted(original).items()})
    state["module.predictor.0.weight"] = torch.ones(4, 4)
    moco, bare = tmp_path / "checkpoint_0099.pth.tar", tmp_path / "bare.pth"
    torch.save({"epoch": 100, "arch": "cast_small", "state_dict": state, "optimizer": {}}, moco)
    torch.save(original, bare)
    kwargs = dict(num_classes=0, pos_embed="sincos", **MODEL_TINY)
    a, b = (timm.create_model("cast_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(p), num_classes=0),
                              **kwargs) for p in (moco, bare))
    assert_same_weights(a, b)
    assert torch.equal(a.cls_token, original["cls_token"])


def test_file_overlay_loads_hcast_safetensors(tmp_path):
    source = timm.create_model("cast_tiny", num_classes=7, **MODEL_TINY)
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file(source.state_dict(), str(path))
    model = timm.create_model("cast_tiny", num_classes=7, pretrained=True, **MODEL_TINY,
                              pretrained_cfg_overlay=dict(file=str(path), num_classes=7))
    assert_same_weights(model, source)


# ----------------------------------------------------------------------------------------
# Hub downloads (cast_small.deit_in1k's hf_hub_id + hf_hub_filename)
# ----------------------------------------------------------------------------------------

def _cache_entries(cache, repo="twke/CAST"):
    folder = cache / f"models--{repo.replace('/', '--')}"
    snapshots = [p for p in (folder / "snapshots").rglob("*") if p.is_file() or p.is_symlink()]
    blobs = [p for p in (folder / "blobs").glob("*")] if (folder / "blobs").exists() else []
    return snapshots, blobs


def test_hub_download_cache_offline_and_missing_file(tmp_path, monkeypatch):
    original = original_state_dict()  # 1000 classes, as the tag's cfg says: the head loads too
    blob = save_bytes(deit_checkpoint(original))
    direct = tmp_path / "direct.pth"
    direct.write_bytes(blob)
    kwargs = MODEL_TINY
    with LocalHub() as hub:
        hub.add_file("twke/CAST", CAST_FILE, blob)
        cache = use_local_hub(monkeypatch, hub, tmp_path / "hf")

        model = timm.create_model("cast_small.deit_in1k", pretrained=True, **kwargs)
        # the same weights as loading the file directly (so the same outputs)
        assert_same_weights(model, timm.create_model(
            "cast_small", pretrained=True, pretrained_cfg_overlay=dict(file=str(direct)), **kwargs))
        assert torch.equal(model.head.weight, original["head.weight"])
        assert len(hub.gets(CAST_FILE)) == 1
        snapshots, _ = _cache_entries(cache)
        assert [p.read_bytes() == blob for p in snapshots] == [True]

        # the second create reuses the cache: the file is not fetched again
        assert_same_weights(timm.create_model("cast_small.deit_in1k", pretrained=True, **kwargs), model)
        assert len(hub.gets(CAST_FILE)) == 1

        # offline with a warm cache: no request at all
        set_offline(monkeypatch, True)
        n = len(hub.requests)
        assert_same_weights(timm.create_model("cast_small.deit_in1k", pretrained=True, **kwargs), model)
        assert len(hub.requests) == n
        set_offline(monkeypatch, False)

        # a file the repo does not have: the Hub's own error, naming repo and file
        with pytest.raises(EntryNotFoundError) as info:
            timm.create_model("cast_small.deit_in1k", pretrained=True,
                              pretrained_cfg_overlay=dict(hf_hub_filename="snapshots/nope.pth"), **kwargs)
        assert "twke/CAST" in str(info.value) and "snapshots/nope.pth" in str(info.value)


def test_interrupted_hub_transfer_leaves_no_corrupt_cache(tmp_path, monkeypatch):
    blob = save_bytes(deit_checkpoint(original_state_dict()))
    kwargs = MODEL_TINY
    # huggingface_hub retries (resuming with Range requests) with 1 s pauses: skip the pauses
    import huggingface_hub.file_download as file_download
    monkeypatch.setattr(file_download, "time", types.SimpleNamespace(**{**vars(time), "sleep": lambda s: None}))
    with LocalHub() as hub:
        hub.add_file("twke/CAST", CAST_FILE, blob)
        hub.truncate[CAST_FILE] = len(blob) // 3  # every GET hangs up at a third of the file
        cache = use_local_hub(monkeypatch, hub, tmp_path / "hf")
        with pytest.raises(Exception, match="peer closed connection"):
            timm.create_model("cast_small.deit_in1k", pretrained=True, **kwargs)
        assert len(hub.gets(CAST_FILE)) > 1  # it did retry
        snapshots, blobs = _cache_entries(cache)
        assert snapshots == []  # nothing that looks like a cached file
        assert all(p.name.endswith(".incomplete") for p in blobs)

        del hub.truncate[CAST_FILE]  # a healthy server
        timm.create_model("cast_small.deit_in1k", pretrained=True, **kwargs)
        snapshots, blobs = _cache_entries(cache)
        assert len(snapshots) == 1 and snapshots[0].read_bytes() == blob
        assert [p.read_bytes() == blob for p in blobs] == [True]


# ----------------------------------------------------------------------------------------
# Google Drive (H-CAST's released checkpoints)
# ----------------------------------------------------------------------------------------

def test_gdrive_tag_downloads_once_into_cache(tmp_path, monkeypatch):
    original = original_state_dict(seed=3, level_classes=(34, 17))
    blob = save_bytes(deit_checkpoint(original))
    with LocalHub() as hub:
        hub.gdrive[LIVING17_ID] = blob
        use_local_hub(monkeypatch, hub, tmp_path / "hf")
        model = timm.create_model("hcast_small.living17", pretrained=True, **MODEL_TINY)
        target = weights.gdrive_cache_path(LIVING17_ID)
        assert target.read_bytes() == blob
        assert str(target).startswith(str(tmp_path / "hf" / "assets" / "hcast" / "gdrive"))
        assert sorted(p.name for p in target.parent.iterdir()) == [target.name, target.name + ".lock"]
        direct = tmp_path / "living17.pth"
        direct.write_bytes(blob)
        assert_same_weights(model, timm.create_model(
            "hcast_small", level_classes=(34, 17), pretrained=True,
            pretrained_cfg_overlay=dict(file=str(direct), num_classes=34), **MODEL_TINY))
        assert torch.equal(model.heads[1].weight, original["family_head.weight"])  # the coarse head loaded

        assert_same_weights(timm.create_model("hcast_small.living17", pretrained=True, **MODEL_TINY), model)
        assert len(hub.gets(f"id={LIVING17_ID}")) == 1  # cached

        set_offline(monkeypatch, True)  # offline with the file cached: works, no request
        n = len(hub.requests)
        timm.create_model("hcast_small.living17", pretrained=True, **MODEL_TINY)
        assert len(hub.requests) == n


def test_gdrive_offline_without_cache_is_a_clear_error(tmp_path, monkeypatch):
    with LocalHub() as hub:
        use_local_hub(monkeypatch, hub, tmp_path / "hf", offline=True)
        with pytest.raises(OfflineModeIsEnabled, match="HF_HUB_OFFLINE=1.*not cached"):
            timm.create_model("hcast_small.living17", pretrained=True, **MODEL_TINY)
        assert hub.requests == []


@pytest.mark.parametrize("failure", ["interrupted", "error_page"])
def test_gdrive_failed_download_caches_nothing(tmp_path, monkeypatch, failure):
    blob = save_bytes(deit_checkpoint({"w": torch.ones(1000)}))
    with LocalHub() as hub:
        use_local_hub(monkeypatch, hub, tmp_path / "hf")
        if failure == "interrupted":
            hub.gdrive[LIVING17_ID] = blob
            hub.truncate[LIVING17_ID] = len(blob) // 2
        else:  # Google Drive answers "quota exceeded" with an HTML page
            hub.gdrive[LIVING17_ID] = b"<html><body>Too many users have viewed this file</body></html>"
        with pytest.raises(OSError, match=LIVING17_ID):
            weights.download_gdrive_checkpoint(LIVING17_ID)
        folder = weights.gdrive_cache_path(LIVING17_ID).parent
        assert [p.name for p in folder.iterdir() if not p.name.endswith(".lock")] == []

        hub.truncate.clear()
        hub.gdrive[LIVING17_ID] = blob
        path = weights.download_gdrive_checkpoint(LIVING17_ID)
        assert path.read_bytes() == blob


def test_gdrive_arguments_are_checked():
    with pytest.raises(ValueError, match="gdrive_id"):
        weights.gdrive_cache_path("../../etc")
    with pytest.raises(ValueError, match="filename"):
        weights.gdrive_cache_path(LIVING17_ID, "a/b.pth")


# ----------------------------------------------------------------------------------------
# Sharing in timm's hub format
# ----------------------------------------------------------------------------------------

def test_save_for_hf_round_trips_through_hub(tmp_path, monkeypatch):
    source = timm.create_model("cast_tiny", num_classes=5, **MODEL_TINY)
    folder = weights.save_for_hf(source, tmp_path / "export")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "cast_tiny"
    assert config["pretrained_cfg"]["superpixel_method"] == source.pretrained_cfg["superpixel_method"]
    assert config["pretrained_cfg"]["num_segments"] == source.pretrained_cfg["num_segments"]
    with LocalHub() as hub:
        hub.add_folder("someone/cast-tiny-test", folder)
        use_local_hub(monkeypatch, hub, tmp_path / "hf")
        loaded = timm.create_model("hf-hub:someone/cast-tiny-test", pretrained=True)
    assert loaded.num_classes == 5 and loaded.embed_dim == source.embed_dim
    assert loaded.pretrained_cfg["num_segments"] == source.pretrained_cfg["num_segments"]
    assert_same_weights(loaded, source)
