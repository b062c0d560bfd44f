"""Files hcast writes and images it reads, when they are not what they should be (issue 21).

Writing: symlinks are followed (the link stays a link), FIFOs and device nodes are
written straight through (never replaced by a regular file), a folder given for a file is
refused before any work. Every special target lives in a temporary folder; nothing here
creates, replaces or writes a file in ``/dev`` (the one device reached, ``/dev/full``
through a link, takes no data and is only checked to still be a device).

Reading: a really truncated PNG is named, 16-bit PNGs are scaled rather than clipped, and
the training / evaluation loaders leave an unreadable image out with a warning naming it.
"""
from __future__ import annotations

import errno
import json
import os
import stat
import sys
import threading

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata
from torch.utils.data import DataLoader

from hcast.data import (SkipUnreadable, UnreadableImageError, UnreadableImageWarning, collate_readable,
                        load_image, to_rgb)
from hcast._io import atomic_write, check_output_path, write_json
from hcast.weights.folder import save_checkpoint


# ----------------------------------------------------------------------------- writing


def test_a_symlink_is_followed_and_stays_a_link(tmp_path):
    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target.name)
    write_json({"a": 1}, link)
    assert link.is_symlink() and os.readlink(link) == "real.json"
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "real.json"]  # no temporary left


def test_a_dangling_symlink_creates_the_file_it_names(tmp_path):
    link = tmp_path / "link.pth"
    link.symlink_to(tmp_path / "sub" / "new.pth")
    save_checkpoint({"epoch": 3}, link)
    assert link.is_symlink()
    assert torch.load(tmp_path / "sub" / "new.pth", weights_only=True) == {"epoch": 3}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_is_written_through_and_stays_a_fifo(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()))
    reader.start()
    write_json({"fifo": True}, fifo)
    reader.join(timeout=60)
    assert json.loads(received[0]) == {"fifo": True}
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert [p.name for p in tmp_path.iterdir()] == ["pipe"]  # the temporary went to the system's temp folder


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_a_link_to_a_full_device_fails_with_enospc_and_replaces_nothing(tmp_path):
    """`hcast export -o /dev/full` printed "exported" and replaced the device node; through a
    link in a temporary folder the write now goes to the device, which reports ENOSPC."""
    link = tmp_path / "out.onnx"
    link.symlink_to("/dev/full")
    with pytest.raises(OSError, match="character device, written straight through") as info:
        write_json({"x": 1}, link)
    assert info.value.errno == errno.ENOSPC
    assert link.is_symlink() and stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_a_folder_as_a_file_target_is_refused_before_the_block_runs(tmp_path):
    ran = []
    with pytest.raises(IsADirectoryError, match="is a folder; pass the path of a file"):
        with atomic_write(tmp_path):
            ran.append(True)
    assert not ran


def test_check_output_path(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(NotADirectoryError, match="lies under .*notes.txt.*which is a file"):
        check_output_path(tmp_path / "notes.txt" / "m.json")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        check_output_path(tmp_path / "notes.txt", folder=True)
    with pytest.raises(IsADirectoryError):
        check_output_path(tmp_path)
    assert check_output_path(tmp_path / "new" / "m.json") == tmp_path / "new" / "m.json"
    assert not (tmp_path / "new").exists()  # a check writes nothing


# ----------------------------------------------------------------------------- reading


def _truncated_png(path, size=64):
    Image.fromarray(skdata.astronaut()[:size, :size]).save(path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])  # cut in the middle of the image data
    return path


