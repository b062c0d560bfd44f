"""Bad files and faults around weights: each case gets a clear error naming the file, or a correct result.

Cases are tables: add a row to extend them.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

import hcast  # noqa: F401  (registers the models with timm)
import hcast._io as io_module
from hcast.weights import (
    atomic_write, load_checkpoint, load_checkpoint_file, read_model_config, remove_stale_temporaries, save_checkpoint,
    save_for_hf,
)
from hf_server import LocalHub, use_local_hub

LEVELS = (10, 5)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A model folder as save_for_hf writes it (hcast_tiny, 2 levels), and its model."""
    torch.manual_seed(0)
    model = timm.create_model("hcast_tiny", level_classes=LEVELS).eval()
    return save_for_hf(model, tmp_path_factory.mktemp("saved") / "model"), model


def _copy(saved, tmp_path) -> Path:
    return Path(shutil.copytree(saved[0], tmp_path / "model"))


def _edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        section, _, name = key.partition("__")
        config.setdefault(section, {})[name] = value
    (folder / "config.json").write_text(json.dumps(config))


# ----------------------------------------------------------------------------- crafted config.json

@pytest.mark.parametrize("changes, message", [
    (dict(model_args__embed_dim=100008), r"parameters and buffers .* GiB .* nothing was allocated"),
    (dict(model_args__img_size=[100000, 100000]), r"img_size=\[100000, 100000\] is out of bounds"),
    (dict(model_args__depths=[3, 3, 3, 100000]), r"depths=.* is out of bounds .* 256 blocks"),
    (dict(model_args__num_clusters=list(range(1, 1000))), r"num_clusters=.* is out of bounds .* 64 entries"),
    (dict(model_args__num_heads=7), r"cannot be built from these model_args"),  # 192 % 7 != 0
    (dict(model_args__rm_rf=True), r"model_args \['rm_rf'\] are not arguments of hcast_tiny"),
    (dict(pretrained_cfg__input_size=[3, 100000, 100000]), r"input_size=.* is out of bounds"),
], ids=["embed_dim", "img_size", "depths", "long-list", "heads-do-not-divide", "unknown-arg", "cfg-input_size"])
def test_crafted_config_is_refused_before_allocating(saved, tmp_path, changes, message):
    folder = _copy(saved, tmp_path)
    _edit_config(folder, **changes)
    with pytest.raises(ValueError, match=message) as info:
        timm.create_model(f"local-dir:{folder}", pretrained=True)
    assert str(folder / "config.json") in str(info.value)


# ----------------------------------------------------------------------------- strict folder loads

