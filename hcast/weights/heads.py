"""One rule for a model's heads, levels, taxonomy and preprocessing, whatever the weights' source.

Every loading path (``timm.create_model`` with a tag, a file in ``pretrained_cfg_overlay``,
``local-dir:`` / ``hf-hub:`` folders, :func:`hcast.from_pretrained`, ``hcast convert``, and
the CLI) goes through :func:`hcast.weights.build_model_with_hcast_cfg`, which calls the two
functions here:

:func:`plan_heads` (before the model is built) decides the class counts and the pretrained
cfg:

1. **Class counts the caller passes win** (``num_classes``, ``level_classes``, ``taxonomy``).
   ``num_classes=N`` (N > 0) without ``level_classes`` on a hierarchical family builds a
   one-level model and warns, naming the levels it drops (timm's scripts and tests pass
   ``num_classes``); ``num_classes=0`` keeps the levels with no heads (features).
2. Otherwise **what the weights say wins over a default tag**: a file, state dict or folder
   that the caller did not name as a tag gives its own head counts (number of levels and
   classes per level), and it inherits none of the default tag's release metadata
   (taxonomy, class names, reported FPA, superpixel count, mean/std, crop): those fields go
   back to the architecture's defaults (:data:`RELEASE_FIELDS`).
3. Otherwise the tag's counts (a tag named explicitly, with or without a file, or the
   name's default tag): the tag's taxonomy is attached when its counts are the model's.

:func:`head_policy` (a wrapper around the model's ``checkpoint_filter_fn``) settles every
classifier weight after the keys are mapped: a head whose shape fits loads; a head that does
not fit (other shape, absent from the weights, or a weights' head the model has no place
for) is **new** only when the caller asked for new heads (class counts that differ from the
weights', ``fresh_heads=True``, or a backbone-only tag such as ``hcast_small.deit_in1k``;
``fresh_heads=False`` refuses new heads even then, as ``hcast convert`` does),
and a ``UserWarning`` names each new head with both shapes (no warning for backbone tags,
whose heads are new by definition, for ``fresh_heads=True``, or for a model with no
classifier). Any other misfit is a ``ValueError`` naming the weights' source, the head and
both shapes. timm's own classifier-dropping (``load_pretrained`` with a class count other
than the cfg's) is never reached: the builder hands timm a cfg without classifier names.
"""
from __future__ import annotations

import dataclasses
import inspect
import warnings
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from timm.models import get_pretrained_cfg
from torch import nn

from hcast.weights.original import head_counts, strip_prefixes, unwrap_state_dict

__all__ = ["RELEASE_FIELDS", "HeadPlan", "plan_heads", "head_policy"]

#: Pretrained cfg fields that describe a released checkpoint (its training data and
#: preprocessing), not the architecture: a file that is not that release does not inherit them.
RELEASE_FIELDS = ("taxonomy", "level_classes", "label_names", "fpa", "num_segments", "mean", "std", "crop_pct",
                  "interpolation", "description", "gdrive_id", "hf_hub_id", "hf_hub_filename", "url",
                  "label_offset", "tag")

_COUNT_ARGS = ("num_classes", "level_classes", "taxonomy")


@dataclasses.dataclass
class HeadPlan:
    """What :func:`plan_heads` decided.

    Attributes:
        cfg: the pretrained cfg the model gets (release fields reset for foreign weights).
        kwargs: model keyword arguments with the class counts decided.
        new_heads: heads that do not fit the weights get a fresh initialisation (else an error).
        warn_new: name new heads in a ``UserWarning``.
        source: the weights' source, for messages.
    """
    cfg: Any
    kwargs: Dict[str, Any]
    new_heads: bool
    warn_new: bool
    source: str


def _accepts(model_cls: Callable[..., nn.Module], name: str) -> bool:
    for cls in getattr(model_cls, "__mro__", ()):
        init = cls.__dict__.get("__init__")
        if init is not None and name in inspect.signature(init).parameters:
            return True
    return False


def _counts_of(taxonomy: Any) -> Optional[Tuple[int, ...]]:
    if taxonomy is None or isinstance(taxonomy, str):
        return None
    if isinstance(taxonomy, Mapping):
        from hcast.hierarchy import Taxonomy  # a sibling package, imported where needed
        taxonomy = Taxonomy.from_dict(taxonomy)
    counts = getattr(taxonomy, "num_classes", None)
    return tuple(int(c) for c in counts) if counts is not None else None


