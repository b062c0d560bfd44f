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
import logging
import os
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Type, Union

from torch import nn

from timm.models import PretrainedCfg, build_model_with_cfg, load_pretrained
from timm.models._builder import resolve_pretrained_cfg
from timm.models._hub import hf_split

from hcast.weights.gdrive import download_gdrive_checkpoint
from hcast.weights.original import unwrap_state_dict
from hcast.weights.safe_load import checkpoint_safe_globals, load_checkpoint_file

_logger = logging.getLogger(__name__)

__all__ = [
    "as_pretrained_cfg",
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
      :func:`as_pretrained_cfg`), e.g. read back from a hub ``config.json``;
    * pickle sources (``file=...pth``, hub ``hf_hub_filename`` ``.pth``, ``gdrive_id``)
      are loaded by :func:`hcast.weights.load_checkpoint_file` (``weights_only=True``
      plus :data:`hcast.weights.SAFE_CHECKPOINT_GLOBALS`), the weights taken by
      :func:`hcast.weights.original.unwrap_state_dict` (``model``, never
      ``model_ema``), and handed to timm's ``load_pretrained`` with the model's filter,
      so classifier and input-conv adaptation stay timm's;
    * the filter always receives a flat state dict;
    * whatever timm still unpickles itself (``pytorch_model.bin`` in ``hf-hub:`` repos,
      URLs) runs inside :func:`hcast.weights.checkpoint_safe_globals`.

    ``model.pretrained_cfg`` keeps the source as given (``file``, ``hf_hub_id``,
    ``gdrive_id``); the loaded tensors are not stored in it.
    """
    cfg = resolve_pretrained_cfg(
        variant, pretrained_cfg=as_pretrained_cfg(pretrained_cfg), pretrained_cfg_overlay=pretrained_cfg_overlay)
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