def test_class_counts_that_do_not_fit_the_weights_are_an_error_naming_the_files(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    # config.json's class counts (level_classes and num_classes, the finest level's) edited together
    _edit_config(folder, model_args__level_classes=[7, 5], model_args__num_classes=7)
    with pytest.raises(ValueError, match=r"model.safetensors.*do not fit the model.*heads.0.weight: \(7, 192\) in "
                                         r"the model, \(10, 192\) in the weights.*fresh_heads=True"):
        timm.create_model(f"local-dir:{folder}", pretrained=True)
    # asked for: fresh heads where they do not fit, every other weight from the file
    torch.manual_seed(1)
    tuned = timm.create_model(f"local-dir:{folder}", pretrained=True, fresh_heads=True)
    source = saved[1].state_dict()
    for key, value in tuned.state_dict().items():
        if key.startswith("heads.0."):
            assert value.shape[0] == 7
        else:
            assert torch.equal(value, source[key]), key


def test_a_consistent_folder_loads_every_weight(saved):
    loaded = timm.create_model(f"local-dir:{saved[0]}", pretrained=True)
    source = saved[1].state_dict()
    assert loaded.state_dict().keys() == source.keys()
    assert all(torch.equal(v, source[k]) for k, v in loaded.state_dict().items())
    # adapting weights to the model stays allowed: another image size resamples the position embedding
    larger = timm.create_model(f"local-dir:{saved[0]}", pretrained=True, img_size=96)
    assert larger.pos_embed.shape[1] == 1 + 12 * 12
    assert torch.equal(larger.heads[0].weight, source["heads.0.weight"])


# ----------------------------------------------------------------------------- bad files

def _truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _garbage(path: Path) -> None:
    path.write_bytes(b"<html><body>Quota exceeded</body></html>" * 10)


DAMAGE = {"truncated": _truncated, "empty": _empty, "garbage": _garbage}


@pytest.mark.parametrize("damage", DAMAGE)
def test_bad_weights_file_in_a_folder_is_named(saved, tmp_path, damage):
    folder = _copy(saved, tmp_path)
    DAMAGE[damage](folder / "model.safetensors")
    with pytest.raises(ValueError, match=r"model.safetensors.* (empty|not a readable safetensors file)"):
        timm.create_model(f"local-dir:{folder}", pretrained=True)


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("name, save", [
    ("checkpoint.pth", lambda path: torch.save({"model": {"w": torch.ones(1000)}, "epoch": 3}, path)),
    ("legacy.pth", lambda path: torch.save({"w": torch.ones(1000)}, path, _use_new_zipfile_serialization=False)),
])
def test_bad_pth_checkpoints_are_named(tmp_path, damage, name, save):
    path = tmp_path / name
    save(path)
    DAMAGE[damage](path)
    with pytest.raises(ValueError, match=rf"{name}.* (empty|not a (readable )?PyTorch checkpoint)"):
        load_checkpoint_file(path)
    with pytest.raises(ValueError, match=name):  # --resume reads the same way
        load_checkpoint(path)


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (b'{"architecture": "hcast_tiny", "model_args": {"level_', r"invalid JSON at line 1, column \d+ .*truncated"),
    (b"\xff\xfe garbage", "not UTF-8"),
    (b"[" * 100000 + b"]" * 100000, "nested too deeply"),
    (b'["hcast_tiny"]', "expected a JSON object, got list"),
    (b'{"architecture": "hcast_tiny", "model_args": [10, 5]}', "'model_args' must be a JSON dict, got list"),
], ids=["empty", "truncated", "not-utf8", "deep", "not-object", "bad-field"])
def test_bad_config_json_is_named(tmp_path, content, message):
    (tmp_path / "config.json").write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        read_model_config(f"local-dir:{tmp_path}")
    assert str(tmp_path / "config.json") in str(info.value)


def test_read_model_config_reads_what_save_for_hf_wrote(saved):
    config = read_model_config(saved[0])
    assert config["architecture"] == "hcast_tiny" and config["model_args"]["level_classes"] == list(LEVELS)
    with pytest.raises(FileNotFoundError, match="config.json"):
        read_model_config(saved[0] / "missing")


# ----------------------------------------------------------------------------- corrupt hub cache

def test_corrupt_hub_cache_entry_is_detected_and_says_how_to_refetch(saved, tmp_path, monkeypatch):
    with LocalHub() as hub:
        hub.add_folder("someone/tiny", saved[0])
        cache = use_local_hub(monkeypatch, hub, tmp_path / "hf")
        timm.create_model("hf-hub:someone/tiny", pretrained=True)
        [blob] = [p for p in Path(cache).rglob("blobs/*") if p.stat().st_size > 10000]
        data = bytearray(blob.read_bytes())
        data[-100:] = bytes(100)  # bit rot in the weights: the header still parses
        blob.write_bytes(bytes(data))
        with pytest.raises(ValueError, match=r"model.safetensors.* does not match the SHA-256 .* corrupt.*delete "
                                             r".*model.safetensors.* and .*blobs") as info:
            timm.create_model("hf-hub:someone/tiny", pretrained=True)
        for path in str(info.value).split("delete ")[1].split(" (or run")[0].split(" and "):
            Path(path.strip("'")).unlink()  # what the message says to do
        loaded = timm.create_model("hf-hub:someone/tiny", pretrained=True)  # fetched anew
    source = saved[1].state_dict()
    assert all(torch.equal(v, source[k]) for k, v in loaded.state_dict().items())


