"""The builder: timm's ``build_model_with_cfg`` plus safe loading of the original checkpoints.

Model files call :func:`build_model_with_hcast_cfg` exactly where timm models call
:func:`timm.models.build_model_with_cfg`; the models never load files themselves. It adds

* safe loading of the original repositories' ``.pth`` pickles
  (:func:`hcast.weights.load_checkpoint_file`), whose weights are taken out by
  :func:`hcast.weights.original.unwrap_state_dict` before the model's filter sees them;
* H-CAST's Google Drive tags (``gdrive_id`` in the pretrained cfg,
  :mod:`hcast.weights.gdrive`);
* pretrained cfg dicts with keys timm's :class:`~timm.models.PretrainedCfg` does not
  know (e.g. read back from a hub ``config.json``), kept instead of rejected
  (:func:`as_pretrained_cfg`).

Hub downloads themselves are huggingface_hub's (``hf_hub_download`` and its cache,
offline mode, errors such as ``EntryNotFoundError``).
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Type, Union

import torch
from torch import nn

from timm.models import PretrainedCfg, build_model_with_cfg, load_pretrained
from timm.models._builder import resolve_pretrained_cfg
from timm.models._hub import hf_split

from hcast.weights.gdrive import download_gdrive_checkpoint
from hcast.weights.original import unwrap_state_dict
from hcast.weights.safe_load import checkpoint_safe_globals, load_checkpoint_file

_logger = logging.getLogger(__name__)

__all__ = [
    "MAX_MODEL_ELEMENTS",
    "as_pretrained_cfg",
    "check_model_args",
    "resolve_checkpoint_file",
    "build_model_with_hcast_cfg",
]

PathLike = Union[str, os.PathLike]

# JSON turns tuples into lists; timm compares some of these with tuples.
_TUPLE_KEYS = frozenset({
    "input_size", "test_input_size", "min_input_size", "mean", "std", "pool_size", "test_pool_size",
    "level_classes", "label_names", "paper_ids", "notes",
})

_EXTRA_CFG_CLASSES: Dict[Tuple[type, Tuple[str, ...]], type] = {}


def as_pretrained_cfg(cfg: Union[None, str, Mapping[str, Any], PretrainedCfg],
                      cls: Type[PretrainedCfg] = PretrainedCfg) -> Union[None, str, PretrainedCfg]:
    """A pretrained cfg dict as a ``cls`` dataclass that keeps every key.

    timm builds ``PretrainedCfg(**cfg)`` from dicts, which fails on keys it does not know
    (a model's own, e.g. CAST's superpixel settings read back from a hub
    ``config.json``). Keys ``cls`` does not have are kept in a subclass of ``cls`` made
    for them; lists that JSON made of tuples (``input_size``, ``mean``,
    ``level_classes``, ...) become tuples again. Strings (pretrained tags), ``None`` and
    dataclasses pass through unchanged.

    Args:
        cfg: the pretrained cfg.
        cls: the model family's cfg class (:class:`timm.models.PretrainedCfg` or a
            subclass such as :class:`hcast.models.cast.CASTPretrainedCfg`).

    Raises:
        TypeError: ``cfg`` is of another type.
    """
    if cfg is None or isinstance(cfg, (str, PretrainedCfg)):
        return cfg
    if not isinstance(cfg, Mapping):
        raise TypeError(f"pretrained_cfg: expected a dict, a tag string or a PretrainedCfg, got {type(cfg).__name__}.")
    known = {f.name for f in dataclasses.fields(cls)}
    extra = tuple(sorted(k for k in cfg if k not in known))
    if extra:
        if (cls, extra) not in _EXTRA_CFG_CLASSES:
            made = dataclasses.make_dataclass(f"{cls.__name__}WithExtras", [(k, Any, None) for k in extra], bases=(cls,))
            made.__module__ = __name__
            _EXTRA_CFG_CLASSES[(cls, extra)] = made
        cls = _EXTRA_CFG_CLASSES[(cls, extra)]
    values = {k: (tuple(v) if isinstance(v, list) and k in _TUPLE_KEYS else v) for k, v in cfg.items()}
    return cls(**values)


def _unwrapping_filter(filter_fn: Optional[Callable]) -> Callable:
    """Wrap a model's ``checkpoint_filter_fn`` so it always sees a flat state dict.

    timm hands hub ``.pth`` files to the filter as loaded (``{'model': ..., 'args': ...}``)."""
    def fn(state_dict: Mapping[str, Any], model: nn.Module) -> Dict[str, Any]:
        state_dict = unwrap_state_dict(state_dict)
        return filter_fn(state_dict, model) if filter_fn is not None else state_dict
    return fn


# timm's order of preference for the weights in a model folder (timm.models._hub._PREFERRED_FILES)
_FOLDER_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth")


def _folder_weights(folder: Path) -> Optional[Path]:
    """The weights file of a model folder, or ``None`` (timm then looks further and reports)."""
    return next((folder / n for n in _FOLDER_WEIGHTS if (folder / n).is_file()), None)


def _hub_repo_weights(cfg: PretrainedCfg, cache_dir: Optional[PathLike]) -> Path:
    """Download a hub repo's weights as timm would: ``model.safetensors``, else the cfg's
    ``hf_hub_filename`` or ``pytorch_model.bin``."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    repo_id, revision = hf_split(cfg.hf_hub_id)
    filename = cfg.hf_hub_filename or "pytorch_model.bin"
    if not filename.endswith(".safetensors"):
        try:
            return Path(hf_hub_download(repo_id, "model.safetensors", revision=revision, cache_dir=cache_dir))
        except EntryNotFoundError:
            pass
    return Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir))