def _architecture_cfg(cfg: Any) -> Any:
    """``cfg`` with :data:`RELEASE_FIELDS` at the cfg class's defaults (a foreign file)."""
    defaults = {f.name: (f.default if f.default is not dataclasses.MISSING else
                         f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
                for f in dataclasses.fields(cfg)}
    changes = {k: defaults[k] for k in RELEASE_FIELDS if k in defaults}
    return dataclasses.replace(cfg, **changes)


def _is_release(cfg: Any) -> bool:
    return bool(cfg.hf_hub_id or cfg.url or getattr(cfg, "gdrive_id", None))


def weights_source(cfg: Any) -> str:
    """A readable name of where a cfg's weights come from."""
    if cfg.file:
        return repr(str(cfg.file))
    if cfg.source == "hf-hub" or (cfg.hf_hub_id and not cfg.tag):
        return f"hf-hub:{cfg.hf_hub_id}"
    if cfg.state_dict is not None:
        return "the state_dict in pretrained_cfg"
    name = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else str(cfg.architecture)
    return f"the pretrained weights of {name}"


def plan_heads(model_cls: Callable[..., nn.Module], cfg: Any, kwargs: Mapping[str, Any],
               state_dict: Optional[Mapping[str, Any]], *, explicit_tag: bool, fresh_heads: Optional[bool] = None,
               folder_args: Optional[Mapping[str, Any]] = None) -> HeadPlan:
    """Decide class counts, taxonomy and pretrained cfg for a model about to be built.

    Args:
        model_cls: the model class (hierarchical when it takes ``level_classes``).
        cfg: the resolved pretrained cfg (tag, overlay and source applied).
        kwargs: the model arguments as the caller (and a folder's ``config.json``) gave them.
        state_dict: the weights to be loaded (raw, any layout), or ``None`` without weights.
        explicit_tag: the caller named the tag (``name.tag``, ``pretrained_cfg=``) or a
            folder gave the cfg; a file then *is* that tag.
        fresh_heads: ``True``: new heads wherever they do not fit, without a warning;
            ``False``: never new heads (``hcast convert``: every head must load);
            ``None`` (default): new heads where the call's class counts differ.
        folder_args: a folder's saved model arguments (``pretrained_model_args``): equal
            values in ``kwargs`` are the folder's, not the caller's.

    Returns:
        a :class:`HeadPlan`.

    Raises:
        ValueError: ``level_classes`` and ``taxonomy`` disagree.
    """
    kwargs = dict(kwargs)
    folder_args = folder_args or {}
    given = {k: kwargs[k] for k in _COUNT_ARGS
             if kwargs.get(k) is not None and not (k in folder_args and folder_args[k] == kwargs[k])}
    hierarchical = _accepts(model_cls, "level_classes")
    foreign = (state_dict is not None and not explicit_tag and cfg.source not in ("hf-hub", "local-dir")
               and (cfg.file or cfg.state_dict is not None))
    if foreign:
        cfg = _architecture_cfg(cfg)
    weights = head_counts(strip_prefixes(unwrap_state_dict(state_dict))) if state_dict is not None else None
    source = weights_source(cfg) if state_dict is not None else (
        f"{cfg.architecture}{'.' + cfg.tag if cfg.tag else ''}'s pretrained cfg")
    backbone_tag = state_dict is not None and not foreign and cfg.classifier is None

    level_classes = kwargs.get("level_classes")
    taxonomy_counts = _counts_of(kwargs.get("taxonomy"))
    if level_classes is not None and taxonomy_counts is not None and (
            not isinstance(level_classes, (list, tuple)) or tuple(level_classes) != taxonomy_counts):
        raise ValueError(f"level_classes={tuple(level_classes)} disagrees with the taxonomy's class counts "
                         f"{taxonomy_counts}; pass one of them.")
    if level_classes is None and taxonomy_counts is not None:
        level_classes = taxonomy_counts
    num_classes = kwargs.get("num_classes")

    # the counts the weights (a foreign file) or the tag stand for
    if foreign:
        source_counts = weights or (0,)  # a file without a classifier (MoCo): features
    else:
        source_counts = getattr(cfg, "level_classes", None) or (
            (cfg.num_classes,) if cfg.num_classes is not None else None)
        if not source_counts and cfg.architecture:  # a backbone tag: the name's default levels
            default = get_pretrained_cfg(cfg.architecture)
            source_counts = getattr(default, "level_classes", None) if default is not None else None
    source_counts = tuple(source_counts) if source_counts else None
    multi_level = hierarchical and source_counts is not None and len(source_counts) > 1

    if level_classes is None and num_classes is None:
        if multi_level:
            level_classes = source_counts
        elif source_counts is not None:
            num_classes = source_counts[0]
    elif level_classes is None and num_classes == 0 and multi_level:
        level_classes = source_counts  # features of every level, no heads
    elif level_classes is None and num_classes and multi_level:
        warnings.warn(f"num_classes={num_classes} builds a one-level model (its classifier reads the last "
                      f"stage, as CAST); the levels {source_counts} of {source} are dropped. Pass "
                      f"level_classes=(n_fine, ..., n_coarse) to keep the hierarchy.", UserWarning, stacklevel=4)

    if level_classes is not None:
        if isinstance(level_classes, (list, tuple)) and level_classes and all(
                isinstance(c, int) and not isinstance(c, bool) for c in level_classes):
            level_classes = tuple(level_classes)
        else:  # not class counts: the model's own checks say what is wrong
            kwargs["level_classes"] = level_classes
            return HeadPlan(cfg=cfg, kwargs=kwargs, new_heads=False, warn_new=True, source=source)
        kwargs["level_classes"] = level_classes
        kwargs["num_classes"] = level_classes[0] if num_classes is None else num_classes
    else:
        kwargs.pop("level_classes", None)
        # as given: the model's own check rejects a float or a string (int() would truncate 10.5 to 10)
        kwargs["num_classes"] = num_classes if num_classes is not None else cfg.num_classes
    # the tag's taxonomy (a benchmark name) when the model has the tag's counts
    tag_taxonomy = getattr(cfg, "taxonomy", None)
    if kwargs.get("taxonomy") is None and tag_taxonomy is not None:
        tag_counts = tuple(getattr(cfg, "level_classes", None) or ())
        if tag_counts and tuple(kwargs.get("level_classes") or ()) == tag_counts and kwargs["num_classes"]:
            kwargs["taxonomy"] = tag_taxonomy
    # the cfg describes the model being built: its class counts and head names
    if hierarchical and kwargs.get("level_classes"):
        levels = kwargs["level_classes"]
        changes = dict(num_classes=kwargs["num_classes"], classifier=tuple(f"heads.{i}" for i in range(len(levels))))
        if any(f.name == "level_classes" for f in dataclasses.fields(cfg)):
            changes["level_classes"] = levels
        cfg = dataclasses.replace(cfg, **changes)
    elif cfg.num_classes != kwargs["num_classes"]:
        cfg = dataclasses.replace(cfg, num_classes=kwargs["num_classes"])
    if fresh_heads is None:
        new_heads = backbone_tag or any(k in given for k in _COUNT_ARGS)
    else:
        new_heads = fresh_heads
    warn_new = not (fresh_heads or backbone_tag)
    return HeadPlan(cfg=cfg, kwargs=kwargs, new_heads=new_heads, warn_new=warn_new, source=source)


def _head_prefixes(model: nn.Module) -> Tuple[str, ...]:
    return tuple(p for p in ("head.", "heads.") if any(k.startswith(p) for k in model.state_dict())) or ("head.",)


def head_policy(filter_fn: Optional[Callable], plan: HeadPlan) -> Callable:
    """Wrap a model's ``checkpoint_filter_fn`` so every classifier weight is settled by one rule.

    After ``filter_fn`` maps the keys, each of the model's head weights (``head.*`` /
    ``heads.*``) that the weights hold with the same shape is loaded. Heads that do not
    fit (another shape, missing from the weights, or weights' heads the model has no place
    for) keep the model's fresh initialisation when ``plan.new_heads`` (with a
    ``UserWarning`` naming them when ``plan.warn_new``), and raise otherwise.

    Raises:
        ValueError: (from the returned function) a head that does not fit, unasked; the
            message names the source, each head and both shapes, and what to pass.
    """
    def fn(state_dict: Mapping[str, Any], model: nn.Module) -> Dict[str, Any]:
        out = dict(filter_fn(state_dict, model) if filter_fn is not None else state_dict)
        own = model.state_dict()
        prefixes = _head_prefixes(model)
        misfits: List[str] = []
        for key, value in own.items():
            if not key.startswith(prefixes):
                continue
            got = out.get(key)
            if got is None:
                misfits.append(f"{key}: {tuple(value.shape)} in the model, absent from the weights")
            elif tuple(got.shape) != tuple(value.shape):
                misfits.append(f"{key}: {tuple(value.shape)} in the model, {tuple(got.shape)} in the weights")
            else:
                continue
            out[key] = value
        for key in [k for k in out if k.startswith(("head.", "heads.")) and k not in own]:
            misfits.append(f"{key}: {tuple(out[key].shape)} in the weights, no such head in the model")
            del out[key]
        if not misfits:
            return out
        counts = {k: getattr(model, k) for k in ("num_classes", "level_classes") if hasattr(model, k)}
        if not plan.new_heads:
            raise ValueError(
                f"{plan.source}: its classifier weights do not fit the model ({counts}): {'; '.join(misfits)}. "
                f"Nothing was loaded. Build the model with the weights' class counts (omit num_classes / "
                f"level_classes to take them from the weights), or, to fine-tune on other classes, pass the new "
                f"counts (num_classes=, level_classes= or taxonomy=) or fresh_heads=True.")
        if plan.warn_new and counts.get("num_classes", 1) != 0:  # no classifier: dropping heads is what 0 means
            warnings.warn(f"new classifier heads (fresh initialisation, not from {plan.source}): "
                          f"{'; '.join(misfits)}.", UserWarning, stacklevel=2)
        return out
    return fn