def test_a_truncated_png_is_named(tmp_path):
    path = _truncated_png(tmp_path / "cut.png")
    with Image.open(path) as image:  # the header reads fine: only decoding fails
        assert image.size == (64, 64)
    with pytest.raises(UnreadableImageError, match=r"image '.*cut.png' cannot be read: .*replace or remove"):
        load_image(path)
    with pytest.raises(UnreadableImageError, match="no such file"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(UnreadableImageError, match="notes.png"):
        load_image(tmp_path / "notes.png")


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    gray8 = skdata.camera()  # (512, 512) uint8 photo
    Image.fromarray(gray8.astype(np.uint16) * 257).save(tmp_path / "camera16.png")  # 0..255 -> 0..65535
    with Image.open(tmp_path / "camera16.png") as image:
        assert image.mode.startswith("I")  # Pillow opens it as 16-bit
        clipped = np.asarray(image.convert("RGB"))
    assert (clipped == 255).mean() > 0.9  # what convert("RGB") does: nearly everything white
    rgb = np.asarray(load_image(tmp_path / "camera16.png"))
    assert rgb.dtype == np.uint8 and rgb.shape == (512, 512, 3)
    np.testing.assert_array_equal(rgb[..., 0], gray8)  # exactly the 8-bit photo back
    np.testing.assert_array_equal(rgb[..., 1], rgb[..., 2])


def test_images_without_a_known_range_are_refused():
    with pytest.raises(ValueError, match="'F'.*no known white level"):
        to_rgb(Image.fromarray(np.zeros((4, 4), np.float32)))


class _Files(torch.utils.data.Dataset):
    def __init__(self, paths):
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return torch.from_numpy(np.array(load_image(self.paths[i]))).float(), i


def test_loaders_leave_an_unreadable_image_out_with_a_warning_naming_it(tmp_path):
    paths = []
    for i, crop in enumerate((slice(0, 32), slice(32, 64), slice(64, 96))):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(skdata.coffee()[crop, crop]).save(paths[-1])
    paths.insert(1, _truncated_png(tmp_path / "cut.png", 32))
    loader = DataLoader(SkipUnreadable(_Files(paths)), batch_size=2, collate_fn=collate_readable)
    with pytest.warns(UnreadableImageWarning, match=r"cut.png' cannot be read.*left out \(item 1\)"):
        batches = list(loader)
    assert [b[1].tolist() for b in batches] == [[0], [2, 3]]
    assert collate_readable([None, None]) is None
    assert SkipUnreadable(_Files(paths)).paths == paths  # attributes reach through the wrapper


def test_other_errors_are_not_swallowed(tmp_path):
    class Broken(torch.utils.data.Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            raise KeyError("a bug, not an image")

    with pytest.raises(KeyError):
        SkipUnreadable(Broken())[0]


def test_an_opencv_that_fails_to_import_is_reported_as_it_is(tmp_path, monkeypatch):
    """A cv2 that is installed but broken (a missing system library) is not "install OpenCV
    contrib": its own error is the message."""
    from hcast.ops import superpixels

    (tmp_path / "cv2.py").write_text(
        "raise ImportError('libGL.so.1: cannot open shared object file: No such file or directory')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "cv2", raising=False)
    image = torch.from_numpy(skdata.coffee()[:32, :32].copy())[None]
    with pytest.raises(ImportError, match="installed but failed to import: libGL.so.1") as info:
        superpixels(image, 16, method="seeds")
    assert "contrib modules: pip install" not in str(info.value)
    monkeypatch.delitem(sys.modules, "cv2", raising=False)
    (tmp_path / "cv2.py").write_text("__version__ = '4.0-no-contrib'\n")  # an OpenCV without ximgproc
    with pytest.raises(ImportError, match="without them"):
        superpixels(image, 16, method="seeds")


@pytest.mark.skipif(not os.path.exists("/proc/self/fd/1"), reason="no /proc/self/fd")
def test_a_link_to_stdout_gets_the_json_after_what_was_printed(tmp_path):
    """`--json /dev/stdout` through a link in a temporary folder (to /proc/self/fd/1): the JSON
    is written through to the pipe, after the lines printed before it, and the link stays."""
    import subprocess
    from pathlib import Path

    link = tmp_path / "stdout.json"
    link.symlink_to("/proc/self/fd/1")
    script = ("import sys; from hcast._io import write_json; print('before'); "
              "write_json({'x': 1}, sys.argv[1]); print('after')")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                       os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", script, str(link)], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout == 'before\n{\n  "x": 1\n}\nafter\n'
    assert link.is_symlink()
