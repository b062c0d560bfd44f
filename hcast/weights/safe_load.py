"""Safe loading of checkpoint files: a restricted unpickler for the original ``.pth`` files.

The original repositories (CAST's DeiT and MoCo v3 training scripts, H-CAST's
``deit/main_*hier.py``) save their checkpoints with ``torch.save``: pickles that may
reference any Python global. hcast reads them with ``torch.load(weights_only=True)``
plus only the harmless globals those files hold (:data:`SAFE_CHECKPOINT_GLOBALS`). A
pickle that would import anything else is refused with :class:`UnsafeCheckpointError`;
nothing in it is executed. ``.safetensors`` files are read with safetensors.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import pathlib
import pickle
import re
from pathlib import Path
from typing import Any, Iterator, List, Optional, Union

import torch

__all__ = [
    "SAFE_CHECKPOINT_GLOBALS",
    "UnsafeCheckpointError",
    "checkpoint_safe_globals",
    "load_checkpoint_file",
    "check_cached_file",
    "cache_hint",
]

PathLike = Union[str, os.PathLike]


def _numpy_scalar_globals() -> List[Any]:
    """numpy scalars (e.g. an accuracy stored as ``np.float64``) pickle as
    ``numpy.core.multiarray.scalar(dtype, bytes)``: rebuilding one only copies bytes."""
    try:
        import numpy as np
    except ImportError:  # numpy is a dependency, but loading must not need it
        return []
    core = getattr(np, "_core", None) or np.core
    out: List[Any] = [core.multiarray.scalar, np.dtype]
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25 pickles dtypes by class
    if dtypes is not None:
        for name in dir(dtypes):
            cls = getattr(dtypes, name)
            # Object and void dtypes can wrap arbitrary Python objects: leave them out.
            if name.endswith("DType") and name not in ("ObjectDType", "VoidDType") and isinstance(cls, type):
                out.append(cls)
    return out


#: Globals (besides tensors, containers and numbers, which ``weights_only`` always
#: allows) that the original training scripts pickle next to the weights:
#: ``argparse.Namespace`` (DeiT / H-CAST save their command line as ``args``), numpy
#: scalars and dtypes, and POSIX paths (a path in ``args``). None of them runs code
#: when rebuilt.
SAFE_CHECKPOINT_GLOBALS: List[Any] = [
    argparse.Namespace,
    pathlib.PosixPath,
    pathlib.PurePosixPath,
    pathlib.PureWindowsPath,
    *_numpy_scalar_globals(),
]


class UnsafeCheckpointError(pickle.UnpicklingError, ValueError):
    """A checkpoint pickle needs globals outside :data:`SAFE_CHECKPOINT_GLOBALS`.

    Raised *instead of* unpickling: nothing from the file has been executed.
    """


@contextlib.contextmanager
def checkpoint_safe_globals() -> Iterator[None]:
    """Context in which ``torch.load(weights_only=True)`` also accepts
    :data:`SAFE_CHECKPOINT_GLOBALS` (``torch.serialization.safe_globals``; the global
    allowlist is restored on exit, nothing is registered process-wide)."""
    with torch.serialization.safe_globals(SAFE_CHECKPOINT_GLOBALS):
        yield


def _unsafe_globals(path: PathLike) -> List[str]:
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # old-format (non-zip) pickles are not inspectable this way
        return []


def load_checkpoint_file(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Any:
    """Load a checkpoint file safely.

    ``.safetensors`` files are read with safetensors. Anything else is a pickle
    (``.pth``, ``.pth.tar``, ``.bin``) and is read with ``torch.load(weights_only=True)``
    plus :data:`SAFE_CHECKPOINT_GLOBALS` only, which is enough for the original CAST
    (DeiT, MoCo v3) and H-CAST checkpoints, including their ``args`` Namespace.

    Args:
        path: checkpoint file.
        map_location: device the tensors are loaded onto.

    Returns:
        Whatever the file holds: for the original repositories a dict with ``model``
        (DeiT-style) or ``state_dict`` (MoCo-style) plus training state; for
        safetensors a flat ``dict[str, Tensor]``. See
        :func:`hcast.weights.original.unwrap_state_dict`.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        UnsafeCheckpointError: the pickle references a global outside the allowlist
            (it could run code if unpickled); the message names the globals and how to
            convert a file you trust.
        ValueError: the file is empty, truncated, not a checkpoint, or a hub cache entry
            whose SHA-256 differs from the one it was downloaded under; the message names
            the file and, for a cached download, how to remove it so it is fetched again.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint file not found: {str(path)!r}. Check the `file=` path you passed.")
    check_cached_file(path)
    if path.stat().st_size == 0:
        raise ValueError(f"{str(path)!r} is empty (0 bytes), not a checkpoint: an interrupted copy or download? "
                         f"Replace it with the complete file.{cache_hint(path)}")
    if path.name.endswith(".safetensors"):
        import safetensors.torch

        device = str(map_location) if isinstance(map_location, torch.device) else map_location
        try:
            return safetensors.torch.load_file(str(path), device=device)
        except Exception as e:  # safetensors raises SafetensorError, OSError or others for bad files
            raise ValueError(
                f"{str(path)!r} is not a readable safetensors file ({type(e).__name__}: {e}): it is truncated, "
                f"or not a safetensors file at all. Replace it with the complete file.{cache_hint(path)}"
            ) from None
    try:
        with checkpoint_safe_globals():
            return torch.load(str(path), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        names = _unsafe_globals(path)
        if not names and "global" not in str(e).lower():
            raise ValueError(
                f"{str(path)!r} is not a PyTorch checkpoint that torch.load(weights_only=True) can read "
                f"({_unpickler_detail(e).strip() or type(e).__name__}); nothing from it was executed. Check that "
                f"the file is complete and is the checkpoint you meant (an HTML error page saved under a .pth "
                f"name looks like this).{cache_hint(path)}"
            ) from None
        what = f"the global(s) {', '.join(names)}" if names else "globals"
        raise UnsafeCheckpointError(
            f"Refusing to unpickle {str(path)!r}: it needs {what} outside the allowlist hcast loads checkpoints "
            f"with (torch.load(weights_only=True) plus argparse.Namespace, numpy scalars and paths). Unpickling "
            f"them could run arbitrary code, so nothing from this file was executed. If you trust the file, "
            f"convert it once in a separate Python session: `ckpt = torch.load(path, weights_only=False)`, then "
            f"`safetensors.torch.save_file(ckpt['model'], 'weights.safetensors')` (use ckpt['state_dict'] for "
            f"MoCo files) and load that file instead; if the global is harmless, allow it with "
            f"torch.serialization.add_safe_globals([...]).{_unpickler_detail(e)}"
        ) from None
    except (RuntimeError, EOFError, ValueError) as e:
        # a truncated zip ("failed finding central directory"), a truncated legacy pickle, bad records
        raise ValueError(
            f"{str(path)!r} is not a readable PyTorch checkpoint ({type(e).__name__}: {str(e).strip()[:200]}): it "
            f"is truncated or damaged. Replace it with the complete file.{cache_hint(path)}"
        ) from None


def _hub_cache_blob(path: Path) -> Optional[Path]:
    """The blob behind a huggingface_hub cache entry (``snapshots/<rev>/<file>`` links to
    ``blobs/<etag>``), or ``None`` for other files."""
    try:
        if path.is_symlink():
            blob = path.resolve()
            if blob.parent.name == "blobs":
                return blob
        elif path.parent.parent.name == "snapshots" and path.parent.parent.parent.joinpath("blobs").is_dir():
            return path  # a cache without symlinks (Windows) stores files in the snapshot
    except OSError:
        pass
    return None


def _in_assets_cache(path: Path) -> bool:
    try:
        from huggingface_hub import constants

        return Path(constants.HF_ASSETS_CACHE).resolve() in path.resolve().parents
    except Exception:
        return False


def cache_hint(path: PathLike) -> str:
    """How to remove ``path`` when it is a cached download (hub or Google Drive), so that
    the next load fetches it again; ``""`` for other files."""
    path = Path(path)
    blob = _hub_cache_blob(path)
    if blob is not None:
        files = f"{str(path)!r} and {str(blob)!r}" if blob != path else repr(str(path))
        return (f" It is a corrupt huggingface_hub cache entry: delete {files} (or run `hf cache delete`, or pass "
                f"force_download=True to hf_hub_download) and load again to download it anew.")
    if _in_assets_cache(path):
        return f" It is a corrupt cached download: delete {str(path)!r} and load again to download it anew."
    return ""


def check_cached_file(path: PathLike) -> None:
    """Check a huggingface_hub cache entry against the hash it is stored under.

    Files the Hub stores with Git LFS (weights) are cached as ``blobs/<sha256>``: when
    ``path`` is such an entry, its SHA-256 must equal the name. Other files pass.

    Raises:
        ValueError: the cached file is corrupt (the hash differs); the message says how
            to remove it so that the next load downloads it again.
    """
    path = Path(path)
    blob = _hub_cache_blob(path)
    if blob is None or not _SHA256_RE.fullmatch(blob.name):
        return
    digest = hashlib.sha256()
    with open(blob, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    if digest.hexdigest() != blob.name:
        raise ValueError(
            f"{str(path)!r} does not match the SHA-256 it was downloaded under ({blob.name[:12]}..., the file's is "
            f"{digest.hexdigest()[:12]}..., {blob.stat().st_size} bytes): the cached copy is corrupt.{cache_hint(path)}"
        )


_SHA256_RE = re.compile(r"[0-9a-f]{64}")


def _unpickler_detail(error: Exception) -> str:
    """The line of torch's message that says what was refused (the rest of it suggests
    ``weights_only=False``, which hcast never does for the user)."""
    for line in str(error).splitlines():
        if "WeightsUnpickler error" in line:
            return " torch: " + line.strip()
    return ""
