"""H-CAST: CAST with one classifier per taxonomy level, on the stage that matches it.

Park, Zhang, Yu, Beery and Huang, "Visually Consistent Hierarchical Image
Classification", ICLR 2025; original code github.com/ngocquanai/HiOT @ b1a222b
(``cast_models/cast_deit_hier.py``). Written anew on :class:`hcast.models.cast.CAST`.

Fine-grained levels read the class token of earlier stages (finer segments), coarse
levels later ones: the coarsest level reads the normalised class token after the last
stage, each finer level the (un-normalised) class token one stage earlier. With 2 levels
that is stages 3 and 4, with 3 levels stages 2, 3 and 4, as in the original.
``forward`` returns the finest level's logits (timm's contract);
:meth:`HCAST.forward_levels` the per-level tuple, finest first, as the original.

Original head names: ``head`` (finest), ``family_head`` (next), ``manufacturer_head``
(coarsest of 3); here ``heads.0``, ``heads.1``, ``heads.2``.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import global_pool_nlc
from timm.models import generate_default_cfgs, register_model

from hcast.hierarchy import Taxonomy, benchmark_taxonomy
from hcast.models.cast import (CAST, _cfg, _check_global_pool, _create_cast, _variant_kwargs,
                               convert_backbone, init_linear)
from hcast.models.levels import LevelHeads, resolve_level_classes
from hcast.weights.original import has_level_heads, rename_level_heads, strip_prefixes, unwrap_state_dict

__all__ = ["HCAST", "checkpoint_filter_fn"]


def _as_taxonomy(taxonomy: Any) -> Any:
    """A benchmark name (a released tag's, :func:`hcast.hierarchy.benchmark_taxonomy`) or a
    ``Taxonomy.to_dict()`` (a model folder's config.json) as a Taxonomy; others unchanged."""
    if isinstance(taxonomy, str):
        return benchmark_taxonomy(taxonomy)
    if isinstance(taxonomy, Mapping):
        return Taxonomy.from_dict(taxonomy)
    return taxonomy


class HCAST(LevelHeads, CAST):
    """H-CAST: per-level heads on the class tokens of CAST's stages.

    Under timm's model contract ``forward`` returns one tensor, the finest level's
    (B, n_0) logits, as timm's distilled DeiT (``deit.py``: one tensor unless
    ``set_distilled_training(True)``) and LeViT's distilled variant do; the per-level
    logits, finest first (what the original code returns), come from
    :meth:`forward_levels`, or from ``forward`` itself after
    :meth:`set_level_outputs` (for DDP, ``torch.compile`` and export, which call
    ``forward``). (VOLO's separate ``forward_train`` is the same idea.)

    Args:
        level_classes: classes per taxonomy level, finest first; 2 to 4 levels (H-CAST
            uses 2 or 3). A count of 0 gives an Identity head (features).
        taxonomy: alternatively an :class:`hcast.hierarchy.Taxonomy` (or its
            ``to_dict()``, or a benchmark name for
            :func:`hcast.hierarchy.benchmark_taxonomy`); kept as ``model.taxonomy``.
        num_classes: with ``level_classes``/``taxonomy`` the finest level's count (or 0:
            every head removed, per-level features come out); alone, an int > 0 builds a
            one-level model (its head reads the last stage's class token, as CAST), so
            that every parameter takes part in ``forward``.
        **kwargs: :class:`CAST` arguments. ``global_pool`` pools each level's stage
            tokens (``'map'`` is not available for H-CAST).

    Inputs are those of :class:`CAST`.

    Raises:
        ValueError: without ``level_classes``/``taxonomy``/``num_classes``, with more
            than 4 levels, or when they disagree.
    """

    def __init__(self, level_classes: Optional[Sequence[int]] = None, taxonomy: Any = None,
                 num_classes: Optional[int] = None, **kwargs: Any) -> None:
        taxonomy = _as_taxonomy(taxonomy)
        level_classes = resolve_level_classes(level_classes, taxonomy, num_classes, max_levels=4, model="H-CAST")
        if kwargs.get("global_pool") == "map":
            raise ValueError("global_pool='map' is not available for H-CAST (one attention pooling would be "
                             "shared by every level); use 'token', 'avg', 'avgmax', 'max' or ''.")
        super().__init__(num_classes=0, **kwargs)
        self.taxonomy = taxonomy
        self.level_outputs = False
        del self.head
        self._set_heads(level_classes)

    def _new_head(self, num_classes: int) -> nn.Module:
        head = nn.Linear(self.embed_dim, num_classes)
        init_linear(head)  # normal(0, 0.02), zero bias, as CAST's heads
        return head

    def _set_heads(self, level_classes: Sequence[int]) -> None:
        super()._set_heads(level_classes)
        # level l (finest first) reads stage level_stages[l] (0-based); the coarsest the last stage
        self.level_stages = tuple(range(len(self.stages) - len(level_classes), len(self.stages)))
        self.num_prefix_tokens = len(level_classes)  # forward_features: one token per level, then segments

    def reset_classifier(self, num_classes: Union[int, Sequence[int]], global_pool: Optional[str] = None) -> None:
        """New heads. ``num_classes``: a per-level sequence of counts (finest first) replaces
        every head; ``0`` removes every head (features come out, as timm's
        ``reset_classifier(0)``); another int replaces the finest level's head (the one
        :meth:`get_classifier` returns). ``global_pool`` as for :class:`CAST`, except ``'map'``.

        Raises:
            ValueError: a sequence of the wrong length, or ``global_pool='map'``.
        """
        if global_pool is not None:
            if _check_global_pool(global_pool) == "map":
                raise ValueError("global_pool='map' is not available for H-CAST; use 'token', 'avg', 'avgmax', "
                                 "'max' or ''.")
            self.global_pool = global_pool
        self._reset_level_heads(num_classes)

    def _level_feature(self, stage_tokens: Sequence[torch.Tensor], level: int) -> torch.Tensor:
        """Level ``level``'s (B, C) feature: its stage's tokens pooled as ``global_pool``
        says (the class token for ``'token'``), the last stage's through the final norm,
        earlier ones as they are (as the original)."""
        stage = self.level_stages[level]
        tokens = stage_tokens[stage]
        tokens = self.norm(tokens) if stage == len(self.stages) - 1 else tokens
        pool_type = self.global_pool or "token"
        return global_pool_nlc(tokens, pool_type=pool_type, num_prefix_tokens=1)

    def _features(self, stage_tokens: Sequence[torch.Tensor]) -> torch.Tensor:
        levels = [self._level_feature(stage_tokens, level)[:, None] for level in range(self.num_levels)]
        return torch.cat(levels + [self.norm(stage_tokens[-1])[:, 1:]], dim=1)

    def forward_features(self, images: torch.Tensor, segments: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, L + K_3, C) tokens: the L level features, finest first (each level's stage
        class token, or its pooled tokens for ``global_pool`` other than ``'token'``; the
        prefix tokens, ``num_prefix_tokens = L``), then the last stage's normalised
        segment tokens."""
        return self._features(self.forward_stages(images, segments)["stage_tokens"])

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """:meth:`forward_features` tokens -> the finest level's (B, n_0) logits, or its
        (B, C) feature with ``pre_logits``. (``global_pool=''``: every token through the
        finest head, (B, L + K_3, n_0).)"""
        x = self.head_drop(x if self.global_pool == "" else x[:, 0])
        return x if pre_logits else self.heads[0](x)

    def forward_head_levels(self, x: torch.Tensor, pre_logits: bool = False) -> Tuple[torch.Tensor, ...]:
        """:meth:`forward_features` tokens -> tuple of per-level (B, n_l) logits, finest
        first (per-level (B, C) features with ``pre_logits``)."""
        features = [self.head_drop(x[:, level]) for level in range(self.num_levels)]
        if pre_logits:
            return tuple(features)
        return tuple(head(f) for head, f in zip(self.heads, features))

    def forward_levels(self, images: torch.Tensor, segments: Optional[torch.Tensor] = None
                       ) -> Tuple[torch.Tensor, ...]:
        """(B, 3, H, W) images [+ (B, H, W) superpixels] -> tuple of (B, n_l) logits, one
        per taxonomy level, finest first (the original code's output)."""
        return self.forward_head_levels(self.forward_features(images, segments))

    def forward(self, images: torch.Tensor, segments: Optional[torch.Tensor] = None
                ) -> Union[torch.Tensor, Tuple[torch.Tensor, ...]]:
        """(B, 3, H, W) images [+ (B, H, W) superpixels] -> the finest level's (B, n_0)
        logits; the per-level tuple after :meth:`set_level_outputs`."""
        if self.level_outputs:
            return self.forward_levels(images, segments)
        return self.forward_head(self.forward_features(images, segments))


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: HCAST) -> Dict[str, torch.Tensor]:
    """Convert an H-CAST or CAST checkpoint to :class:`HCAST` keys.

    H-CAST's ``head`` / ``family_head`` / ``manufacturer_head`` become ``heads.0/1/2``; a
    one-level model's head is ``heads.0``. A plain CAST checkpoint's ``head`` (e.g.
    ``cast_small.deit_in1k``) is dropped: it belongs to no level. Whether each head fits
    is decided by the builder (:func:`hcast.weights.heads.head_policy`), not here.
    Backbone keys as in :func:`hcast.models.cast.checkpoint_filter_fn`.
    """
    raw = strip_prefixes(unwrap_state_dict(state_dict))
    is_hcast = has_level_heads(raw)
    # Rename the heads before the backbone conversion, which drops H-CAST's extra heads.
    out = convert_backbone(rename_level_heads(raw), model)
    if not is_hcast:
        out = {k: v for k, v in out.items() if not k.startswith(("head.", "heads."))}
    return out


def _create_hcast(variant: str, pretrained: bool = False, **kwargs: Any) -> HCAST:
    # Class counts, taxonomy and the release metadata are decided once, in the builder
    # (hcast.weights.heads.plan_heads), for every weights source.
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
