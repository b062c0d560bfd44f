"""CAST's segmentation encoder: superpixel tokens at pixel resolution, fused over stages.

Ke, Mo and Yu, "Learning Hierarchical Image Segmentation For Recognition and By
Recognition", ICLR 2024; original code github.com/twke18/CAST ``cast_models/cast_seg.py``
(MoCo v3 convention: COCO self-supervised pre-training and Pascal VOC, SPML) and
``cast_models/cast_seg_deit.py`` (DeiT convention: ADE20K and Pascal Context, Segmenter),
with ``BlockFusion`` from ``cast_models/modules.py``. Written anew in timm's style; same
numbers for the same weights, images and superpixels (``tests/test_cast_seg_reference.py``).

How an image flows through the model:

1. :class:`~hcast.models.cast.ConvStem` gives a (B, h, w, C) grid, h = ceil(H / 8).
2. Superpixel tokens. ``model_stage='segmentation'``: the stem grid is upsampled
   bilinearly and the position table bicubically to the superpixels' full resolution and
   averaged per superpixel (computed exactly without the full-resolution map:
   :func:`hcast.ops.upsampled_superpixel_pool`). ``model_stage='pretrain'``: the
   superpixel ids are resized to the grid by nearest neighbour and the grid is averaged
   (the position table resampled bicubically to the grid), as in MoCo pre-training.
3. Four stages of transformer blocks with graph pooling (:class:`~hcast.models.cast.
   GraphPooling`), 320/160/80/40 clusters for segmentation, 64/32/16/8 for pre-training.
   Every stage's class token is updated by its pooling's MLP (the last one too).
4. :class:`BlockFusion`: the tokens of stages 2-4 are copied down to the stage-1
   superpixels along the argmax of the assignments, concatenated with stage 1's
   (4C channels, class tokens likewise), BatchNorm1d -> Dropout(0.2) -> Linear(4C, C).
   No final norm.

Outputs. :meth:`CASTSeg.forward_superpixels`: the head applied to every superpixel
token, (B, S, num_classes) (or (B, S, C) features with ``num_classes=0``): the original
``cast_seg.cast_small(...)(images, segments)`` in the segmentation stage.
:meth:`CASTSeg.forward_dense`: the same copied to every pixel of its superpixel,
(B, num_classes, H, W). :meth:`CASTSeg.forward` (timm's contract): one (B, num_classes)
tensor, the head on the mean of the superpixel tokens: the original pre-training stage's
output (the MoCo projector on ``out_block.mean(1)``, (B, 256)).

Key layout differences from the original checkpoints (:func:`checkpoint_filter_fn`,
:func:`hcast.weights.original.cast_keys_to_hcast`): those of
:mod:`hcast.models.cast`, except that the last pooling's ``fc1``/``fc2`` are kept (they
update the class token that the fusion normalises with the tokens), and
``block_fusion.proj_blocks.{0.norm,2}`` -> ``fusion.{norm,proj}``. MoCo's projection MLP
(``module.base_encoder.head.*``) is the head when the model is built with
``head_type='moco'`` (the pre-training stage's default), else dropped.
"""
from __future__ import annotations

import math
import warnings
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import resample_abs_pos_embed
from timm.models import generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models.vision_transformer import Block, global_pool_nlc

from hcast.models.cast import (
    CAST,
    CASTStage,
    ConvStem,
    GraphPooling,
    _cfg as _cast_cfg,
    _create_cast,
    _freeze_as_buffers,
    _has_seeds,
    _resolve_tag,
    paint_tokens,
)
from hcast.models.factory import FromPretrainedMixin
from hcast import _validation as V
from hcast.ops.superpixel_pool import resize_segments
from hcast.ops.upsampled_superpixel_pool import upsampled_superpixel_pool
from hcast.weights import original

__all__ = ["CASTSeg", "BlockFusion", "moco_projector", "checkpoint_filter_fn", "MODEL_STAGES", "STAGE_CLUSTERS"]

_NUM_STAGES = 4
#: the original's two model stages and their graph-pooling cluster counts
STAGE_CLUSTERS = {"pretrain": (64, 32, 16, 8), "segmentation": (320, 160, 80, 40)}
MODEL_STAGES = tuple(STAGE_CLUSTERS)
HEAD_TYPES = ("linear", "moco")


