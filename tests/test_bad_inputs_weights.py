"""Bad files and faults around weights: each case gets a clear error naming the file, or a correct result.

Cases are tables: add a row to extend them.
"""
from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest
import torch

import hcast.weights.folder as folder_module
from hcast.weights import atomic_write, load_checkpoint, remove_stale_temporaries, save_checkpoint


def _dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ----------------------------------------------------------------------------- killed saves


def test_a_killed_save_leaves_temporaries_the_next_save_removes(tmp_path):
    path = tmp_path / "checkpoint-latest.pth"
    save_checkpoint({"epoch": 1}, path)
    host, dead = folder_module._HOST, _dead_pid()
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
        assert folder_module._TMP_RE.fullmatch(tmp.name[len(".log.json"):])
    with atomic_write(tmp_path / "run", folder=True) as tmp:
        assert folder_module._TMP_RE.fullmatch(tmp.name[len(".run"):])


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
    monkeypatch.setattr(folder_module, "_free_bytes", lambda folder: free)
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
    monkeypatch.setattr(folder_module, "_free_bytes", lambda folder: 10 * 2**30)  # plenty of space: not "full"
    with pytest.raises(RuntimeError, match="inline_container"):
        save_checkpoint({"epoch": 2}, tmp_path / "c.pth")
    assert list(tmp_path.iterdir()) == []
