"""H-CAST: CAST with one classifier per taxonomy level, on the stage that matches it.

Park, Zhang, Yu, Beery and Huang, "Visually Consistent Hierarchical Image
Classification", ICLR 2025; original code github.com/ngocquanai/HiOT @ b1a222b
(``cast_models/cast_deit_hier.py``). Written anew on :class:`hcast.models.cast.CAST`.

Fine-grained levels read the class token of earlier stages (finer segments), coarse
levels later ones: the coarsest level reads the normalised class token after the last
stage, each finer level the (un-normalised) class token one stage earlier. With 2 levels
that is stages 3 and 4, with 3 levels stages 2, 3 and 4, as in the original. The model
returns a tuple of logits, finest first.

Original head names: ``head`` (finest), ``family_head`` (next), ``manufacturer_head``
(coarsest of 3); here ``heads.0``, ``heads.1``, ``heads.2``.
"""
from __future__ import annotations

import warnings
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.models import generate_default_cfgs, get_pretrained_cfg, register_model

from hcast.hierarchy import benchmark_taxonomy
from hcast.models.cast import (CAST, _cfg, _check_global_pool, _check_num_classes, _create_cast, _variant_kwargs,
                               convert_backbone, init_linear)
from hcast.weights.original import has_level_heads, rename_level_heads, strip_prefixes, unwrap_state_dict

__all__ = ["HCAST", "checkpoint_filter_fn"]


def check_output_level(output_level: Optional[int], num_levels: int) -> Optional[int]:
    """``output_level`` as given, after checking it is None or a level index in
    ``[0, num_levels)`` (0-based, finest first).

    Raises:
        ValueError: another value.
    """
    if output_level is None:
        return None
    if isinstance(output_level, bool) or not isinstance(output_level, int) or not 0 <= output_level < num_levels:
        raise ValueError(f"output_level must be a 0-based level index in [0, {num_levels}) (finest first) or None, "
                         f"got {output_level!r}.")
    return output_level


def _level_classes(level_classes: Optional[Sequence[int]], taxonomy: Any) -> Tuple[int, ...]:
    if taxonomy is not None:
        counts = getattr(taxonomy, "num_classes", None)
        if counts is None:
            raise TypeError(f"taxonomy must have a .num_classes tuple (hcast.hierarchy.Taxonomy), got "
                            f"{type(taxonomy).__name__}.")
        counts = tuple(int(c) for c in counts)
        if level_classes is not None and tuple(level_classes) != counts:
            raise ValueError(f"level_classes={tuple(level_classes)} disagrees with taxonomy.num_classes={counts}; "
                             f"pass only one of them.")
        return counts
    if level_classes is None:
        raise ValueError("H-CAST needs level_classes=(n_fine, ..., n_coarse) or taxonomy=Taxonomy(...).")
    if isinstance(level_classes, int) or not all(isinstance(c, int) and c >= 0 for c in level_classes):
        raise ValueError(f"level_classes must be a sequence of class counts >= 0, finest first, got {level_classes!r}.")
    return tuple(level_classes)