# ---------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------


class BlockFusion(nn.Module):
    """CAST's fusion of the four stages onto the stage-1 superpixel tokens
    (``cast_models/modules.py`` ``BlockFusion``, discrete unpooling).

    The tokens of stage ``l > 1`` are regions; each superpixel takes its region's token
    by following the argmax of the assignment logits of the poolings between
    (``label1_3 = label2_3[label1_2]``, ...). The four (B, S, C) maps and the four class
    tokens are concatenated along channels (4C), normalised by BatchNorm1d over the
    ``1 + S`` tokens of the batch (class token included, as the original), dropped out
    (0.2) and projected back to C.

    Args:
        dim: C.
        num_stages: 4.
        drop: dropout before the projection.

    Shapes:
        ``stage_tokens``: list of (B, N_l, C) (N_1 = S); ``class_tokens``: list of
        (B, 1, C); ``logits``: list of the ``num_stages - 1`` assignment logits
        (B, N_l, N_{l+1}). Returns (B, 1 + S, C): the fused class token, then the S
        superpixel tokens.
    """

    def __init__(self, dim: int, num_stages: int = _NUM_STAGES, drop: float = 0.2) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(dim * num_stages)
        self.drop = nn.Dropout(drop)
        self.proj = nn.Linear(dim * num_stages, dim)

    def forward(self, stage_tokens: Sequence[torch.Tensor], class_tokens: Sequence[torch.Tensor],
                logits: Sequence[torch.Tensor]) -> torch.Tensor:
        if not (len(stage_tokens) == len(class_tokens) == len(logits) + 1):
            raise ValueError(f"BlockFusion needs one token map and class token per stage and the logits between "
                             f"them, got {len(stage_tokens)}, {len(class_tokens)} and {len(logits)}.")
        parts = [stage_tokens[0]]
        region = None
        for tokens, logit in zip(stage_tokens[1:], logits):
            label = logit.argmax(dim=-1)  # (B, N_{l-1}) -> region of the next stage
            region = label if region is None else torch.gather(label, 1, region)
            parts.append(torch.gather(tokens, 1, region.unsqueeze(-1).expand(-1, -1, tokens.shape[-1])))
        x = torch.cat([torch.cat(list(class_tokens), dim=-1), torch.cat(parts, dim=-1)], dim=1)
        x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        return self.proj(self.drop(x))


def moco_projector(in_dim: int, out_dim: int = 256, hidden_dim: int = 4096) -> nn.Sequential:
    """MoCo v3's projection MLP (``moco/builder.py`` ``_build_mlp(3, ...)``): Linear (no
    bias) -> BN -> ReLU -> Linear -> BN -> ReLU -> Linear -> BN (no affine). Module
    indices are the original's (``head.0`` ... ``head.7``). (N, in_dim) -> (N, out_dim);
    its BatchNorms need N > 1 in training."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, out_dim, bias=False), nn.BatchNorm1d(out_dim, affine=False),
    )


def _update_class_token(pool: GraphPooling, cls_token: torch.Tensor) -> torch.Tensor:
    """The class-token half of a graph pooling's update (``fc1`` -> ``fc2`` + residual):
    what the original's last pooling contributes to the fusion."""
    hidden = pool.drop(pool.act(pool.fc1(pool.fc1_norm(cls_token))))
    return pool.fc2(pool.fc2_norm(hidden)) + cls_token


# ---------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------