def _config_name(cfg: PretrainedCfg) -> str:
    """Where a model folder's or hub repo's ``config.json`` is, for messages."""
    if cfg.source == "local-dir":
        return repr(str(Path(cfg.file) / "config.json"))
    return f"the config.json of hf-hub:{cfg.hf_hub_id}"


# --------------------------------------------------------------------------------------
# Model arguments read from a config.json
# --------------------------------------------------------------------------------------

#: Most elements (parameters and buffers) a model built from a folder's or hub repo's
#: ``config.json`` may have: 2**31, 8 GiB in float32 (CAST-B has 0.09e9, ViT-g 1e9).
MAX_MODEL_ELEMENTS = 2 ** 31
_MAX_INT = 2 ** 20          # any integer argument (class counts, widths, sizes)
_MAX_BLOCKS = 256           # depth, and the sum of depths
_MAX_IMAGE_SIDE = 8192      # img_size and the pretrained cfg's input sizes, per side
_MAX_SEQUENCE = 64          # length of a list argument
# build_model_with_cfg's own keyword arguments (not the model's)
_BUILDER_ARGS = frozenset({"features_only", "out_indices", "feature_cls", "feature_cfg", "output_stride",
                           "flatten_sequential", "kwargs_filter", "model_cfg", "pretrained_model_args"})


def _known_args(model_cls: Callable[..., nn.Module]) -> Optional[set]:
    """Keyword arguments ``model_cls`` accepts (following ``**kwargs`` up the classes), or
    ``None`` when it accepts any."""
    if not isinstance(model_cls, type):
        return None
    names: set = set()
    for cls in model_cls.__mro__:
        if "__init__" not in cls.__dict__ or cls is nn.Module or cls is object:
            continue
        params = inspect.signature(cls.__dict__["__init__"]).parameters.values()
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return names
    return None