def _dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ----------------------------------------------------------------------------- killed saves


def test_a_killed_save_leaves_temporaries_the_next_save_removes(tmp_path):
    path = tmp_path / "checkpoint-latest.pth"
    save_checkpoint({"epoch": 1}, path)
    host, dead = io_module._HOST, _dead_pid()
    stale = [tmp_path / f".checkpoint-latest.pth.{host}.{dead}.k1ll3d_a.tmp",
             tmp_path / f".checkpoint-latest.pth.{host}.{dead}.k1ll3d_b.tmp"]
    stale_dir = tmp_path / f".checkpoint-latest.pth.{host}.{dead}.k1ll3d_c.tmp"
    kept = [tmp_path / f".checkpoint-latest.pth.{host}.{os.getppid()}.al1ve.tmp",  # live writer
            tmp_path / f".checkpoint-latest.pth.other-host.{dead}.shared.tmp",  # another machine's
            tmp_path / ".checkpoint-latest.pth.notours",                          # not our pattern
            tmp_path / f".other.pth.{host}.{dead}.k1ll3d.tmp"]                    # another file's
    for p in stale + kept:
        p.write_bytes(b"partial")
    stale_dir.mkdir()
    (stale_dir / "model.safetensors").write_bytes(b"partial")
    save_checkpoint({"epoch": 2}, path)
    assert load_checkpoint(path)["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name] + [p.name for p in kept])
    assert remove_stale_temporaries(path) == []


def test_temporaries_follow_the_pattern_the_cleanup_knows(tmp_path):
    path = tmp_path / "log.json"
    with atomic_write(path) as tmp:
        tmp.write_text("{}")
        assert io_module._TMP_RE.fullmatch(tmp.name[len(".log.json"):])
    with atomic_write(tmp_path / "run", folder=True) as tmp:
        assert io_module._TMP_RE.fullmatch(tmp.name[len(".run"):])


# ----------------------------------------------------------------------------- full disk


def _partial_then(error):
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        real_save({"epoch": 99, "w": torch.zeros(1000)}, f, *args, **kwargs)
        with open(f, "r+b") as fh:
            fh.truncate(100)
        raise error
    return save


@pytest.mark.parametrize("error, free", [
    (OSError(errno.ENOSPC, "No space left on device"), 10 * 2**30),
    # what torch.save raises on a full disk: the OS error is lost, the disk is (nearly) full
    (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1024 vs 960"), 0),
], ids=["ENOSPC", "torch-inline_container"])
def test_full_disk_during_a_checkpoint_save_says_so_and_keeps_the_previous_one(tmp_path, monkeypatch, error, free):
    path = tmp_path / "checkpoint-latest.pth"
    save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)
    monkeypatch.setattr(torch, "save", _partial_then(error))
    monkeypatch.setattr(io_module, "_free_bytes", lambda folder: free)
    with pytest.raises(OSError, match=r"disk holding .* is full.*previous checkpoint at .*checkpoint-latest.pth.* "
                                      r"is intact") as info:
        save_checkpoint({"epoch": 2}, path)
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    state = load_checkpoint(path)
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-latest.pth"]


def test_other_write_errors_pass_unchanged(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", _partial_then(RuntimeError("[enforce fail at inline_container.cc:672]")))
    monkeypatch.setattr(io_module, "_free_bytes", lambda folder: 10 * 2**30)  # plenty of space: not "full"
    with pytest.raises(RuntimeError, match="inline_container"):
        save_checkpoint({"epoch": 2}, tmp_path / "c.pth")
    assert list(tmp_path.iterdir()) == []