class HCAST(CAST):
    """H-CAST: per-level heads on the class tokens of CAST's stages.

    Args:
        level_classes: classes per taxonomy level, finest first; 2 to 4 levels (H-CAST
            uses 2 or 3). A count of 0 gives an Identity head (features).
        taxonomy: alternatively an :class:`hcast.hierarchy.Taxonomy` (anything with a
            ``num_classes`` tuple, finest first); kept as ``model.taxonomy``.
        num_classes: as timm users expect: ``0`` removes every head (``forward`` returns
            the per-level features); without ``level_classes``/``taxonomy`` an int gives a
            one-level model (the last stage's class token, as CAST) that returns a
            (B, num_classes) tensor; otherwise it must equal the finest level's count.
            (``timm.create_model`` passes the tag's ``level_classes`` unless
            ``num_classes`` is another count than its finest level's.)
        output_level: a 0-based level index (finest first): ``forward`` /
            ``forward_head`` return that level's (B, n_l) logits as one tensor and
            ``forward_features`` that level's stage tokens (B, 1 + N, C), so tools that
            expect one tensor (timm's ``train.py``, ``validate.py``, ...) work. ``None``
            (default): per-level tuples.
        **kwargs: :class:`CAST` arguments. ``global_pool`` is applied to each level's
            stage tokens (``'map'`` is not available for H-CAST).

    Inputs are those of :class:`CAST`. ``forward`` returns a tuple of (B, n_l) logits,
    finest first (a tensor with ``output_level``).

    Raises:
        ValueError: without ``level_classes``/``taxonomy``/``num_classes``, with fewer
            than 2 or more than 4 levels, when they disagree, or with an
            ``output_level`` that is no level index.
    """

    def __init__(self, level_classes: Optional[Sequence[int]] = None, taxonomy: Any = None,
                 num_classes: Optional[int] = None, output_level: Optional[int] = None, **kwargs: Any) -> None:
        if num_classes is not None:
            _check_num_classes(num_classes)
        if level_classes is None and taxonomy is None and num_classes:
            level_classes = (int(num_classes),)  # a one-level model, read like CAST
            output_level = 0 if output_level is None else output_level
        else:
            level_classes = _level_classes(level_classes, taxonomy)
            if not 2 <= len(level_classes) <= 4:
                raise ValueError(f"H-CAST needs 2 to 4 taxonomy levels (one head per stage), got "
                                 f"level_classes={level_classes}.")
            if num_classes == 0:
                level_classes = (0,) * len(level_classes)  # no heads: per-level features
            elif num_classes is not None and num_classes != level_classes[0]:
                raise ValueError(f"num_classes={num_classes} disagrees with level_classes={level_classes} (the "
                                 f"finest level's count); pass level_classes only, or num_classes=0 for features.")
        if kwargs.get("global_pool") == "map":
            raise ValueError("global_pool='map' is not available for H-CAST (one attention pooling would be "
                             "shared by every level); use 'token', 'avg', 'avgmax', 'max' or ''.")
        super().__init__(num_classes=0, **kwargs)
        self.taxonomy = taxonomy
        self.level_classes = level_classes
        self.num_classes = level_classes[0]
        self.output_level = check_output_level(output_level, len(level_classes))
        # Level l (finest first) reads stage level_stages[l] (0-based); the coarsest the last stage.
        self.level_stages = tuple(range(len(self.stages) - len(level_classes), len(self.stages)))
        del self.head
        self.heads = self._make_heads(level_classes)

    def _make_heads(self, level_classes: Sequence[int]) -> nn.ModuleList:
        heads = nn.ModuleList(nn.Linear(self.embed_dim, n) if n > 0 else nn.Identity() for n in level_classes)
        heads.apply(init_linear)
        return heads

    @torch.jit.ignore
    def get_classifier(self) -> nn.ModuleList:
        return self.heads

    def reset_classifier(self, num_classes: Union[int, Sequence[int]], global_pool: Optional[str] = None) -> None:
        """New heads: ``num_classes`` is a per-level sequence of counts (finest first), or
        one int for every level (0 removes all heads: features come out). ``global_pool``
        as for :class:`CAST`, except ``'map'``."""
        if global_pool is not None:
            if _check_global_pool(global_pool) == "map":
                raise ValueError("global_pool='map' is not available for H-CAST; use 'token', 'avg', 'avgmax', "
                                 "'max' or ''.")
            self.global_pool = global_pool
        counts = (num_classes,) * len(self.level_classes) if isinstance(num_classes, int) else tuple(num_classes)
        if len(counts) != len(self.level_classes):
            raise ValueError(f"num_classes must give {len(self.level_classes)} level counts, got {counts}.")
        self.level_classes = counts
        self.num_classes = counts[0]
        self.heads = self._make_heads(counts)

    def _level_tokens(self, stage_tokens: Sequence[torch.Tensor], level: int) -> torch.Tensor:
        """(B, 1 + N, C) tokens of the stage level ``level`` reads; the last stage's
        through the final norm, earlier ones as they are (as the original)."""
        stage = self.level_stages[level]
        tokens = stage_tokens[stage]
        return self.norm(tokens) if stage == len(self.stages) - 1 else tokens

    def _features(self, stage_tokens: Sequence[torch.Tensor]) -> Union[torch.Tensor, Tuple[torch.Tensor, ...]]:
        if self.output_level is not None:
            return self._level_tokens(stage_tokens, self.output_level)
        return tuple(self.pool(self._level_tokens(stage_tokens, level)) for level in range(len(self.level_classes)))

    def forward_features(self, images: torch.Tensor, segments: Optional[torch.Tensor] = None
                         ) -> Union[torch.Tensor, Tuple[torch.Tensor, ...]]:
        """Per-level features (B, C), finest first: the class tokens the heads read
        (pooled as ``global_pool`` says). With ``output_level``: that level's stage
        tokens (B, 1 + N, C), pooled by :meth:`forward_head`."""
        return self._features(self.forward_stages(images, segments)["stage_tokens"])

    def forward_head(self, features: Union[torch.Tensor, Sequence[torch.Tensor]], pre_logits: bool = False
                     ) -> Union[torch.Tensor, Tuple[torch.Tensor, ...]]:
        """Per-level features -> per-level logits (B, n_l), finest first; with
        ``output_level`` stage tokens -> that level's (B, n_l) logits."""
        if self.output_level is not None:
            x = self.head_drop(self.pool(features))
            return x if pre_logits else self.heads[self.output_level](x)
        features = [self.head_drop(f) for f in features]
        if pre_logits:
            return tuple(features)
        return tuple(head(f) for head, f in zip(self.heads, features))

    def forward(self, images: torch.Tensor, segments: Optional[torch.Tensor] = None
                ) -> Union[torch.Tensor, Tuple[torch.Tensor, ...]]:
        """(B, 3, H, W) images [+ (B, H, W) superpixels] -> tuple of (B, n_l) logits
        (one (B, n_l) tensor with ``output_level``)."""
        return self.forward_head(self.forward_features(images, segments))


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: HCAST) -> Dict[str, torch.Tensor]:
    """Convert an H-CAST or CAST checkpoint to :class:`HCAST` keys.

    H-CAST's ``head`` / ``family_head`` / ``manufacturer_head`` become ``heads.0/1/2``.
    A plain CAST checkpoint (e.g. ``cast_small.deit_in1k``) initialises the backbone
    only: its ``head`` is dropped and the model's freshly initialised level heads are
    kept, so H-CAST fine-tuning starts as in the paper. Backbone keys as in
    :func:`hcast.models.cast.checkpoint_filter_fn`.
    """
    # Rename the heads before the backbone conversion, which drops H-CAST's extra heads.
    raw = strip_prefixes(unwrap_state_dict(state_dict))
    is_hcast = has_level_heads(raw)
    out = convert_backbone(rename_level_heads(raw), model)
    # Heads the checkpoint has no (matching) weights for keep the model's initialisation.
    own_heads = {f"heads.{k}": v for k, v in model.heads.state_dict().items()}
    mismatched = [k for k, v in out.items() if k.startswith("heads.") and is_hcast
                  and (k not in own_heads or v.shape != own_heads[k].shape)]
    if mismatched:
        warnings.warn(f"checkpoint heads {mismatched} do not fit level_classes={model.level_classes}; those heads "
                      f"keep their fresh initialisation. Pass the checkpoint's level_classes to load them.",
                      UserWarning, stacklevel=2)
    out = {k: v for k, v in out.items()
           if not k.startswith("heads.") or (is_hcast and k not in mismatched)}
    for key, value in own_heads.items():
        out.setdefault(key, value)
    return out


