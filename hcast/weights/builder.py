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

from timm.models import PretrainedCfg, build_model_with_cfg, load_pretrained, resolve_pretrained_cfg
from timm.models._builder import pretrained_cfg_for_features  # no public name in timm 1.0
from timm.models._hub import hf_split

from hcast.weights.gdrive import download_gdrive_checkpoint
from hcast.weights.heads import head_policy, plan_heads, weights_source
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


def resolve_checkpoint_file(pretrained_cfg: PretrainedCfg, cache_dir: Optional[PathLike] = None) -> Optional[Path]:
    """Local path of a *pickle* checkpoint hcast loads itself, or ``None``.

    Follows timm's source priority (in-memory ``state_dict``, then ``file``, then hub),
    with ``gdrive_id`` before the hub. Model folders (``local-dir:``) and hub repos in
    timm's format (``hf-hub:``) give their weights file (``model.safetensors``, else
    ``pytorch_model.bin``), so that a bad file is reported by name and a corrupt cache
    entry is detected; so do registry tags hosted in such repos. Returns ``None`` for
    in-memory state dicts and URLs. Hub pickles (``hf_hub_filename`` ending in ``.pth``) are downloaded with
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
        return Path(cfg.file)
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


def _load_weights(cfg: PretrainedCfg, cache_dir: Optional[PathLike]) -> Tuple[Dict[str, Any], str]:
    """The weights a pretrained cfg points to (unwrapped), and their source for messages."""
    if cfg.state_dict is not None:
        return dict(unwrap_state_dict(cfg.state_dict)), weights_source(cfg)
    path = resolve_checkpoint_file(cfg, cache_dir=cache_dir)
    if path is not None:
        return dict(unwrap_state_dict(load_checkpoint_file(path))), repr(str(path))
    if cfg.url:
        with checkpoint_safe_globals():
            state_dict = torch.hub.load_state_dict_from_url(cfg.url, map_location="cpu", weights_only=True)
        return dict(unwrap_state_dict(state_dict)), cfg.url
    raise ValueError(f"{weights_source(cfg)}: pretrained=True, but its pretrained cfg names no weights (no file, "
                     f"hub id, Google Drive id or URL); pass pretrained_cfg_overlay=dict(file=PATH) or "
                     f"pretrained=False.")


def build_model_with_hcast_cfg(
        model_cls: Callable[..., nn.Module],
        variant: str,
        pretrained: bool,
        pretrained_cfg: Union[None, str, Mapping[str, Any], PretrainedCfg] = None,
        pretrained_cfg_overlay: Optional[Mapping[str, Any]] = None,
        pretrained_filter_fn: Optional[Callable] = None,
        pretrained_strict: bool = True,
        cache_dir: Optional[PathLike] = None,
        fresh_heads: Optional[bool] = None,
        **kwargs: Any,
) -> nn.Module:
    """Drop-in for :func:`timm.models.build_model_with_cfg`: safe loading and one rule for heads.

    Same arguments and result as timm's builder, which builds the model and adapts the
    input convolution; in addition:

    * pretrained cfg dicts may carry keys timm does not know (kept, see
      :func:`as_pretrained_cfg`), e.g. read back from a hub ``config.json``;
    * every weights source (a file, ``.pth`` or ``.safetensors``; a model folder; a hub
      repo or hub pickle; a ``gdrive_id``; an in-memory ``state_dict``) is read here, pickles
      by :func:`hcast.weights.load_checkpoint_file` (``weights_only=True`` plus
      :data:`hcast.weights.SAFE_CHECKPOINT_GLOBALS`), the weights taken by
      :func:`hcast.weights.original.unwrap_state_dict` (``model``, never ``model_ema``);
    * class counts, levels, taxonomy and release metadata are decided by
      :func:`hcast.weights.heads.plan_heads` *before* the model is built (the weights'
      head counts win over a default tag; a file does not inherit a tag's taxonomy,
      superpixel count or normalisation), and every classifier weight is settled by
      :func:`hcast.weights.heads.head_policy` (a head that does not fit is an error unless
      new heads were asked for: other class counts in the call, or ``fresh_heads=True``;
      ``fresh_heads=False`` never makes new heads);
      timm's silent classifier dropping is never reached;
    * every other weight loads strictly (``pretrained_strict=False`` turns that off, as
      it does timm's), and a misfit is a ``ValueError`` naming the source;
    * a model folder (``local-dir:``) or hub repo (``hf-hub:``) is data: the model
      arguments its ``config.json`` gives are checked before anything is allocated
      (:func:`check_model_args`).

    ``model.pretrained_cfg`` keeps the source as given (``file``, ``hf_hub_id``,
    ``gdrive_id``); the loaded tensors are not stored in it.

    Raises:
        ValueError: a folder's or hub repo's model arguments do not fit; weights that do
            not fit the model (see above); a weights file that is empty, truncated or not
            a checkpoint.
        hcast.weights.UnsafeCheckpointError: a pickle needs unsafe globals.
    """
    explicit_tag = pretrained_cfg is not None
    cfg = resolve_pretrained_cfg(
        variant, pretrained_cfg=as_pretrained_cfg(pretrained_cfg), pretrained_cfg_overlay=pretrained_cfg_overlay)
    folder_args = kwargs.get("pretrained_model_args") or {}
    if cfg.source in ("hf-hub", "local-dir"):  # the model arguments come from a file: check before allocating
        check_model_args(model_cls, variant, folder_args, kwargs, _config_name(cfg))
        _check_pretrained_cfg(cfg, _config_name(cfg))
    state_dict, source = _load_weights(cfg, cache_dir) if pretrained else (None, None)
    plan = plan_heads(model_cls, cfg, kwargs, state_dict, explicit_tag=explicit_tag, fresh_heads=fresh_heads,
                      folder_args=folder_args)
    if source is not None:
        plan.source = source
    cfg, kwargs = plan.cfg, plan.kwargs
    filter_fn = head_policy(_unwrapping_filter(pretrained_filter_fn), plan)
    common = dict(pretrained_filter_fn=filter_fn, pretrained_strict=pretrained_strict, cache_dir=cache_dir)
    # timm's load_pretrained drops the classifier when counts differ from the cfg's: with no
    # classifier names it never does; head_policy has settled every head.
    load_cfg = dataclasses.replace(cfg, state_dict=state_dict, source=None, classifier=None)
    try:
        if state_dict is not None and kwargs.get("features_only", False):
            # the feature wrapper renames modules, so weights must load inside timm's builder
            model = build_model_with_cfg(model_cls, variant, True, pretrained_cfg=load_cfg, **common, **kwargs)
            model.pretrained_cfg = model.default_cfg = pretrained_cfg_for_features(cfg.to_dict())
        else:
            model = build_model_with_cfg(model_cls, variant, False, pretrained_cfg=cfg, **common, **kwargs)
            if state_dict is not None:
                load_pretrained(model, pretrained_cfg=dataclasses.asdict(load_cfg), num_classes=model.num_classes,
                                in_chans=kwargs.get("in_chans", 3), filter_fn=filter_fn, strict=pretrained_strict)
    except RuntimeError as error:
        if state_dict is None or "state_dict" not in str(error):
            raise
        raise ValueError(f"{plan.source}: the weights do not fit {variant} ({error}). Check that the file holds "
                         f"this architecture (model_name=), its image size and class counts.") from None
    if state_dict is not None:
        _logger.info(f"Loaded pretrained weights for {variant} from {plan.source}")
    return model