class CASTSeg(FromPretrainedMixin, nn.Module):
    """CAST's segmentation encoder (Ke et al., ICLR 2024), ``cast_models/cast_seg.py``.

    Args:
        img_size: the image size the position table is laid out for (224 in the
            released weights); other sizes resample it bicubically, as the original.
        patch_size: 8.
        in_chans: input channels.
        num_classes: outputs of the head, per superpixel (:meth:`forward_superpixels`)
            and per image (:meth:`forward`); 0 for features.
        global_pool: how :meth:`forward_head` pools the fused tokens: ``'avg'`` (mean of
            the superpixel tokens, padded ids included: the original pre-training
            output), ``'token'`` (the fused class token), ``'max'``, ``'avgmax'``, ``''``.
        embed_dim, depths, num_heads, mlp_ratio, qkv_bias: as CAST.
        num_clusters: graph-pooling clusters per stage; default from ``model_stage``.
        model_stage: ``'segmentation'`` (pool at the superpixels' resolution, the
            original's ``cast_small``) or ``'pretrain'`` (pool on the stride-8 grid,
            ``cast_small_pretrain``).
        head_type: ``'linear'`` or ``'moco'`` (MoCo v3's projection MLP, kept from MoCo
            checkpoints; :func:`moco_projector`).
        pos_embed: ``'sincos'`` (MoCo convention: fixed table, zero class slot) or
            ``'learn'`` (DeiT convention, ``cast_seg_deit.py``).
        drop_rate: dropout before the head. pos_drop_rate, proj_drop_rate,
            attn_drop_rate, drop_path_rate: timm's meanings (0 in the original).
        pool_drop_rate: dropout in graph pooling's MLP (0.1). fusion_drop_rate: dropout
            in :class:`BlockFusion` (0.2).
        validate_args: check that images are finite (one pass and a host sync).
        feature_paint: how :meth:`forward_intermediates` paints region tokens on the
            stride-8 grid (see :func:`hcast.models.cast.paint_tokens`).

    Inputs:
        images (Tensor[B, in_chans, H, W], float): normalised; any H, W >= 8 (the stem
            grid is ceil(H / 8) x ceil(W / 8), as the original's convolutions give).
        segments (Tensor[B, H, W], int64, optional): superpixel ids >= 0 at the images'
            resolution; computed as ``pretrained_cfg`` says when omitted (:meth:`superpixels`).
    """

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: int = 8,
            in_chans: int = 3,
            num_classes: int = 0,
            global_pool: str = "avg",
            embed_dim: int = 384,
            depths: Sequence[int] = (3, 3, 3, 2),
            num_heads: int = 12,
            num_clusters: Optional[Sequence[int]] = None,
            model_stage: str = "segmentation",
            head_type: str = "linear",
            mlp_ratio: float = 4.0,
            qkv_bias: bool = True,
            pos_embed: str = "sincos",
            drop_rate: float = 0.0,
            pos_drop_rate: float = 0.0,
            proj_drop_rate: float = 0.0,
            attn_drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            pool_drop_rate: float = 0.1,
            fusion_drop_rate: float = 0.2,
            norm_layer: Optional[Callable[..., nn.Module]] = None,
            validate_args: bool = True,
            feature_paint: str = "soft",
    ) -> None:
        super().__init__()
        if model_stage not in MODEL_STAGES:
            raise ValueError(f"model_stage must be one of {MODEL_STAGES}, got {model_stage!r}.")
        if head_type not in HEAD_TYPES:
            raise ValueError(f"head_type must be one of {HEAD_TYPES}, got {head_type!r}.")
        if pos_embed not in ("learn", "sincos"):
            raise ValueError(f"pos_embed must be 'learn' or 'sincos', got {pos_embed!r}.")
        if global_pool not in ("", "avg", "token", "max", "avgmax"):
            raise ValueError(f"global_pool must be one of '', 'avg', 'token', 'max', 'avgmax', got {global_pool!r}.")
        V.check_int("num_classes (0 builds no classifier, for features)", num_classes, 0)
        num_clusters = tuple(num_clusters or STAGE_CLUSTERS[model_stage])
        if len(depths) != _NUM_STAGES or len(num_clusters) != _NUM_STAGES:
            raise ValueError(f"depths and num_clusters must have {_NUM_STAGES} entries, got depths={tuple(depths)} "
                             f"and num_clusters={num_clusters}.")
        norm_layer = norm_layer or partial(nn.LayerNorm, eps=1e-6)
        self.model_stage = model_stage
        self.head_type = head_type
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1
        self.depths = tuple(depths)
        self.num_clusters = num_clusters
        self.pos_embed_type = pos_embed
        self.validate_args = validate_args
        self.feature_paint = feature_paint
        self.grad_checkpointing = False

        self.patch_embed = ConvStem(img_size, patch_size, in_chans, embed_dim)
        self.grid_size = self.patch_embed.grid_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        table = torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim)
        if pos_embed == "sincos":  # fixed: a buffer (class slot = MoCo's zero pe_token)
            self.register_buffer("pos_embed", table)
        else:
            self.pos_embed = nn.Parameter(table)
        self.pos_drop = nn.Dropout(pos_drop_rate)
        num_blocks = sum(depths)
        dpr = [drop_path_rate * i / max(num_blocks - 1, 1) for i in range(num_blocks)]
        stages = []
        for i, (depth, clusters) in enumerate(zip(depths, num_clusters)):
            start = sum(depths[:i])
            blocks = [Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, proj_drop=proj_drop_rate,
                            attn_drop=attn_drop_rate, drop_path=dpr[start + j], norm_layer=norm_layer)
                      for j in range(depth)]
            pool = GraphPooling(embed_dim, clusters, num_heads=num_heads, drop=pool_drop_rate, norm_layer=norm_layer)
            stages.append(CASTStage(blocks, pool))
        self.stages = nn.ModuleList(stages)
        # The last pooling's assignments only give the coarsest segmentation
        # (forward_segments): loaded, never trained. Its MLP updates the class token.
        _freeze_as_buffers(self.stages[-1].pool.assign)
        self.fusion = BlockFusion(embed_dim, _NUM_STAGES, fusion_drop_rate)
        self.feature_info = [dict(num_chs=embed_dim, reduction=8, module=f"stages.{i}") for i in range(_NUM_STAGES)]
        self.head_drop = nn.Dropout(drop_rate)
        self.head = self._make_head(num_classes)
        self.init_weights()

    def _make_head(self, num_classes: int) -> nn.Module:
        if num_classes == 0:
            return nn.Identity()
        if self.head_type == "moco":
            return moco_projector(self.embed_dim, num_classes)
        return nn.Linear(self.embed_dim, num_classes)

    # the same initialisation and timm helpers as CAST (the same attributes): one definition
    init_weights = CAST.init_weights
    no_weight_decay = CAST.no_weight_decay

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r"^cls_token|pos_embed|patch_embed",
                    blocks=r"^stages\.(\d+)" if coarse else [(r"^stages\.(\d+)\.blocks\.(\d+)", None),
                                                             (r"^stages\.(\d+)\.pool", (99999,)),
                                                             (r"^fusion", (99999,))])

    set_grad_checkpointing = CAST.set_grad_checkpointing

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new head with ``num_classes`` outputs (of ``head_type``; Identity for 0)."""
        if global_pool is not None:
            if global_pool not in ("", "avg", "token", "max", "avgmax"):
                raise ValueError(f"global_pool must be one of '', 'avg', 'token', 'max', 'avgmax', got "
                                 f"{global_pool!r}.")
            self.global_pool = global_pool
        V.check_int("num_classes (0 builds no classifier, for features)", num_classes, 0)
        self.num_classes = num_classes
        self.head = self._make_head(num_classes)

    # -- inputs -----------------------------------------------------------------------------

    def superpixels(self, images: torch.Tensor) -> torch.Tensor:
        """Superpixel ids (B, H, W) int64 for normalised images, as ``pretrained_cfg``
        says (``superpixel_method``; ``num_segments`` per ``input_size`` area, scaled to
        the images' area: 196 at 224 x 224 gives SPML's 1024 at 512 x 512)."""
        from hcast.ops import superpixels

        cfg = getattr(self, "pretrained_cfg", None) or {}
        method = cfg.get("superpixel_method") or "seeds"
        base = cfg.get("num_segments") or 196
        size = (cfg.get("input_size") or (3, 224, 224))[-2:]
        num_segments = max(1, round(base * images.shape[-2] * images.shape[-1] / (size[0] * size[1])))
        if method == "seeds" and not _has_seeds():
            warnings.warn("SEEDS superpixels need OpenCV contrib (pip install opencv-contrib-python-headless); "
                          "falling back to method='torch_slic'.", RuntimeWarning, stacklevel=3)
            method = "torch_slic"
        with torch.no_grad():
            return superpixels(images, num_segments=num_segments, method=method,
                               mean=cfg.get("mean") or IMAGENET_DEFAULT_MEAN, std=cfg.get("std") or IMAGENET_DEFAULT_STD)

    def check_segments(self, images: torch.Tensor, segments: Optional[torch.Tensor]) -> torch.Tensor:
        """Checked superpixel ids (B, H, W) int64 on the images' device, computed
        (:meth:`superpixels`) when ``segments`` is None.

        Raises:
            TypeError: images not a float tensor; segments not an integer tensor.
            ValueError: images not (B, C, H, W) or not finite; segments not (B, H, W)
                of the images' batch size and size, or negative.
        """
        V.check_tensor("images", images)
        V.check_floating("images", images)
        V.check_rank("images", images, 4, "(B, C, H, W)")
        if segments is None:
            if self.validate_args:
                V.check_finite("images", images)
            return self.superpixels(images).to(images.device)
        V.check_tensor("segments", segments)
        V.check_integer("segments", segments)
        V.check_rank("segments", segments, 3, "(B, H, W)")
        if segments.shape[0] != images.shape[0] or segments.shape[-2:] != images.shape[-2:]:
            raise ValueError(f"segments must have the images' batch size, height and width: images "
                             f"{tuple(images.shape)}, segments {tuple(segments.shape)}.")
        if self.validate_args:
            V.check_finite("images", images)
            V.check_non_negative("segments", segments)
        return segments.to(images.device).long()

    # -- forward ----------------------------------------------------------------------------

    def _pos_table(self) -> torch.Tensor:
        """The position table as a (1, gh, gw, C) grid (class slot removed)."""
        gh, gw = self.grid_size
        return self.pos_embed[:, 1:].reshape(1, gh, gw, self.embed_dim)

    def embed(self, images: torch.Tensor, segments: torch.Tensor
              ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(cls_token (B,1,C), tokens (B,S,C), padding_mask (B,S) bool, pooled_ids)``:
        ``pooled_ids`` are the ids at the resolution pooled (the grid when pre-training)."""
        x = self.patch_embed(images)  # (B, h, w, C)
        if self.model_stage == "pretrain":
            segments = resize_segments(segments, x.shape[1:3])
        num = int(segments.max()) + 1
        tokens, counts = upsampled_superpixel_pool(x, segments, "bilinear", num)
        pos, _ = upsampled_superpixel_pool(self._pos_table().to(x.dtype), segments, "bicubic", num)
        cls_token = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        return cls_token, self.pos_drop(tokens + pos), counts == 0, segments

    def forward_stages(self, images: torch.Tensor, segments: Optional[torch.Tensor] = None,
                       full_last_pool: bool = False) -> Dict[str, Any]:
        """Run the stages; everything the fusion, the heads and the segmentations need.

        Returns:
            dict with ``segments`` (B, H, W) int64 (the ids as given or computed),
            ``pooled_segments`` (the ids at the pooled resolution), ``padding_mask``
            (B, S) bool, ``stage_tokens``: list of 4 (B, N_l, C) block outputs (tokens
            only), ``class_tokens``: list of 4 (B, 1, C) class tokens after each
            pooling's update, ``logits``: the assignment logits (B, N_l, K_l) of the
            first three poolings (all four with ``full_last_pool``).
        """
        segments = self.check_segments(images, segments)
        cls_token, x, padding_mask, pooled = self.embed(images, segments)
        mask = padding_mask
        stage_tokens, class_tokens, logits = [], [], []
        for i, stage in enumerate(self.stages):
            cls_x = stage.forward_blocks(torch.cat([cls_token, x], dim=1))
            cls_token, tokens = cls_x[:, :1], cls_x[:, 1:]
            stage_tokens.append(tokens)
            if i < _NUM_STAGES - 1:
                cls_token, x, logit, _ = stage.pool(cls_token, tokens, mask, False, self.validate_args)
                logits.append(logit)
                mask = x.new_zeros(x.shape[:2], dtype=torch.bool)
            else:
                if full_last_pool:
                    logits.append(stage.pool(cls_token, tokens, mask, False, self.validate_args)[2])
                cls_token = _update_class_token(stage.pool, cls_token)
            class_tokens.append(cls_token)
        return dict(segments=segments, pooled_segments=pooled, padding_mask=padding_mask,
                    stage_tokens=stage_tokens, class_tokens=class_tokens, logits=logits)

    def forward_features(self, images: torch.Tensor, segments: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Fused tokens (B, 1 + S, C): the fused class token, then one token per
        superpixel id (``cast_seg_deit.py``'s output; ``cast_seg.py``'s ``out_block`` is
        ``[:, 1:]``)."""
        out = self.forward_stages(images, segments)
        return self.fusion(out["stage_tokens"], out["class_tokens"], out["logits"][:_NUM_STAGES - 1])

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, 1 + S, C) fused tokens -> (B, num_classes), pooled as ``global_pool`` says."""
        x = self.head_drop(global_pool_nlc(x, pool_type=self.global_pool, num_prefix_tokens=1))
        if pre_logits:
            return x
        if x.ndim == 3:  # global_pool='': every token through the head
            return self.head(x.flatten(0, 1)).unflatten(0, x.shape[:2])
        return self.head(x)

    def forward(self, images: torch.Tensor, segments: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, 3, H, W) images [+ (B, H, W) superpixels] -> (B, num_classes): the head on
        the pooled superpixel tokens (the original pre-training stage's output)."""
        return self.forward_head(self.forward_features(images, segments))

    def forward_superpixels(self, images: torch.Tensor, segments: Optional[torch.Tensor] = None,
                            pre_logits: bool = False) -> torch.Tensor:
        """Per-superpixel outputs (B, S, num_classes): the head on every fused superpixel
        token (S = largest id + 1; ids no pixel holds get the head of a padded token).
        With ``num_classes=0`` or ``pre_logits``: the (B, S, C) features. Equals the
        original ``cast_seg`` model in the segmentation stage, ``model(images, segments)``.
        """
        tokens = self.forward_features(images, segments)[:, 1:]
        if pre_logits:
            return tokens
        return self.head(self.head_drop(tokens).flatten(0, 1)).unflatten(0, tokens.shape[:2])

    def forward_dense(self, images: torch.Tensor, segments: Optional[torch.Tensor] = None,
                      pre_logits: bool = False) -> torch.Tensor:
        """Per-pixel outputs at the images' resolution, (B, num_classes, H, W) (or
        (B, C, H, W) features): each pixel gets its superpixel's output
        (:meth:`forward_superpixels`), so segment boundaries are the superpixels'.
        ``segments`` are computed (:meth:`superpixels`) when omitted."""
        segments = self.check_segments(images, segments)
        per_superpixel = self.forward_superpixels(images, segments, pre_logits)
        batch, channels = per_superpixel.shape[0], per_superpixel.shape[-1]
        index = segments.reshape(batch, -1, 1).expand(-1, -1, channels)
        dense = torch.gather(per_superpixel, 1, index)
        return dense.transpose(1, 2).reshape(batch, channels, *segments.shape[-2:])

    def forward_intermediates(
            self,
            images: torch.Tensor,
            segments: Optional[torch.Tensor] = None,
            indices: Optional[Union[int, List[int]]] = None,
            return_prefix_tokens: bool = False,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
            paint: Optional[str] = None,
    ) -> Union[List[Any], Tuple[Any, List[Any]]]:
        """The stages' token maps, as timm's ``forward_intermediates``: ``'NLC'`` gives
        the (B, N_l, C) region tokens of stage l (N_1 = S superpixels), ``'NCHW'`` paints
        them on the stride-8 grid (B, C, ceil(H/8), ceil(W/8)) through the superpixels
        and the assignments (:func:`hcast.models.cast.paint_tokens`). There is no final
        norm (``norm`` is accepted and ignored, as the original has none). The final
        output is :meth:`forward_features`'s. ``stop_early`` is accepted; every stage
        runs because the fusion reads them all.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}.")
        try:
            take_indices, _ = feature_take_indices(_NUM_STAGES, indices)
        except AssertionError as error:
            raise ValueError(f"indices must pick stages in [-{_NUM_STAGES}, {_NUM_STAGES}), got {indices!r}.") from error
        out = self.forward_stages(images, segments)
        grid = (-(-images.shape[-2] // 8), -(-images.shape[-1] // 8))
        grid_ids = resize_segments(out["pooled_segments"], grid)
        intermediates = []
        for i in take_indices:
            feature = out["stage_tokens"][i]
            if output_fmt == "NCHW":
                feature = paint_tokens(feature, grid_ids, out["logits"][:i], paint or self.feature_paint)
            intermediates.append((feature, out["class_tokens"][i]) if return_prefix_tokens else feature)
        if intermediates_only:
            return intermediates
        return self.fusion(out["stage_tokens"], out["class_tokens"], out["logits"]), intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Keeps every stage (the fusion reads all four); drops the head if asked."""
        take_indices, _ = feature_take_indices(_NUM_STAGES, indices)
        if prune_head:
            self.reset_classifier(0)
        return take_indices

    @torch.no_grad()
    def forward_segments(self, images: torch.Tensor, segments: Optional[torch.Tensor] = None) -> Dict[str, Any]:
        """CAST's hierarchical segmentation: ``segmentations``, a list of 4 (B, H', W')
        int64 maps, finest first (stage l's cluster of every pixel), at the pooled
        resolution (the images' in the segmentation stage); ``superpixels`` the ids."""
        from hcast.ops import hierarchical_segmentation

        out = self.forward_stages(images, segments, full_last_pool=True)
        maps = hierarchical_segmentation(out["logits"], out["pooled_segments"])
        return dict(superpixels=out["segments"], segmentations=maps, logits=out["logits"])


# ---------------------------------------------------------------------------------------
# Checkpoint conversion
# ---------------------------------------------------------------------------------------


def _adapt_pos_embed(state_dict: Dict[str, torch.Tensor], model: CASTSeg) -> None:
    pos_embed = state_dict.get("pos_embed")
    if pos_embed is None or pos_embed.shape == model.pos_embed.shape:
        return
    if model.pos_embed_type == "sincos":
        state_dict["pos_embed"] = model.pos_embed.detach().clone()
        return
    side = int(math.sqrt(pos_embed.shape[1] - 1))
    state_dict["pos_embed"] = resample_abs_pos_embed(pos_embed, list(model.grid_size), old_size=[side, side],
                                                     num_prefix_tokens=1)


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: CASTSeg) -> Dict[str, torch.Tensor]:
    """Convert a checkpoint into this model's keys; timm's ``pretrained_filter_fn``.

    Reads the original ``cast_seg.py`` / ``cast_seg_deit.py`` checkpoints (MoCo v3
    ``{'state_dict': {'module.base_encoder.*'}}`` from COCO pre-training, plain state
    dicts), CAST classification checkpoints (the DeiT ImageNet-1k start of the ADE20K /
    Context fine-tuning: the fusion, absent there, keeps the model's initialisation, as
    the original's fine-tuning starts), and hcast's own keys. MoCo's projector is kept
    as the head when ``model.head_type == 'moco'``; a head whose shape does not fit is
    dropped; the DeiT checkpoint's final ``norm`` (unused by the original's fused
    output) is dropped.
    """
    keep_projector = getattr(model, "head_type", "linear") == "moco"
    flat = original.strip_prefixes(original.unwrap_state_dict(state_dict), keep_projector=keep_projector)
    out = original.cast_keys_to_hcast(flat, model.depths, keep_last_update=True)
    out = original.cast_seg_keys_to_hcast(out)
    _adapt_pos_embed(out, model)
    own = model.state_dict()
    out = {k: v for k, v in out.items() if not k.startswith("norm.")}
    for key in [k for k in out if k.startswith("head.")]:
        if key not in own or own[key].shape != out[key].shape:
            del out[key]
    for key, value in own.items():  # parts the checkpoint has no weights for keep their init
        if key.startswith("fusion.") and key not in out:
            out[key] = value
    return out


# ---------------------------------------------------------------------------------------
# Pretrained configs and entry points
# ---------------------------------------------------------------------------------------


def _cfg(**kwargs: Any):
    return _cast_cfg(**dict(dict(num_classes=0, classifier="head"), **kwargs))


_HUB = "twke/CAST"
default_cfgs = generate_default_cfgs({
    "cast_seg_small.moco_coco_ep399": _cfg(
        hf_hub_id=_HUB, hf_hub_filename="snapshots/moco/coco/cast_small/checkpoint_0399.pth.tar",
        description="MoCo v3 self-supervised on COCO, epoch 399: the start of the VOC fine-tuning (67.6 mIoU "
                    "published after fine-tuning)."),
    "cast_seg_small.moco_coco_ep149": _cfg(
        hf_hub_id=_HUB, hf_hub_filename="snapshots/moco/coco/cast_small/checkpoint_0149.pth.tar",
        description="MoCo v3 self-supervised on COCO, epoch 149: unsupervised VOC segmentation by segsort "
                    "retrieval (38.4 mIoU published)."),
    "cast_seg_small.deit_in1k": _cfg(
        hf_hub_id=_HUB, hf_hub_filename="snapshots/deit/imagenet1k/cast_small/best_checkpoint.pth",
        description="DeiT-style supervised ImageNet-1k CAST-S: the start of the ADE20K (43.1 mIoU) and Pascal "
                    "Context (49.1) fine-tuning; the fusion is not in it."),
    "cast_seg_base": _cfg(),
    "cast_seg_tiny": _cfg(input_size=(3, 64, 64), num_segments=49),
})


def _stage_kwargs(variant: str, model_stage: str, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Cluster preset of the model stage; MoCo tags use the fixed sin-cos table and DeiT
    tags the learned one; the pre-training stage keeps MoCo's projector (256 outputs)
    unless ``num_classes`` is given."""
    if model_stage not in MODEL_STAGES:
        raise ValueError(f"model_stage must be one of {MODEL_STAGES}, got {model_stage!r}.")
    tag = _resolve_tag(variant, kwargs) or ""
    kwargs.setdefault("pos_embed", "learn" if tag.startswith("deit") else "sincos")
    if model_stage == "pretrain" and "num_classes" not in kwargs:
        kwargs.update(num_classes=256, head_type="moco")
    return dict(kwargs, model_stage=model_stage)


def _create(variant: str, pretrained: bool, model_stage: str, args: Dict[str, Any], kwargs: Dict[str, Any]):
    kwargs = _stage_kwargs(variant, model_stage, kwargs)
    if "num_clusters" not in kwargs and "num_clusters" in args:
        args = dict(args, num_clusters=args["num_clusters"][model_stage])
    return _create_cast(variant, pretrained, model_cls=CASTSeg, filter_fn=checkpoint_filter_fn,
                        **dict(args, **kwargs))


@register_model
def cast_seg_tiny(pretrained: bool = False, model_stage: str = "segmentation", **kwargs: Any) -> CASTSeg:
    """CAST-Seg-Ti for small images and tests: width 192, 3 heads, depths 3,3,3,2,
    clusters 64,32,16,8 (segmentation) / 16,8,4,2 (pretrain). No released weights."""
    args = dict(img_size=64, embed_dim=192, depths=(3, 3, 3, 2), num_heads=3,
                num_clusters=dict(segmentation=(64, 32, 16, 8), pretrain=(16, 8, 4, 2)))
    return _create("cast_seg_tiny", pretrained, model_stage, args, kwargs)


@register_model
def cast_seg_small(pretrained: bool = False, model_stage: str = "segmentation", **kwargs: Any) -> CASTSeg:
    """CAST-S segmentation encoder (``cast_seg.cast_small`` / ``cast_small_pretrain``):
    width 384, 12 heads, depths 3,3,3,2, clusters 320,160,80,40 (segmentation) or
    64,32,16,8 (``model_stage='pretrain'``)."""
    args = dict(embed_dim=384, depths=(3, 3, 3, 2), num_heads=12, num_clusters=STAGE_CLUSTERS)
    return _create("cast_seg_small", pretrained, model_stage, args, kwargs)


@register_model
def cast_seg_base(pretrained: bool = False, model_stage: str = "segmentation", **kwargs: Any) -> CASTSeg:
    """CAST-B segmentation encoder (``cast_seg.cast_base`` / ``cast_base_pretrain``):
    width 768, 12 heads, depths 3,3,3,2. No released weights."""
    args = dict(embed_dim=768, depths=(3, 3, 3, 2), num_heads=12, num_clusters=STAGE_CLUSTERS)
    return _create("cast_seg_base", pretrained, model_stage, args, kwargs)