def _create_hcast(variant: str, pretrained: bool = False, **kwargs: Any) -> HCAST:
    # A tag knows its level class counts: use them unless given. A user's num_classes
    # (0: features; another count than the finest level's, without level_classes: a
    # one-level model) wins over the count timm's builder would take from the cfg.
    user_num_classes = kwargs.get("num_classes")
    cfg = kwargs.get("pretrained_cfg")
    if isinstance(cfg, str) or cfg is None:
        cfg = get_pretrained_cfg(f"{variant}.{cfg}" if cfg else variant)
    level_classes = cfg.get("level_classes") if isinstance(cfg, dict) else getattr(cfg, "level_classes", None)
    if not level_classes:  # a backbone tag (deit_in1k): the name's default tag's level classes
        level_classes = getattr(get_pretrained_cfg(variant), "level_classes", None)
    overlay = kwargs.get("pretrained_cfg_overlay") or {}
    level_classes = overlay.get("level_classes", level_classes)
    taxonomy = overlay.get("taxonomy", cfg.get("taxonomy") if isinstance(cfg, dict) else getattr(cfg, "taxonomy", None))
    if (kwargs.get("taxonomy") is None and isinstance(taxonomy, str)
            and user_num_classes in (None, level_classes[0] if level_classes else None)):
        # a released tag's taxonomy, in the checkpoint's label order (hcast.hierarchy.benchmark_taxonomy)
        taxonomy = benchmark_taxonomy(taxonomy)
        if kwargs.get("level_classes") is None or tuple(kwargs["level_classes"]) == taxonomy.num_classes:
            kwargs["taxonomy"] = taxonomy
    if kwargs.get("level_classes") is None and kwargs.get("taxonomy") is None:
        if level_classes and user_num_classes in (None, 0, level_classes[0]):
            kwargs["level_classes"] = tuple(level_classes)
            kwargs.setdefault("num_classes", level_classes[0])
    else:
        kwargs.setdefault("num_classes", None)  # not the tag's count: the given levels decide
    return _create_cast(variant, pretrained, model_cls=HCAST, filter_fn=checkpoint_filter_fn, **kwargs)


