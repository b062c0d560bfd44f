"""Loading, downloading and sharing hcast weights.

Everything here is the *builder's* side of pretrained weights, in timm's sense: the
models never load files themselves. Model files call :func:`build_model_with_hcast_cfg`
exactly where timm models call :func:`timm.models.build_model_with_cfg`; it adds

* safe loading of the original repositories' ``.pth`` pickles (CAST's DeiT and MoCo v3
  training scripts, H-CAST's ``deit/main_*hier.py``): ``torch.load(weights_only=True)``
  with only the harmless globals those files hold (:data:`SAFE_CHECKPOINT_GLOBALS`).
  A pickle that would import anything else is refused with
  :class:`UnsafeCheckpointError`; nothing in it is executed.
* H-CAST's released checkpoints, which live on Google Drive: pretrained cfgs with a
  ``gdrive_id`` are downloaded once with ``gdown`` into huggingface_hub's assets cache
  (:func:`gdrive_cache_path`), atomically, and honour ``HF_HUB_OFFLINE``.
* pretrained cfg dicts with keys timm's :class:`~timm.models.PretrainedCfg` does not
  know (e.g. read back from a hub ``config.json``) are kept instead of rejected.

Hub downloads themselves are huggingface_hub's (``hf_hub_download`` and its cache,
offline mode, errors such as ``EntryNotFoundError``); sharing goes through timm's
``save_for_hf`` / ``push_to_hf_hub`` (see :func:`save_for_hf` for models whose
arguments hold a :class:`~hcast.hierarchy.Taxonomy`).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import pathlib
import pickle
import re
import secrets
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Union

import torch
from torch import nn

from timm.models import PretrainedCfg, build_model_with_cfg, load_pretrained
from timm.models._builder import resolve_pretrained_cfg
from timm.models._hub import hf_split

_logger = logging.getLogger(__name__)

__all__ = [
    "SAFE_CHECKPOINT_GLOBALS",
    "UnsafeCheckpointError",
    "checkpoint_safe_globals",
    "load_checkpoint_file",
    "unwrap_state_dict",
    "gdrive_cache_path",
    "download_gdrive_checkpoint",
    "resolve_checkpoint_file",
    "build_model_with_hcast_cfg",
    "save_for_hf",
    "GDRIVE_URL_TEMPLATE_ENV",
    "DEFAULT_GDRIVE_URL_TEMPLATE",
]

PathLike = Union[str, os.PathLike]

#: Environment variable overriding where Google Drive file ids are fetched from
#: (``{id}`` is replaced by the file id). Used by the tests to point at a local server,
#: and by users behind a mirror.
GDRIVE_URL_TEMPLATE_ENV = "HCAST_GDRIVE_URL_TEMPLATE"
DEFAULT_GDRIVE_URL_TEMPLATE = "https://drive.google.com/uc?id={id}"

_GDRIVE_ID_RE = re.compile(r"[A-Za-z0-9_-]{10,}")


# --------------------------------------------------------------------------------------
# Safe unpickling
# --------------------------------------------------------------------------------------

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
        safetensors a flat ``dict[str, Tensor]``. See :func:`unwrap_state_dict`.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        UnsafeCheckpointError: the pickle references a global outside the allowlist
            (it could run code if unpickled); the message names the globals and how to
            convert a file you trust.
        ValueError: the file is not a readable checkpoint (truncated, or not a pickle).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint file not found: {str(path)!r}. Check the `file=` path you passed.")
    if path.name.endswith(".safetensors"):
        import safetensors.torch

        device = str(map_location) if isinstance(map_location, torch.device) else map_location
        return safetensors.torch.load_file(str(path), device=device)
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
                f"name looks like this)."
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


def _unpickler_detail(error: Exception) -> str:
    """The line of torch's message that says what was refused (the rest of it suggests
    ``weights_only=False``, which hcast never does for the user)."""
    for line in str(error).splitlines():
        if "WeightsUnpickler error" in line:
            return " torch: " + line.strip()
    return ""


def unwrap_state_dict(checkpoint: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
    """Return the model weights of a checkpoint in the original repositories' format.

    Takes ``checkpoint["model"]`` (DeiT / H-CAST training scripts) or
    ``checkpoint["state_dict"]`` (MoCo v3); a dict holding only tensors is returned as
    is. ``model_ema`` is deliberately ignored: the original evaluation and fine-tuning
    code read ``model`` (timm's own ``load_state_dict`` would prefer the EMA copy).
    Key prefixes (``module.``, ``module.base_encoder.``) are left to the model's
    ``checkpoint_filter_fn``.

    Raises:
        TypeError: ``checkpoint`` is not a mapping.
        ValueError: no weights found; the message lists the top-level keys.
    """
    if not isinstance(checkpoint, Mapping):
        raise TypeError(
            f"checkpoint: expected a dict (a state dict, or one holding 'model' or 'state_dict'), "
            f"got {type(checkpoint).__name__}."
        )
    for key in ("model", "state_dict"):
        inner = checkpoint.get(key)
        if isinstance(inner, Mapping):
            return dict(inner)
    if all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return dict(checkpoint)
    raise ValueError(
        f"checkpoint: found no weights; expected a 'model' or 'state_dict' entry or a flat dict of tensors, "
        f"got top-level keys {sorted(map(str, checkpoint))[:20]}. Pass the entry that holds the weights."
    )


def _unwrapping_filter(filter_fn: Optional[Callable]) -> Callable:
    """Wrap a model's ``checkpoint_filter_fn`` so it always sees a flat state dict.

    timm hands hub ``.pth`` files to the filter as loaded (``{'model': ..., 'args': ...}``)."""
    def fn(state_dict: Mapping[str, Any], model: nn.Module) -> Dict[str, Any]:
        state_dict = unwrap_state_dict(state_dict)
        return filter_fn(state_dict, model) if filter_fn is not None else state_dict
    return fn


# --------------------------------------------------------------------------------------
# Pretrained cfgs with hcast's keys
# --------------------------------------------------------------------------------------

_EXTRA_CFG_CLASSES: Dict[tuple, type] = {}


def _as_dataclass_cfg(cfg: Union[None, str, Mapping[str, Any], PretrainedCfg]) -> Union[None, str, PretrainedCfg]:
    """A pretrained cfg dict as a :class:`~timm.models.PretrainedCfg` dataclass that keeps every key.

    timm builds ``PretrainedCfg(**cfg)`` from dicts, which fails on keys it does not know
    (a model's own, e.g. CAST's superpixel settings read back from a hub
    ``config.json``). Those keys are kept in a subclass made for them. Model files with
    their own cfg class (``hcast.models.cast.CASTPretrainedCfg``) convert first; strings
    (pretrained tags), ``None`` and dataclasses pass through.
    """
    if cfg is None or isinstance(cfg, (str, PretrainedCfg)):
        return cfg
    if not isinstance(cfg, Mapping):
        raise TypeError(f"pretrained_cfg: expected a dict, a tag string or a PretrainedCfg, got {type(cfg).__name__}.")
    known = {f.name for f in dataclasses.fields(PretrainedCfg)}
    extra = tuple(sorted(k for k in cfg if k not in known))
    cls = PretrainedCfg
    if extra:
        if extra not in _EXTRA_CFG_CLASSES:
            cls = dataclasses.make_dataclass("PretrainedCfgWithExtras", [(k, Any, None) for k in extra],
                                             bases=(PretrainedCfg,))
            cls.__module__ = __name__
            _EXTRA_CFG_CLASSES[extra] = cls
        cls = _EXTRA_CFG_CLASSES[extra]
    values = {k: (tuple(v) if isinstance(v, list) and k in _TUPLE_KEYS else v) for k, v in cfg.items()}
    return cls(**values)


# JSON turns tuples into lists; timm compares some of these with tuples.
_TUPLE_KEYS = {
    "input_size", "test_input_size", "min_input_size", "mean", "std", "pool_size", "test_pool_size",
    "level_classes", "label_names", "paper_ids", "notes",
}


# --------------------------------------------------------------------------------------
# Google Drive (H-CAST's released checkpoints)
# --------------------------------------------------------------------------------------

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
    :func:`load_checkpoint_file`, and only then renamed into place (``os.replace``), so
    the cache never holds a partial or corrupt file. A file lock serialises concurrent
    downloads (e.g. one per DDP rank). The URL is
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
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.incomplete")
        try:
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
                    f"({type(e).__name__}: {e}); nothing was cached. Google Drive may have returned an error page "
                    f"(quota exceeded): retry later, or download it yourself and pass pretrained_cfg_overlay="
                    f"dict(file=PATH)."
                ) from e
            os.replace(tmp, target)
        finally:
            # our temporary file and gdown's own partial files next to it
            _remove_quietly(p for p in target.parent.glob(tmp.name + "*"))
    return target


# --------------------------------------------------------------------------------------
# Builder
# --------------------------------------------------------------------------------------

def resolve_checkpoint_file(pretrained_cfg: PretrainedCfg, cache_dir: Optional[PathLike] = None) -> Optional[Path]:
    """Local path of a *pickle* checkpoint hcast loads itself, or ``None``.

    Follows timm's source priority (in-memory ``state_dict``, then ``file``, then hub),
    with ``gdrive_id`` before the hub. Returns ``None`` where timm's own loading is safe
    and right: in-memory state dicts, safetensors files, ``hf-hub:``/``local-dir:``
    repos in timm's format, hub safetensors files, URLs. Hub pickles
    (``hf_hub_filename`` ending in ``.pth``) are downloaded with ``hf_hub_download``
    (its cache, offline mode and errors) and returned.
    """
    cfg = pretrained_cfg
    if cfg.state_dict is not None or cfg.source in ("hf-hub", "local-dir"):
        return None
    if cfg.file:
        return None if str(cfg.file).endswith(".safetensors") else Path(cfg.file)
    gdrive_id = getattr(cfg, "gdrive_id", None)
    if gdrive_id:
        return download_gdrive_checkpoint(gdrive_id, getattr(cfg, "gdrive_filename", None) or "checkpoint.pth")
    if cfg.hf_hub_id and cfg.hf_hub_filename and not cfg.hf_hub_filename.endswith(".safetensors"):
        from huggingface_hub import hf_hub_download

        repo_id, revision = hf_split(cfg.hf_hub_id)
        return Path(hf_hub_download(repo_id, cfg.hf_hub_filename, revision=revision, cache_dir=cache_dir))
    return None


def build_model_with_hcast_cfg(
        model_cls: Callable[..., nn.Module],
        variant: str,
        pretrained: bool,
        pretrained_cfg: Union[None, str, Mapping[str, Any], PretrainedCfg] = None,
        pretrained_cfg_overlay: Optional[Mapping[str, Any]] = None,
        pretrained_filter_fn: Optional[Callable] = None,
        pretrained_strict: bool = True,
        cache_dir: Optional[PathLike] = None,
        **kwargs: Any,
) -> nn.Module:
    """Drop-in for :func:`timm.models.build_model_with_cfg` that loads original checkpoints safely.

    Same arguments and result as timm's builder, which does the work; in addition:

    * pretrained cfg dicts may carry keys timm does not know (kept, see
      ``_as_dataclass_cfg``), e.g. read back from a hub ``config.json``;
    * pickle sources (``file=...pth``, hub ``hf_hub_filename`` ``.pth``, ``gdrive_id``)
      are loaded by :func:`load_checkpoint_file` (``weights_only=True`` plus
      :data:`SAFE_CHECKPOINT_GLOBALS`), the weights taken by :func:`unwrap_state_dict`
      (``model``, never ``model_ema``), and handed to timm's ``load_pretrained`` with
      the model's filter, so classifier and input-conv adaptation stay timm's;
    * the filter always receives a flat state dict;
    * whatever timm still unpickles itself (``pytorch_model.bin`` in ``hf-hub:`` repos,
      URLs) runs inside :func:`checkpoint_safe_globals`.

    ``model.pretrained_cfg`` keeps the source as given (``file``, ``hf_hub_id``,
    ``gdrive_id``); the loaded tensors are not stored in it.
    """
    cfg = resolve_pretrained_cfg(
        variant, pretrained_cfg=_as_dataclass_cfg(pretrained_cfg), pretrained_cfg_overlay=pretrained_cfg_overlay)
    filter_fn = _unwrapping_filter(pretrained_filter_fn)
    common = dict(pretrained_filter_fn=filter_fn, pretrained_strict=pretrained_strict, cache_dir=cache_dir)
    ckpt_file = resolve_checkpoint_file(cfg, cache_dir=cache_dir) if pretrained else None
    if ckpt_file is None:
        with checkpoint_safe_globals():
            return build_model_with_cfg(model_cls, variant, pretrained, pretrained_cfg=cfg, **common, **kwargs)

    state_dict = unwrap_state_dict(load_checkpoint_file(ckpt_file))
    if kwargs.get("features_only", False):
        # the feature wrapper renames modules, so weights must load inside timm's builder
        model = build_model_with_cfg(
            model_cls, variant, True, pretrained_cfg=dataclasses.replace(cfg, state_dict=state_dict, source=None),
            **common, **kwargs)
        model.pretrained_cfg.pop("state_dict", None)
        model.pretrained_cfg["source"] = cfg.source
        return model
    model = build_model_with_cfg(model_cls, variant, False, pretrained_cfg=cfg, **common, **kwargs)
    load_pretrained(
        model,
        pretrained_cfg=dict(model.pretrained_cfg, state_dict=state_dict, source=None),
        num_classes=getattr(model, "num_classes", kwargs.get("num_classes", 1000)),
        in_chans=kwargs.get("in_chans", 3),
        filter_fn=filter_fn,
        strict=pretrained_strict,
    )
    _logger.info(f"Loaded pretrained weights for {variant} from {str(ckpt_file)!r}")
    return model


# --------------------------------------------------------------------------------------
# Sharing
# --------------------------------------------------------------------------------------

def save_for_hf(
        model: nn.Module,
        save_directory: PathLike,
        taxonomy: Any = None,
        model_config: Optional[Mapping[str, Any]] = None,
        model_args: Optional[Mapping[str, Any]] = None,
        **kwargs: Any,
) -> Path:
    """Save ``config.json`` + ``model.safetensors`` that ``timm.create_model("hf-hub:...")`` loads.

    :func:`timm.models.save_for_hf` with safetensors, plus hcast's conventions for
    hierarchical models: the taxonomy (argument, or the model's ``taxonomy``) is stored
    as ``config.json["taxonomy"]`` (:meth:`hcast.hierarchy.Taxonomy.to_dict`; read it
    back with ``Taxonomy.from_dict``), the finest level's class names as timm's
    ``label_names``, and ``model_args`` get ``level_classes`` instead of the
    (non-JSON) Taxonomy object. The pretrained cfg's hcast keys (superpixel method and
    count, level classes) are written with it, as timm writes every cfg key. Upload
    the folder with ``huggingface_hub.upload_folder``, or call
    :func:`timm.models.push_to_hf_hub` with the same ``model_config``/``model_args``.

    Returns:
        ``save_directory`` as a Path.
    """
    from timm.models import save_for_hf as timm_save_for_hf

    model_config = dict(model_config or {})
    model_args = dict(model_args or {})
    recorded = getattr(model, "_model_args", {})
    if taxonomy is None:
        taxonomy = model_args.get("taxonomy", recorded.get("taxonomy", getattr(model, "taxonomy", None)))
    if isinstance(taxonomy, Mapping):
        from hcast.hierarchy import Taxonomy

        taxonomy = Taxonomy.from_dict(taxonomy)
    if "taxonomy" in recorded or "taxonomy" in model_args:
        model_args["taxonomy"] = None  # JSON null: create_model drops None arguments
    if taxonomy is not None:
        model_args.setdefault("level_classes", list(taxonomy.num_classes))
        model_config.setdefault("taxonomy", taxonomy.to_dict())
        if taxonomy.names[0] is not None:
            model_config.setdefault("label_names", list(taxonomy.names[0]))
    kwargs.setdefault("safe_serialization", True)
    timm_save_for_hf(model, str(save_directory), model_config=model_config, model_args=model_args, **kwargs)
    return Path(save_directory)