def _check_value(name: str, value: Any, where: str, shown: Any = None) -> None:
    def bad(expected: str) -> ValueError:
        whole = value if shown is None else shown
        return ValueError(f"{where}: model argument {name}={whole!r:.200} is out of bounds ({expected}); hcast "
                          f"refuses it before allocating anything. Fix model_args there (or rewrite the folder "
                          f"with hcast.weights.save_for_hf).")

    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, int):
        if abs(value) > _MAX_INT:
            raise bad(f"integers up to {_MAX_INT}")
    elif isinstance(value, float):
        if not math.isfinite(value) or abs(value) > _MAX_INT:
            raise bad(f"finite numbers up to {_MAX_INT}")
    elif isinstance(value, (list, tuple)):
        if len(value) > _MAX_SEQUENCE:
            raise bad(f"lists of up to {_MAX_SEQUENCE} entries")
        for item in value:
            _check_value(name, item, where, value if shown is None else shown)
    if name in ("img_size", "input_size", "test_input_size"):
        sides = [value] if isinstance(value, int) else list(value)[-2:] if isinstance(value, (list, tuple)) else []
        if any(isinstance(v, int) and not 0 < v <= _MAX_IMAGE_SIDE for v in sides):
            raise bad(f"image sides of 1 to {_MAX_IMAGE_SIDE} pixels")
    if name in ("depth", "depths"):
        total = value if isinstance(value, int) else sum(v for v in value if isinstance(v, int))
        if total > _MAX_BLOCKS:
            raise bad(f"at most {_MAX_BLOCKS} blocks")


def check_model_args(model_cls: Callable[..., nn.Module], variant: str, model_args: Mapping[str, Any],
                     kwargs: Mapping[str, Any], where: str) -> None:
    """Check model arguments read from a ``config.json`` before the model is built.

    A folder or hub repo is data: its ``model_args`` must be arguments ``model_cls``
    knows, with values in sane bounds (integers up to 2**20, image sides up to 8192,
    at most 256 blocks, lists of up to 64 entries), and the model they describe must
    have at most :data:`MAX_MODEL_ELEMENTS` parameters and buffers, counted by building
    it on PyTorch's ``meta`` device (no memory is allocated).

    Args:
        model_cls: the model class.
        variant: the model name, for messages.
        model_args: the arguments read from the file.
        kwargs: all arguments the model will be built with (file and caller merged).
        where: the file, for messages.

    Raises:
        ValueError: an unknown argument, a value out of bounds, arguments the model
            rejects, or a model too large; the message names the file and the argument.
    """
    known = _known_args(model_cls)
    unknown = sorted(k for k in model_args if k not in _BUILDER_ARGS and known is not None and k not in known)
    if unknown:
        raise ValueError(f"{where}: model_args {unknown} are not arguments of {variant} "
                         f"({model_cls.__name__}); known: {sorted(known)}. Fix model_args there.")
    for name, value in model_args.items():
        _check_value(name, value, where)
    build_args = {k: v for k, v in kwargs.items() if k not in _BUILDER_ARGS}
    try:
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            meta = model_cls(**build_args)
    except (TypeError, ValueError, AssertionError) as e:
        raise ValueError(f"{where}: {variant} cannot be built from these model_args ({type(e).__name__}: {e}). "
                         f"Fix model_args there.") from None
    except Exception as e:  # an operation the meta device lacks: the bounds above still hold
        _logger.warning(f"Could not size {variant} on the meta device ({type(e).__name__}: {e}); building it "
                        f"from {where} with the argument bounds checked only.")
        return
    elements = sum(t.numel() for t in meta.state_dict().values())
    if elements > MAX_MODEL_ELEMENTS:
        raise ValueError(
            f"{where}: model_args describe a {variant} with {elements:.3g} parameters and buffers "
            f"({4 * elements / 2**30:.0f} GiB in float32), more than hcast builds from a config file "
            f"({MAX_MODEL_ELEMENTS:.3g}); nothing was allocated. Check model_args there (embed_dim, img_size, "
            f"depths, class counts).")


def _check_pretrained_cfg(cfg: PretrainedCfg, where: str) -> None:
    for name in ("input_size", "test_input_size", "min_input_size"):
        value = getattr(cfg, name, None)
        if value is not None:
            _check_value(name, value, where)


# --------------------------------------------------------------------------------------
# Strict loading of model folders
# --------------------------------------------------------------------------------------

def _classifier_prefixes(cfg: PretrainedCfg) -> Tuple[str, ...]:
    names = cfg.classifier if isinstance(cfg.classifier, (list, tuple)) else [cfg.classifier or "head"]
    return tuple(dict.fromkeys(["head.", "heads."] + [f"{n}." for n in names if n]))