_HCAST_PAPER = dict(
    license="mit",
    origin_url="https://github.com/ngocquanai/HiOT",
    paper_name="Visually Consistent Hierarchical Image Classification",
)


# iNat21's own statistics, with which H-CAST trains and evaluates iNat21-Mini and computes
# SEEDS on the image un-normalised with them (HiOT b1a222b deit/datasets.py).
_INAT_MEAN, _INAT_STD = (0.466, 0.471, 0.380), (0.195, 0.194, 0.192)


def _hcast_cfg(gdrive_id: str, level_classes: Tuple[int, ...], fpa: float, dataset: str, taxonomy: str,
               **kwargs: Any) -> Any:
    # Evaluation as in the original: resize to 256 (bicubic), center crop 224 (crop_pct 0.875),
    # SEEDS on the normalised crop. ``taxonomy`` names hcast.hierarchy.benchmark_taxonomy(taxonomy),
    # attached as model.taxonomy.
    return _cfg(gdrive_id=gdrive_id, level_classes=level_classes, num_classes=level_classes[0],
                classifier=tuple(f"heads.{i}" for i in range(len(level_classes))), fpa=fpa, taxonomy=taxonomy,
                crop_pct=0.875, interpolation="bicubic",
                description=f"H-CAST trained on {dataset}; full-path accuracy {fpa}% as the authors report.",
                **dict(_HCAST_PAPER, **kwargs))


# BREEDS: the authors' BREEDS loader never receives --num-superpixels and keeps its default of
# 256 SEEDS superpixels (HiOT b1a222b deit/dataset/breeds_seeds.py, deit/datasets.py).
_BREEDS = dict(num_segments=256)


