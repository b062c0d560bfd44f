"""Hier-ViT: a DeiT with one classification head per taxonomy level.

The baseline of H-CAST ("Visually Consistent Hierarchical Image Classification",
ICLR 2025): a plain ViT whose class token is read after different blocks for different
levels of the taxonomy, fine levels earlier, coarse levels later. With 12 blocks:
3 levels read blocks 6, 9, 12 (0-based indices 5, 8, 11); 2 levels blocks 9, 12. Each read class token goes
through the ViT's final LayerNorm (``norm``, shared by all levels, as in the authors'
``deit/models_hier.py`` at HiOT b1a222b) and then its level's linear head.

Heads are ``heads`` (``nn.ModuleList``, finest level first), as in
:class:`hcast.models.hcast.HCAST`; the authors' ``head`` / ``family_head`` /
``manufacturer_head`` are ``heads.0`` / ``heads.1`` / ``heads.2``. As for H-CAST,
``forward`` returns the finest level's logits (timm's contract) and ``forward_levels`` the
per-level tuple, finest first (``set_level_outputs(True)`` makes ``forward`` return it).

``hier_vit_small`` starts from timm's ``deit_small_patch16_224.fb_in1k`` weights with
``pretrained=True`` (backbone and, when the finest level has 1000 classes, the head;
other heads initialised as in the original code).
"""
from __future__ import annotations

import operator
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import trunc_normal_
from timm.models import generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models.vision_transformer import VisionTransformer
from timm.models.vision_transformer import checkpoint_filter_fn as _vit_checkpoint_filter_fn

from hcast.models.factory import FromPretrainedMixin
from hcast.models.levels import LevelHeads, resolve_level_classes
from hcast.weights.builder import build_model_with_hcast_cfg
from hcast.weights.original import rename_level_heads, strip_prefixes

__all__ = ["HierVisionTransformer", "default_level_blocks", "checkpoint_filter_fn"]  # register_model adds the entry points