def _strict_filter(filter_fn: Callable, weights: Path, cfg: PretrainedCfg, fresh_heads: bool) -> Callable:
    """Wrap a filter so that a model folder loads every weight of the model from the file.

    Classifier weights whose shape differs from the model's (or that the filter had to
    leave at the model's initialisation) are an error naming the files, unless
    ``fresh_heads``: then they keep the model's fresh initialisation, for fine-tuning.
    """
    def fn(state_dict: Mapping[str, Any], model: nn.Module) -> Dict[str, Any]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = dict(filter_fn(state_dict, model))
        own = model.state_dict()
        heads = _classifier_prefixes(cfg)
        problems, fresh = [], []
        for key, value in own.items():
            got, raw = out.get(key), state_dict.get(key)
            substituted = got is not None and value.numel() and got.data_ptr() == value.data_ptr()
            if got is None:
                what = "missing from the file"
            elif tuple(got.shape) == tuple(value.shape) and not substituted:
                continue  # loaded (the filter may have adapted it, e.g. a resized position embedding)
            elif isinstance(raw, torch.Tensor) and tuple(raw.shape) != tuple(value.shape):
                what = f"shape {tuple(raw.shape)} in the file, {tuple(value.shape)} in the model"
            elif substituted:
                what = "not usable from the file (the filter kept the model's initialisation)"
            else:
                what = f"shape {tuple(got.shape)} in the file, {tuple(value.shape)} in the model"
            (fresh if fresh_heads and key.startswith(heads) else problems).append(f"{key}: {what}")
            if fresh_heads and key.startswith(heads):
                out[key] = value
        problems += [f"{key}: in the file, not in the model" for key in out if key not in own]
        if problems:
            counts = {k: getattr(model, k) for k in ("num_classes", "level_classes") if hasattr(model, k)}
            raise ValueError(
                f"{str(weights)!r} does not fit the model {_config_name(cfg)} describes ({counts}): "
                f"{'; '.join(problems[:8])}{' ...' if len(problems) > 8 else ''}. A model folder or hub repo loads "
                f"every weight. Make config.json's model_args (num_classes / level_classes) match the weights, or, "
                f"to fine-tune on other classes, pass fresh_heads=True for new classifier heads.")
        if fresh:
            _logger.info(f"fresh_heads=True: new classifier weights for {fresh}")
        for w in caught if not fresh_heads else []:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return out
    return fn