default_cfgs = generate_default_cfgs({
    # The first tag of a name is its default: BREEDS Living-17, the smallest released H-CAST.
    "hcast_small.living17": _hcast_cfg("17ouiirBmBxD5wxOuWBi-SulVIzv8oHBL", (34, 17), 85.11, "BREEDS Living-17",
                                       "breeds-living17", **_BREEDS),
    # Backbone only: CAST-S supervised on ImageNet-1K; the level heads are initialised.
    "hcast_small.deit_in1k": _cfg(
        hf_hub_id="twke/CAST", hf_hub_filename="snapshots/deit/imagenet1k/cast_small/best_checkpoint.pth",
        num_classes=None, classifier=None,
        description="CAST-S ImageNet-1K backbone for H-CAST fine-tuning; level heads initialised."),
    "hcast_small.inat21_mini": _hcast_cfg("1LuppLHSL9g-BdBkM5yh6wMEX48iF2FX5", (10000, 1103, 273), 65.00,
                                          "iNat21-Mini", "inat21-mini", mean=_INAT_MEAN, std=_INAT_STD,
                                          num_segments=196),
    "hcast_small.entity30": _hcast_cfg("1R0I7KCtnRFqIaBkaY_SFqbKVx0DrbSeV", (120, 30), 84.86, "BREEDS Entity-30",
                                       "breeds-entity30", **_BREEDS),
    "hcast_small.entity13": _hcast_cfg("16gunLvLkHuVIXtvJtSU2JlfJTHSbCn_-", (130, 13), 85.61, "BREEDS Entity-13",
                                       "breeds-entity13", **_BREEDS),
    "hcast_small.nonliving26": _hcast_cfg("1UKPUSm-rkRgExYeeeRlT7YcUcRvdwQOP", (52, 26), 82.53,
                                          "BREEDS Non-Living-26", "breeds-nonliving26", **_BREEDS),
    # No released weights: default level classes so that the names build with no arguments,
    # BREEDS Living-17's for hcast_base and hcast.data's Fashion-MNIST taxonomy (10 garments,
    # 5 groups) for hcast_tiny.
    "hcast_base": _cfg(level_classes=(34, 17), num_classes=34, classifier=("heads.0", "heads.1"), **_HCAST_PAPER),
    "hcast_tiny": _cfg(input_size=(3, 64, 64), num_segments=49, level_classes=(10, 5), num_classes=10,
                       classifier=("heads.0", "heads.1"), **_HCAST_PAPER),
})


@register_model
def hcast_tiny(pretrained: bool = False, **kwargs: Any) -> HCAST:
    """H-CAST on :func:`hcast.models.cast.cast_tiny` (64 x 64 inputs, e.g. Fashion-MNIST)."""
    args = dict(img_size=64, embed_dim=192, depths=(3, 3, 3, 2), num_heads=3, num_clusters=(16, 8, 4, 2))
    return _create_hcast("hcast_tiny", pretrained, **dict(args, **_variant_kwargs("hcast_tiny", kwargs)))


@register_model
def hcast_small(pretrained: bool = False, **kwargs: Any) -> HCAST:
    """H-CAST-S (on CAST-S). The default tag is ``living17`` (34, 17 classes);
    ``hcast_small.deit_in1k`` starts from the CAST-S ImageNet backbone with fresh level
    heads (pass ``level_classes`` or ``taxonomy``)."""
    args = dict(embed_dim=384, depths=(3, 3, 3, 2), num_heads=12, num_clusters=(64, 32, 16, 8))
    return _create_hcast("hcast_small", pretrained, **dict(args, **_variant_kwargs("hcast_small", kwargs)))


@register_model
def hcast_base(pretrained: bool = False, **kwargs: Any) -> HCAST:
    """H-CAST-B (on CAST-B, width 768). No released weights."""
    args = dict(embed_dim=768, depths=(3, 3, 3, 2), num_heads=12, num_clusters=(64, 32, 16, 8))
    return _create_hcast("hcast_base", pretrained, **dict(args, **_variant_kwargs("hcast_base", kwargs)))