def default_level_blocks(depth: int, num_levels: int) -> Tuple[int, ...]:
    """Blocks (0-based, finest level first) whose class token each level reads.

    Levels are a quarter of the depth apart, the coarsest on the last block: for 12 blocks
    ``(5, 8, 11)`` with 3 levels and ``(8, 11)`` with 2, i.e. the 6th, 9th and 12th
    blocks, as in H-CAST's Hier-ViT.

    Raises:
        ValueError: the depth is too small for that many levels.
    """
    step = max(depth // 4, 1)
    blocks = tuple(depth - 1 - (num_levels - 1 - level) * step for level in range(num_levels))
    if blocks[0] < 0:
        raise ValueError(
            f"level_blocks: cannot place {num_levels} levels a quarter of depth={depth} apart; "
            f"pass level_blocks=(b_fine, ..., b_coarse) explicitly (0-based block indices).")
    return blocks


class HierVisionTransformer(LevelHeads, FromPretrainedMixin, VisionTransformer):
    """ViT with per-level classifiers on the class token of different blocks (Hier-ViT).

    Args:
        level_classes: class count per taxonomy level, finest first (e.g. ``(100, 70, 30)``).
            Default: one level of ``num_classes``.
        taxonomy: a :class:`hcast.hierarchy.Taxonomy` (or its ``to_dict()``) giving
            ``level_classes``; kept as ``model.taxonomy``.
        level_blocks: 0-based block index each level reads, finest first, non-decreasing
            (default :func:`default_level_blocks`: ``(5, 8, 11)`` for 3 levels of 12 blocks).
        num_classes: the finest level's class count (must agree with
            ``level_classes``); ``0`` removes every head (features). Without
            ``level_classes`` an int gives a one-level model on the last block.
        **kwargs: :class:`~timm.models.vision_transformer.VisionTransformer` arguments
            (``embed_dim``, ``depth``, ``num_heads``, ``img_size``, ...). Class-token
            pooling only (``global_pool='token'``).

    Shapes:
        input (B, 3, H, W) float images, ImageNet-normalised; ``forward`` output: the
        finest level's (B, C_0) logits (the per-level tuple after ``set_level_outputs``).
    """

    def __init__(
            self,
            level_classes: Optional[Sequence[int]] = None,
            taxonomy: Any = None,
            level_blocks: Optional[Sequence[int]] = None,
            num_classes: Optional[int] = None,
            **kwargs: Any,
    ) -> None:
        if isinstance(taxonomy, Mapping):
            from hcast.hierarchy import Taxonomy

            taxonomy = Taxonomy.from_dict(taxonomy)
        level_classes = resolve_level_classes(level_classes, taxonomy, num_classes, default_classes=1000,
                                              model="Hier-ViT")
        if kwargs.get("global_pool", "token") != "token" or not kwargs.get("class_token", True):
            raise ValueError(f"global_pool: Hier-ViT reads the class token (global_pool='token', class_token=True), "
                             f"got global_pool={kwargs.get('global_pool')!r}, class_token={kwargs.get('class_token')!r}.")
        super().__init__(num_classes=level_classes[0], **kwargs)
        depth = len(self.blocks)
        if level_blocks is None:
            level_blocks = default_level_blocks(depth, len(level_classes))
        try:
            level_blocks = tuple(operator.index(b) for b in level_blocks)
        except TypeError as error:
            raise ValueError(f"level_blocks: expected integer block indices, got {level_blocks!r}.") from error
        if (len(level_blocks) != len(level_classes) or any(not 0 <= b < depth for b in level_blocks)
                or list(level_blocks) != sorted(level_blocks)):
            raise ValueError(f"level_blocks: expected {len(level_classes)} non-decreasing 0-based block indices in "
                             f"[0, {depth - 1}], finest level first, got {level_blocks}.")
        self.taxonomy = taxonomy
        self.level_blocks = level_blocks
        self.level_outputs = False
        del self.head  # replaced by one head per level
        self._set_heads(level_classes)

    def _new_head(self, num_classes: int) -> nn.Module:
        device = self.cls_token.device if self.cls_token is not None else None
        head = nn.Linear(self.embed_dim, num_classes, device=device)
        trunc_normal_(head.weight, std=.02)  # as the original: trunc normal (std 0.02), zero bias
        nn.init.zeros_(head.bias)
        return head.train(self.training)

    def reset_classifier(self, num_classes: Union[int, Sequence[int]], global_pool: Optional[str] = None) -> None:
        """New heads, as for H-CAST: a per-level sequence of counts replaces every head;
        ``0`` removes every head (features); another int replaces the finest level's head.

        Raises:
            ValueError: a sequence of the wrong length, or ``global_pool`` other than
                ``'token'``.
        """
        # '' with 0 classes is timm's prune_intermediate_layers() dropping the heads (features_only)
        if global_pool not in (None, "token") and not (global_pool == "" and num_classes == 0):
            raise ValueError(f"global_pool: Hier-ViT reads the class token ('token'), got {global_pool!r}.")
        self._reset_level_heads(num_classes)

    def _features(self, block_tokens: Mapping[int, torch.Tensor]) -> torch.Tensor:
        """What :meth:`forward_features` returns, from the tokens after the level blocks."""
        # LayerNorm is per token: normalising the class token alone equals
        # the original's norm(x)[:, 0] over all tokens.
        levels = [self.norm(block_tokens[b][:, :1]) for b in self.level_blocks]
        last = self.norm(block_tokens[self.level_blocks[-1]][:, self.num_prefix_tokens:])
        return torch.cat(levels + [last], dim=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L + N, C) tokens: the L levels' normalised class tokens, finest first (level l
        reads the class token after block ``level_blocks[l]`` through the final LayerNorm),
        then the N normalised patch tokens after the last level's block. Blocks after the
        last level's block are not run."""
        x = self.patch_embed(x)
        x = self._pos_embed(x)
        x = self.patch_drop(x)
        x = self.norm_pre(x)
        block_tokens = {}
        for index, block in enumerate(self.blocks[:self.level_blocks[-1] + 1]):
            if self.grad_checkpointing and self.training and not torch.jit.is_scripting():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
            if index in self.level_blocks:
                block_tokens[index] = x
        return self._features(block_tokens)

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None,
                              return_prefix_tokens: bool = False, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False, **kwargs: Any) -> Any:
        """timm's ViT ``forward_intermediates`` (block outputs as (B, C, H/16, W/16) maps or
        (B, N, C) tokens), with ``final`` equal to :meth:`forward_features`, computed in the
        same pass."""
        if intermediates_only:
            return super().forward_intermediates(
                x, indices=indices, return_prefix_tokens=return_prefix_tokens, norm=norm, stop_early=stop_early,
                output_fmt=output_fmt, intermediates_only=True, **kwargs)
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}.")
        take_indices, _ = feature_take_indices(len(self.blocks), indices)
        wanted = sorted(set(take_indices) | set(self.level_blocks))
        outs = super().forward_intermediates(x, indices=wanted, return_prefix_tokens=True, stop_early=True,
                                             output_fmt="NLC", intermediates_only=True, **kwargs)
        block_tokens = {b: torch.cat([prefix, tokens], dim=1) for b, (tokens, prefix) in zip(wanted, outs)}
        height, width = self.patch_embed.dynamic_feat_size(x.shape[-2:])
        intermediates = []
        for b in take_indices:
            y = self.norm(block_tokens[b]) if norm else block_tokens[b]
            prefix, tokens = y[:, :self.num_prefix_tokens], y[:, self.num_prefix_tokens:]
            if output_fmt == "NCHW":
                tokens = tokens.reshape(x.shape[0], height, width, -1).permute(0, 3, 1, 2).contiguous()
            intermediates.append((tokens, prefix) if return_prefix_tokens else tokens)
        return self._features(block_tokens), intermediates

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """:meth:`forward_features` tokens -> the finest level's (B, C_0) logits; with
        ``pre_logits`` its (B, embed_dim) feature after ``head_drop``."""
        x = self.head_drop(self.fc_norm(x[:, 0]))
        return x if pre_logits else self.heads[0](x)

    def forward_head_levels(self, x: torch.Tensor, pre_logits: bool = False) -> Tuple[torch.Tensor, ...]:
        """:meth:`forward_features` tokens -> tuple of per-level (B, C_l) logits, finest
        first (per-level features with ``pre_logits``)."""
        feats = [self.head_drop(self.fc_norm(x[:, level])) for level in range(self.num_levels)]
        if pre_logits:
            return tuple(feats)
        return tuple(head(f) for head, f in zip(self.heads, feats))

    def forward_levels(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """(B, 3, H, W) images -> tuple of (B, C_l) logits, finest first (the original's output)."""
        return self.forward_head_levels(self.forward_features(x))

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, Tuple[torch.Tensor, ...]]:
        """(B, 3, H, W) images -> the finest level's (B, C_0) logits (the per-level tuple
        after :meth:`set_level_outputs`)."""
        if self.level_outputs:
            return self.forward_levels(x)
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: HierVisionTransformer) -> Dict[str, torch.Tensor]:
    """Convert DeiT / timm ViT and original Hier-ViT checkpoints to this model's keys.

    Reads timm's and DeiT's ViT weights (through timm's ViT filter, which resizes the
    position embedding to the model's grid) and the H-CAST authors' Hier-ViT
    checkpoints (``head`` / ``family_head`` / ``manufacturer_head`` -> ``heads.0/1/2``),
    DDP's ``module.`` prefix removed. Whether each head fits is the builder's decision
    (:func:`hcast.weights.heads.head_policy`).

    Returns:
        dict[str, Tensor] with this model's key names.
    """
    return _vit_checkpoint_filter_fn(rename_level_heads(strip_prefixes(state_dict, ddp_only=True)), model)