def resolve_checkpoint_file(pretrained_cfg: PretrainedCfg, cache_dir: Optional[PathLike] = None) -> Optional[Path]:
    """Local path of a *pickle* checkpoint hcast loads itself, or ``None``.

    Follows timm's source priority (in-memory ``state_dict``, then ``file``, then hub),
    with ``gdrive_id`` before the hub. Model folders (``local-dir:``) and hub repos in
    timm's format (``hf-hub:``) give their weights file (``model.safetensors``, else
    ``pytorch_model.bin``), so that a bad file is reported by name and a corrupt cache
    entry is detected; so do registry tags hosted in such repos. Returns ``None`` where
    timm's own loading is safe and right: in-memory state dicts, safetensors files,
    URLs. Hub pickles (``hf_hub_filename`` ending in ``.pth``) are downloaded with
    ``hf_hub_download`` (its cache, offline mode and errors) and returned.
    """
    cfg = pretrained_cfg
    if cfg.state_dict is not None:
        return None
    if cfg.source == "local-dir":
        return _folder_weights(Path(cfg.file))
    if cfg.source == "hf-hub":
        return _hub_repo_weights(cfg, cache_dir)
    if cfg.file:
        return None if str(cfg.file).endswith(".safetensors") else Path(cfg.file)
    gdrive_id = getattr(cfg, "gdrive_id", None)
    if gdrive_id:
        return download_gdrive_checkpoint(gdrive_id, getattr(cfg, "gdrive_filename", None) or "checkpoint.pth")
    if cfg.hf_hub_id and cfg.hf_hub_filename and not cfg.hf_hub_filename.endswith(".safetensors"):
        from huggingface_hub import hf_hub_download

        repo_id, revision = hf_split(cfg.hf_hub_id)
        return Path(hf_hub_download(repo_id, cfg.hf_hub_filename, revision=revision, cache_dir=cache_dir))
    if cfg.hf_hub_id:  # a tag in a hub repo of timm's format: checked against its hash, named on errors
        return _hub_repo_weights(cfg, cache_dir)
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
        fresh_heads: bool = False,
        **kwargs: Any,
) -> nn.Module:
    """Drop-in for :func:`timm.models.build_model_with_cfg` that loads original checkpoints safely.

    Same arguments and result as timm's builder, which does the work; in addition:

    * pretrained cfg dicts may carry keys timm does not know (kept, see
      :func:`as_pretrained_cfg`), e.g. read back from a hub ``config.json``;
    * pickle sources (``file=...pth``, hub ``hf_hub_filename`` ``.pth``, ``gdrive_id``)
      are loaded by :func:`hcast.weights.load_checkpoint_file` (``weights_only=True``
      plus :data:`hcast.weights.SAFE_CHECKPOINT_GLOBALS`), the weights taken by
      :func:`hcast.weights.original.unwrap_state_dict` (``model``, never
      ``model_ema``), and handed to timm's ``load_pretrained`` with the model's filter,
      so classifier and input-conv adaptation stay timm's;
    * the filter always receives a flat state dict;
    * whatever timm still unpickles itself (``pytorch_model.bin`` in ``hf-hub:`` repos,
      URLs) runs inside :func:`hcast.weights.checkpoint_safe_globals`;
    * a model folder (``local-dir:``) or hub repo (``hf-hub:``) is data: the model
      arguments its ``config.json`` gives are checked before anything is allocated
      (:func:`check_model_args`), and its weights load strictly: every weight of the
      model must come from the file with the same shape, else a ``ValueError`` names
      the files. ``fresh_heads=True`` (for fine-tuning on other classes) gives
      classifier heads that do not fit a fresh initialisation instead;
      ``pretrained_strict=False`` turns the check off, as it does timm's.

    ``model.pretrained_cfg`` keeps the source as given (``file``, ``hf_hub_id``,
    ``gdrive_id``); the loaded tensors are not stored in it.

    Raises:
        ValueError: a folder's or hub repo's model arguments or weights do not fit (see
            above); a weights file that is empty, truncated or not a checkpoint.
        hcast.weights.UnsafeCheckpointError: a pickle needs unsafe globals.
    """
    cfg = resolve_pretrained_cfg(
        variant, pretrained_cfg=as_pretrained_cfg(pretrained_cfg), pretrained_cfg_overlay=pretrained_cfg_overlay)
    from_folder = cfg.source in ("hf-hub", "local-dir")
    if from_folder:  # the model arguments come from a file: check them before allocating anything
        check_model_args(model_cls, variant, kwargs.get("pretrained_model_args") or {}, kwargs, _config_name(cfg))
        _check_pretrained_cfg(cfg, _config_name(cfg))
    filter_fn = _unwrapping_filter(pretrained_filter_fn)
    ckpt_file = resolve_checkpoint_file(cfg, cache_dir=cache_dir) if pretrained else None
    if from_folder and ckpt_file is not None and pretrained_strict:
        filter_fn = _strict_filter(filter_fn, ckpt_file, cfg, fresh_heads)
    common = dict(pretrained_filter_fn=filter_fn, pretrained_strict=pretrained_strict, cache_dir=cache_dir)
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
    num_classes = getattr(model, "num_classes", kwargs.get("num_classes", 1000))
    if from_folder and pretrained_strict:
        # the strict filter has settled every head (loaded, or fresh where asked and it does not
        # fit): timm must not drop the heads that fit because the finest count changed
        num_classes = model.pretrained_cfg.get("num_classes", num_classes)
    load_pretrained(
        model,
        pretrained_cfg=dict(model.pretrained_cfg, state_dict=state_dict, source=None),
        num_classes=num_classes,
        in_chans=kwargs.get("in_chans", 3),
        filter_fn=filter_fn,
        strict=pretrained_strict,
    )
    _logger.info(f"Loaded pretrained weights for {variant} from {str(ckpt_file)!r}")
    return model
