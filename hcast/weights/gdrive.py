"""H-CAST's released checkpoints from Google Drive, cached beside the hub's files.

The H-CAST authors host their checkpoints on Google Drive. Pretrained cfgs with a
``gdrive_id`` are downloaded once with ``gdown`` into huggingface_hub's assets cache
(:func:`gdrive_cache_path`), atomically (a checked temporary file renamed into place),
under a file lock, and honour ``HF_HUB_OFFLINE``.
"""
from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Iterator, Optional, Union

from hcast._io import atomic_write
from hcast.weights.safe_load import UnsafeCheckpointError, load_checkpoint_file

__all__ = [
    "GDRIVE_URL_TEMPLATE_ENV",
    "DEFAULT_GDRIVE_URL_TEMPLATE",
    "gdrive_cache_path",
    "download_gdrive_checkpoint",
]

PathLike = Union[str, os.PathLike]

#: Environment variable overriding where Google Drive file ids are fetched from
#: (``{id}`` is replaced by the file id). Used by the tests to point at a local server,
#: and by users behind a mirror.
GDRIVE_URL_TEMPLATE_ENV = "HCAST_GDRIVE_URL_TEMPLATE"
DEFAULT_GDRIVE_URL_TEMPLATE = "https://drive.google.com/uc?id={id}"

_GDRIVE_ID_RE = re.compile(r"[A-Za-z0-9_-]{10,}")


def _check_gdrive_id(file_id: str) -> str:
    if not isinstance(file_id, str) or not _GDRIVE_ID_RE.fullmatch(file_id):
        raise ValueError(
            f"gdrive_id: expected a Google Drive file id (letters, digits, '-' and '_', as in "
            f"https://drive.google.com/file/d/<id>/view), got {file_id!r}."
        )
    return file_id


def _check_filename(filename: str) -> str:
    if not filename or os.path.basename(filename) != filename or filename in (".", ".."):
        raise ValueError(f"filename: expected a plain file name without directories, got {filename!r}.")
    return filename


def gdrive_cache_path(file_id: str, filename: str = "checkpoint.pth", cache_dir: Optional[PathLike] = None) -> Path:
    """Where :func:`download_gdrive_checkpoint` keeps a Google Drive file.

    ``<cache_dir>/hcast/gdrive/<file_id>/<filename>``, with ``cache_dir`` defaulting to
    huggingface_hub's assets cache (``$HF_ASSETS_CACHE``, by default
    ``$HF_HOME/assets``, i.e. ``~/.cache/huggingface/assets``): the folder
    huggingface_hub provides for files libraries download from elsewhere
    (``huggingface_hub.cached_assets_path``). ``hf cache`` tools do not manage it:
    delete the folder to free the space.
    """
    from huggingface_hub import cached_assets_path, constants

    _check_gdrive_id(file_id)
    _check_filename(filename)
    # Read the constant at call time: huggingface_hub binds its own default at import.
    root = cache_dir if cache_dir is not None else constants.HF_ASSETS_CACHE
    return cached_assets_path("hcast", namespace="gdrive", subfolder=file_id, assets_dir=root) / filename


def _gdrive_url(file_id: str) -> str:
    template = os.environ.get(GDRIVE_URL_TEMPLATE_ENV) or DEFAULT_GDRIVE_URL_TEMPLATE
    if "{id}" not in template:
        raise ValueError(
            f"{GDRIVE_URL_TEMPLATE_ENV}: expected a URL template containing '{{id}}', got {template!r}. "
            f"Unset it to use {DEFAULT_GDRIVE_URL_TEMPLATE!r}."
        )
    return template.format(id=file_id)


def _remove_quietly(paths: Iterator[Path]) -> None:
    for p in paths:
        with contextlib.suppress(OSError):
            p.unlink()


def download_gdrive_checkpoint(
        file_id: str,
        filename: str = "checkpoint.pth",
        *,
        cache_dir: Optional[PathLike] = None,
        force_download: bool = False,
        quiet: bool = True,
) -> Path:
    """Download an original checkpoint from Google Drive into the cache, once.

    The file is fetched with ``gdown`` (which handles Google Drive's large-file
    confirmation) into a temporary file in the cache folder, checked to load with
    :func:`~hcast.weights.load_checkpoint_file`, and only then renamed into place
    (:func:`~hcast.weights.atomic_write`), so the cache never holds a partial or corrupt
    file. A file lock serialises concurrent downloads (e.g. one per DDP rank). The URL is
    ``$HCAST_GDRIVE_URL_TEMPLATE.format(id=file_id)``, by default
    ``https://drive.google.com/uc?id={id}``.

    Args:
        file_id: Google Drive file id (e.g. ``17ouiirBmBxD5wxOuWBi-SulVIzv8oHBL``).
        filename: name of the cached file.
        cache_dir: cache root (default: huggingface_hub's assets cache, see
            :func:`gdrive_cache_path`).
        force_download: download even if a cached file exists.
        quiet: silence gdown's progress output.

    Returns:
        Path of the cached file.

    Raises:
        ValueError: malformed ``file_id`` or ``filename``.
        huggingface_hub.errors.OfflineModeIsEnabled: ``HF_HUB_OFFLINE=1`` and the file is
            not cached.
        OSError: the download failed or did not give a loadable checkpoint.
        ImportError: gdown is not installed.
    """
    from huggingface_hub import constants
    from huggingface_hub.errors import OfflineModeIsEnabled

    target = gdrive_cache_path(file_id, filename, cache_dir=cache_dir)
    if target.is_file() and not force_download:
        return target
    if constants.is_offline_mode():
        raise OfflineModeIsEnabled(
            f"Cannot download Google Drive file {file_id!r}: HF_HUB_OFFLINE=1 is set and it is not cached at "
            f"{str(target)!r}. Unset HF_HUB_OFFLINE to download it, copy the file to that path, or pass "
            f"pretrained_cfg_overlay=dict(file=PATH) with a local copy."
        )
    try:
        import gdown
    except ImportError as e:
        raise ImportError("Downloading H-CAST's Google Drive checkpoints needs gdown: `pip install gdown`.") from e
    from filelock import FileLock

    url = _gdrive_url(file_id)
    with FileLock(str(target) + ".lock"):
        if target.is_file() and not force_download:  # another process finished it meanwhile
            return target
        tmp = None
        try:
            with atomic_write(target) as tmp:
                try:
                    gdown.download(url=url, output=str(tmp), quiet=quiet, use_cookies=False)
                except Exception as e:  # gdown raises requests/gdown errors of several kinds
                    raise OSError(
                        f"Downloading Google Drive file {file_id!r} from {url} failed ({type(e).__name__}: {e}). "
                        f"Retry later, or download https://drive.google.com/file/d/{file_id} yourself and pass "
                        f"pretrained_cfg_overlay=dict(file=PATH)."
                    ) from e
                try:
                    load_checkpoint_file(tmp)
                except UnsafeCheckpointError:
                    raise
                except Exception as e:
                    raise OSError(
                        f"Google Drive file {file_id!r} from {url} did not load as a checkpoint "
                        f"({type(e).__name__}: {e}); nothing was cached. Google Drive may have returned an error "
                        f"page (quota exceeded): retry later, or download it yourself and pass "
                        f"pretrained_cfg_overlay=dict(file=PATH)."
                    ) from e
        finally:
            if tmp is not None:  # gdown's own partial files next to our temporary one
                _remove_quietly(p for p in target.parent.glob(tmp.name + "*"))
    return target