def _create_hier_vit(variant: str, pretrained: bool = False, **kwargs: Any) -> HierVisionTransformer:
    # class counts and taxonomy: hcast.weights.heads.plan_heads, in the builder
    out_indices = kwargs.pop("out_indices", 3)
    model = build_model_with_hcast_cfg(
        HierVisionTransformer, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"), **kwargs)
    vit = getattr(model, "model", model)  # features_only wraps the ViT
    if kwargs.get("img_size") is not None and hasattr(vit, "patch_embed"):
        # a ViT reads one input size: the data config (resolve_data_config) follows the built model
        height, width = vit.patch_embed.img_size
        model.pretrained_cfg = model.default_cfg = dict(model.pretrained_cfg, input_size=(3, int(height), int(width)))
    return model


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    return dict(
        num_classes=1000, input_size=(3, 224, 224), pool_size=None, crop_pct=.9, interpolation="bicubic",
        fixed_input_size=True, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
        first_conv="patch_embed.proj", classifier="heads.0", license="apache-2.0",
        paper_name="Visually Consistent Hierarchical Image Classification",
        origin_url="https://github.com/ngocquanai/HiOT", **kwargs)


default_cfgs = generate_default_cfgs({
    "hier_vit_tiny.fb_in1k": _cfg(
        hf_hub_id="timm/deit_tiny_patch16_224.fb_in1k",
        url="https://dl.fbaipublicfiles.com/deit/deit_tiny_patch16_224-a1311bcf.pth",
        description="DeiT-Ti ImageNet-1K weights (timm's deit_tiny_patch16_224.fb_in1k) for the backbone; "
                    "level heads initialised."),
    "hier_vit_small.fb_in1k": _cfg(
        hf_hub_id="timm/deit_small_patch16_224.fb_in1k",
        url="https://dl.fbaipublicfiles.com/deit/deit_small_patch16_224-cd65a155.pth",
        description="DeiT-S ImageNet-1K weights (timm's deit_small_patch16_224.fb_in1k) for the backbone; "
                    "level heads initialised."),
})


@register_model
def hier_vit_tiny(pretrained: bool = False, **kwargs: Any) -> HierVisionTransformer:
    """Hier-ViT-Ti: DeiT-Ti (patch 16, width 192, 12 blocks, 3 heads) with per-level heads on
    blocks 5/8/11 (0-based; 3 levels) or 8/11 (2 levels); the size of ``hcast_tiny`` (width 192,
    3 heads). The main job's Hier-ViT baseline trains it from scratch on 64 x 64 Fashion-MNIST
    with ``img_size=64, patch_size=8`` (64 patch tokens beside H-CAST's 49 superpixels)."""
    args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3)
    return _create_hier_vit("hier_vit_tiny", pretrained, **dict(args, **kwargs))


@register_model
def hier_vit_small(pretrained: bool = False, **kwargs: Any) -> HierVisionTransformer:
    """Hier-ViT-S: DeiT-S (patch 16, width 384, 12 blocks, 6 heads) with per-level heads on
    blocks 5/8/11 (0-based; 3 levels) or 8/11 (2 levels). Pass ``level_classes=(fine, ..., coarse)``;
    without it a one-level 1000-class classifier (DeiT-S)."""
    args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6)
    return _create_hier_vit("hier_vit_small", pretrained, **dict(args, **kwargs))
