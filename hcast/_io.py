"""How hcast writes files: atomically, through symlinks, to special targets; JSON.

The bottom of the package (it imports nothing from hcast): every writer (model folders,
checkpoints, exports, pictures, taxonomies, metrics, downloads) goes through
:func:`atomic_write`, so the guarantees in docs/reliability.md hold everywhere.

* :func:`atomic_write`: readers see the old version or the new one, never a torn one; a
  crash or an exception leaves the previous file intact; a symlink is followed (the link
  stays a link); FIFOs and device nodes are written straight through.
* :func:`check_output_path`: an output path checked before any work is done.
* :func:`remove_stale_temporaries`: temporaries a killed writer left behind.
* :func:`write_json`: indented JSON, NaN/inf as ``null``, atomically.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import re
import secrets
import shutil
import socket
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator, List, Optional, Tuple, Union

_logger = logging.getLogger(__name__)

__all__ = ["atomic_write", "check_output_path", "remove_stale_temporaries", "write_json"]

PathLike = Union[str, os.PathLike]

# Less free space than this after a failed torch write means the disk filled up.
_NEARLY_FULL = 64 * 2**20


# ----------------------------------------------------------------------------- atomic writes


def _new_file_mode(mode: int = 0o666) -> int:
    """The permissions ``open()`` / ``mkdir()`` would give (mkstemp and mkdtemp make 0600 / 0700)."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _replace_folder(tmp: Path, path: Path, overwrite: bool) -> None:
    """Move the complete folder ``tmp`` to ``path`` (an empty folder there is replaced)."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        if not overwrite:
            raise FileExistsError(f"{str(path)!r} appeared while it was being written; not replacing it.")
        old = path.with_name(f".{path.name}.{secrets.token_hex(4)}.old")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
    else:
        os.replace(tmp, path)  # also over an empty folder


# Temporaries are named ``.{name}.{host}.{pid}.{random}.tmp`` so that a later write of the
# same file can tell its own stale ones (the writing process is gone) from live ones.
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"
_TMP_RE = re.compile(r"\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp")


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's), or we cannot tell: keep its files
    return True


def remove_stale_temporaries(path: PathLike) -> List[Path]:
    """Delete temporaries that killed writes of ``path`` left behind; return what was removed.

    :func:`atomic_write` names its temporaries ``.{name}.{host}.{pid}.{random}.tmp``
    next to ``path``. Those written on this host by a process that no longer exists
    (killed mid-save: ``kill -9``, out of memory, power loss) are removed; those of live
    processes, of other hosts (a shared file system) and any other file are left
    alone. :func:`atomic_write` calls this before every write, so the next save of the
    same file cleans up after a killed one.
    """
    path = Path(path)
    removed = []
    prefix = f".{path.name}"
    try:
        candidates = [p for p in path.parent.iterdir() if p.name.startswith(prefix + ".")]
    except OSError:
        return removed
    for candidate in candidates:
        m = _TMP_RE.fullmatch(candidate.name[len(prefix):])
        if m is None or m["host"] != _HOST or _process_alive(int(m["pid"])):
            continue
        with contextlib.suppress(OSError):
            shutil.rmtree(candidate) if candidate.is_dir() and not candidate.is_symlink() else candidate.unlink()
            removed.append(candidate)
    if removed:
        _logger.info(f"Removed {len(removed)} stale temporary file(s) of killed writes of {str(path)!r}")
    return removed


@contextlib.contextmanager
def _temporary(path: Path, folder: bool = False, where: Optional[Path] = None) -> Iterator[Path]:
    """A new hidden temporary file (or folder) next to ``path`` (or in ``where``), deleted on
    exit unless moved."""
    if where is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
    directory = where if where is not None else path.parent
    prefix, suffix = f".{path.name}.{_HOST}.{os.getpid()}.", ".tmp"
    if folder:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=directory))
    else:
        fd, tmp_name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=directory)
        os.close(fd)
        tmp = Path(tmp_name)
    try:
        yield tmp
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def _is_disk_full(error: BaseException) -> bool:
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return True
    # torch.save reports a failed write as RuntimeError("[enforce fail at inline_container.cc:...]
    # ... unexpected pos ...") or "PytorchStreamWriter failed writing file"; the OS error is lost.
    return "No space left on device" in str(error) or "Disk quota exceeded" in str(error)


def _torch_write_failed(error: BaseException) -> bool:
    return isinstance(error, RuntimeError) and any(
        s in str(error) for s in ("inline_container", "PytorchStreamWriter", "file write failed"))


def _free_bytes(folder: Path) -> Optional[int]:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


_SPECIAL_KINDS = ((stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISCHR, "character device"),
                  (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"))


def _write_target(path: Path, folder: bool) -> Tuple[Path, Optional[str]]:
    """Where a write of ``path`` goes: ``(target, None)`` to replace ``target`` atomically, or
    ``(path, kind)`` to write straight through a special file of that ``kind``.

    Symlinks are followed (``os.path.realpath``): the rename replaces the file they point to and
    the link stays a link. A FIFO, a device node or a socket (``/dev/null``, ``/dev/stdout``, a
    pipe) is written through, never replaced by a regular file.

    Raises:
        IsADirectoryError: a file write to an existing folder.
        NotADirectoryError: a folder write to a special file.
    """
    try:
        mode = os.stat(path).st_mode  # follows symlinks
    except FileNotFoundError:
        return Path(os.path.realpath(path)), None  # a new file (a dangling link: the file it names)
    except OSError:
        return path, None  # e.g. a parent that is a file: the write reports it
    if stat.S_ISDIR(mode) and not folder:
        raise IsADirectoryError(errno.EISDIR, f"{str(path)!r} is a folder; pass the path of a file to write "
                                f"(e.g. {str(path / 'NAME')!r}).")
    kind = next((name for test, name in _SPECIAL_KINDS if test(mode)), None)
    if kind is None:
        return Path(os.path.realpath(path)), None
    if folder:
        raise NotADirectoryError(errno.ENOTDIR, f"{str(path)!r} is a {kind}, not a folder; pass the path of a "
                                 "folder to write.")
    return path, kind


def check_output_path(path: PathLike, folder: bool = False) -> Path:
    """Check, before any work, that :func:`atomic_write` can write ``path`` (a file, or a
    folder with ``folder=True``): what the write would fail on at its end, reported first.

    Returns:
        ``path`` as a Path.

    Raises:
        IsADirectoryError: a file path that is an existing folder.
        NotADirectoryError: a folder path that is an existing file or special file, or a path
            under a file (``notes.txt/out.json``).
    """
    path = Path(path)
    target, _ = _write_target(path, folder)
    if folder and target.exists() and not target.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"{str(path)!r} is a file, not a folder; pass a new or existing "
                                 "folder (the file is left alone).")
    for parent in Path(os.path.realpath(path)).parents:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, f"{str(path)!r} lies under {str(parent)!r}, which is a "
                                         "file, not a folder; pass a path in a folder.")
            break
    return path


def _write_through(tmp: Path, path: Path, kind: str) -> None:
    """Copy the finished temporary ``tmp`` into the special file ``path`` (opened for writing:
    a FIFO waits for its reader)."""
    for stream in (sys.stdout, sys.stderr):  # `--json /dev/stdout`: what was printed before comes first
        with contextlib.suppress(AttributeError, OSError, ValueError):
            stream.flush()
    try:
        with open(tmp, "rb") as src, open(path, "wb") as dst:
            shutil.copyfileobj(src, dst)
    except OSError as e:
        raise type(e)(e.errno, f"writing {str(path)!r} (a {kind}, written straight through) failed: "
                               f"{e.strerror or e}.") from e


@contextlib.contextmanager
def atomic_write(path: PathLike, *, folder: bool = False, overwrite: bool = True,
                 description: str = "file") -> Iterator[Path]:
    """Write a file (or a folder) so readers see the old version or the new one, never a torn one.

    Yields a temporary path in the same folder as ``path`` (a hidden name starting with
    ``.{name}.``). When the ``with`` block finishes, what was written there is flushed to
    disk (``fsync``), given the permissions a new file would have, and renamed over
    ``path`` with ``os.replace`` (atomic on POSIX and Windows). If the block raises, the
    temporary is deleted and ``path`` is left as it was.

    Special targets: a symlink is followed, so the file it points to is replaced and the link
    stays; a FIFO, a device node or a socket (``/dev/null``, ``/dev/stdout``, a named pipe)
    is never replaced: the complete temporary (made in the system's temporary folder) is
    copied into it when the block finishes, which cannot be atomic. An existing folder
    as a file's ``path`` is refused before the block runs.

    Args:
        path: the file (or folder) to write.
        folder: yield a temporary *folder* to fill; a non-empty folder at ``path`` is
            replaced as a whole (moved aside, then deleted).
        overwrite: with ``folder=True``, raise instead of replacing a non-empty folder
            that appeared at ``path`` meanwhile.
        description: what is written (``"checkpoint"``), for error messages.

    Temporaries of earlier writes of ``path`` whose process was killed are removed first
    (:func:`remove_stale_temporaries`).

    Raises:
        OSError: with ``errno.ENOSPC`` when the disk fills up during the write; the
            message says so and that the previous version of ``path`` is intact.
        FileExistsError: ``folder=True``, ``overwrite=False`` and ``path`` is a non-empty
            folder or a file when the block finishes.
        IsADirectoryError: ``path`` is a folder (file writes), before the block runs.
        NotADirectoryError: ``folder=True`` and ``path`` is a special file.
    """
    path, special = _write_target(Path(path), folder)
    if special is not None:
        with _temporary(path, where=Path(tempfile.gettempdir())) as tmp:
            yield tmp
            _write_through(tmp, path, special)
        return
    existed = path.exists()
    with _temporary(path, folder) as tmp:
        try:
            yield tmp
            if folder:
                for file in tmp.rglob("*"):
                    if file.is_file():
                        _fsync_file(file)
                os.chmod(tmp, _new_file_mode(0o777))
                _replace_folder(tmp, path, overwrite)
            else:
                _fsync_file(tmp)
                os.chmod(tmp, _new_file_mode())
                os.replace(tmp, path)
        except (OSError, RuntimeError) as e:
            free = _free_bytes(path.parent)
            # a torch write that failed with (almost) nothing left on the disk: the disk filled up
            full = _is_disk_full(e) or (_torch_write_failed(e) and free is not None and free < _NEARLY_FULL)
            if not full:
                raise
            kept = (f"the previous {description} at {str(path)!r} is intact" if existed
                    else f"nothing was written at {str(path)!r}")
            raise OSError(
                errno.ENOSPC,
                f"Writing {str(path)!r} failed: the disk holding {str(path.parent)!r} is full"
                f"{'' if free is None else f' ({free / 2**20:.0f} MiB free)'}; {kept}, and the partial "
                f"{description} was deleted. Free some space (or write elsewhere) and save again. ({e})",
            ) from e


# ----------------------------------------------------------------------------- training checkpoints


def write_json(data: Any, path: PathLike) -> Path:
    """Write ``data`` as indented JSON, atomically. NaN/inf are written as ``null``."""

    def clean(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    path = Path(path)
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(clean(data), indent=2) + "\n")
    return path
