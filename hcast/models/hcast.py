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
from hcast.models.cast import CAST, _cfg, _check_num_classes, _create_cast, _variant_kwargs, convert_backbone, init_linear
from hcast.weights.original import has_level_heads, rename_level_heads, strip_prefixes, unwrap_state_dict

__all__ = ["HCAST", "checkpoint_filter_fn"]

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
        **kwargs: :class:`CAST` arguments (``num_classes`` is ignored: the finest level's
            count is ``model.num_classes``).

    Inputs are those of :class:`CAST`. ``forward`` returns a tuple of (B, n_l) logits,
    finest first.

    Raises:
        ValueError: without ``level_classes``/``taxonomy``, with fewer than 2 or more than
            4 levels, or when both are given and disagree.
    """

    def __init__(self, level_classes: Optional[Sequence[int]] = None, taxonomy: Any = None,
                 **kwargs: Any) -> None:
        level_classes = _level_classes(level_classes, taxonomy)
        if not 2 <= len(level_classes) <= 4:
            raise ValueError(f"H-CAST needs 2 to 4 taxonomy levels (one head per stage), got "
                             f"level_classes={level_classes}.")
        num_classes = kwargs.pop("num_classes", None)
        if num_classes is not None:  # ignored, but a negative count is a mistake to report
            _check_num_classes(num_classes)
        super().__init__(num_classes=0, **kwargs)
        self.taxonomy = taxonomy
        self.level_classes = level_classes
        self.num_classes = level_classes[0]
        # Level l (finest first) reads stage level_stages[l]; the coarsest the last stage.
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
        one int for every level (0 removes all heads: features come out)."""
        if global_pool is not None and global_pool != "token":
            raise ValueError(f"H-CAST heads read class tokens; global_pool must be 'token', got {global_pool!r}.")
        counts = (num_classes,) * len(self.level_classes) if isinstance(num_classes, int) else tuple(num_classes)
        if len(counts) != len(self.level_classes):
            raise ValueError(f"num_classes must give {len(self.level_classes)} level counts, got {counts}.")
        self.level_classes = counts
        self.num_classes = counts[0]
        self.heads = self._make_heads(counts)

    def forward_features(self, images: torch.Tensor, segments: Optional[torch.Tensor] = None
                         ) -> Tuple[torch.Tensor, ...]:
        """Per-level features (B, C), finest first: the class tokens the heads read."""
        out = self.forward_stages(images, segments)
        tokens = list(out["class_tokens"])
        tokens[-1] = self.norm(tokens[-1])
        return tuple(tokens[s] for s in self.level_stages)

    def forward_head(self, features: Sequence[torch.Tensor], pre_logits: bool = False
                     ) -> Tuple[torch.Tensor, ...]:
        """Per-level features -> per-level logits (B, n_l), finest first."""
        features = [self.head_drop(f) for f in features]
        if pre_logits:
            return tuple(features)
        return tuple(head(f) for head, f in zip(self.heads, features))

    def forward(self, images: torch.Tensor, segments: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, ...]:
        """(B, 3, H, W) images [+ (B, H, W) superpixels] -> tuple of (B, n_l) logits."""
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
    # A released H-CAST tag knows its level class counts: use them unless given.
    cfg = kwargs.get("pretrained_cfg")
    if isinstance(cfg, str) or cfg is None:
        cfg = get_pretrained_cfg(f"{variant}.{cfg}" if cfg else variant)
    level_classes = cfg.get("level_classes") if isinstance(cfg, dict) else getattr(cfg, "level_classes", None)
    overlay = kwargs.get("pretrained_cfg_overlay") or {}
    level_classes = overlay.get("level_classes", level_classes)
    taxonomy = overlay.get("taxonomy", cfg.get("taxonomy") if isinstance(cfg, dict) else getattr(cfg, "taxonomy", None))
    if kwargs.get("taxonomy") is None and isinstance(taxonomy, str):
        # a released tag's taxonomy, in the checkpoint's label order (hcast.hierarchy.benchmark_taxonomy)
        taxonomy = benchmark_taxonomy(taxonomy)
        if kwargs.get("level_classes") is None or tuple(kwargs["level_classes"]) == taxonomy.num_classes:
            kwargs["taxonomy"] = taxonomy
    if kwargs.get("level_classes") is None and kwargs.get("taxonomy") is None and level_classes:
        kwargs["level_classes"] = tuple(level_classes)
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
    "hcast_small.living17": _hcast_cfg("17ouiirBmBxD5wxOuWBi-SulVIzv8oHBL", (34, 17), 85.11, "BREEDS Living-17",
                                       "breeds-living17", **_BREEDS),
    "hcast_base": _cfg(num_classes=None, classifier=None, **_HCAST_PAPER),
    "hcast_tiny": _cfg(input_size=(3, 64, 64), num_segments=49, num_classes=None, classifier=None, **_HCAST_PAPER),
})


@register_model
def hcast_tiny(pretrained: bool = False, **kwargs: Any) -> HCAST:
    """H-CAST on :func:`hcast.models.cast.cast_tiny` (64 x 64 inputs, e.g. Fashion-MNIST)."""
    args = dict(img_size=64, embed_dim=192, depths=(3, 3, 3, 2), num_heads=3, num_clusters=(16, 8, 4, 2))
    return _create_hcast("hcast_tiny", pretrained, **dict(args, **_variant_kwargs("hcast_tiny", kwargs)))


@register_model
def hcast_small(pretrained: bool = False, **kwargs: Any) -> HCAST:
    """H-CAST-S (on CAST-S). ``pretrained=True`` without a tag starts from the
    ``cast_small.deit_in1k`` backbone with fresh level heads."""
    args = dict(embed_dim=384, depths=(3, 3, 3, 2), num_heads=12, num_clusters=(64, 32, 16, 8))
    return _create_hcast("hcast_small", pretrained, **dict(args, **_variant_kwargs("hcast_small", kwargs)))


@register_model
def hcast_base(pretrained: bool = False, **kwargs: Any) -> HCAST:
    """H-CAST-B (on CAST-B, width 768). No released weights."""
    args = dict(embed_dim=768, depths=(3, 3, 3, 2), num_heads=12, num_clusters=(64, 32, 16, 8))
    return _create_hcast("hcast_base", pretrained, **dict(args, **_variant_kwargs("hcast_base", kwargs)))
