"""CAST: a vision transformer on superpixel tokens with graph pooling.

Ke, Mo and Yu, "Learning Hierarchical Image Segmentation For Recognition and By
Recognition", ICLR 2024 (https://openreview.net/forum?id=IRcv4yFX6z); original code
github.com/twke18/CAST (``cast_models/cast_deit.py`` supervised, ``cast_models/cast.py``
MoCo v3 self-supervised, ``cast_models/graph_pool.py``). This file is written anew in
timm's style and gives the same numbers for the same weights, images and superpixels.

How an image flows through the model:

1. :class:`ConvStem` turns the (B, 3, H, W) image into a (B, H/8, W/8, C) grid.
2. The superpixel ids of the image are resized to the grid by nearest neighbour and the
   grid features plus position embeddings are averaged per superpixel
   (:func:`hcast.ops.superpixel_pool`): S segment tokens and a padding mask for ids that
   own no grid cell.
3. Four stages of transformer blocks on ``[class token, tokens]``. After stage ``l`` a
   :class:`GraphPooling` layer clusters the tokens into ``num_clusters[l]`` centroids
   (farthest point sampling picks the centroids, cosine similarity assigns the tokens);
   the centroids are the next stage's tokens. The assignment logits of all stages
   compose into a hierarchical segmentation of the image.
4. The classifier reads the normalised class token after the last stage.

The last pooling stage feeds nothing the classifier reads, so it only runs for
:meth:`CAST.forward_segments`. Unlike the original, images with fewer distinct
superpixels than a stage's cluster count (a blank image, tiny inputs) give valid
outputs: see :class:`GraphPooling`.

Key layout differences from the original checkpoints (handled by
:func:`checkpoint_filter_fn` with :func:`hcast.weights.original.cast_keys_to_hcast`):
``blocksK.N`` -> ``stages.{K-1}.blocks.{N - first index of stage K}`` (slicing ``nn.Sequential`` keeps the global block index N; the duplicate
``blocks.N`` copies of the same modules are dropped), ``poolK.pool_block.centroid_fc`` ->
``stages.{K-1}.pool.assign``, ``fc1.0/fc1.1/fc2.0/fc2.1`` -> ``fc1_norm/fc1/fc2_norm/fc2``,
the last stage's unused ``fc1``/``fc2`` dropped, MoCo's ``pe_token`` joined to the front
of its ``pos_embed``.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import Attention, AttentionPoolLatent, resample_abs_pos_embed
from timm.models import checkpoint_seq, generate_default_cfgs, get_pretrained_cfg, register_model
from timm.models._features import feature_take_indices
from timm.models import PretrainedCfg
from timm.models.vision_transformer import Block, global_pool_nlc
from torch.utils.checkpoint import checkpoint

from hcast.models.factory import FromPretrainedMixin
from hcast.ops import farthest_point_sampling, superpixel_pool
from hcast import _validation as V
from hcast.ops.superpixel_pool import resize_segments
from hcast.weights import original
from hcast.weights.builder import as_pretrained_cfg as _as_pretrained_cfg, build_model_with_hcast_cfg

__all__ = [
    "CAST",
    "CASTPretrainedCfg",
    "ConvStem",
    "GraphPooling",
    "AssignmentBlock",
    "checkpoint_filter_fn",
    "sincos_2d_pos_embed",
    "paint_tokens",
]

_NUM_STAGES = 4
#: what ``global_pool`` accepts, as timm's ViT ('' keeps every token)
GLOBAL_POOL_TYPES = ("", "token", "avg", "avgmax", "max", "map")
#: how :meth:`CAST.forward_intermediates` paints region tokens on the stem grid
PAINT_MODES = ("soft", "hard")


def _check_global_pool(global_pool: str) -> str:
    if global_pool not in GLOBAL_POOL_TYPES:
        raise ValueError(f"global_pool must be one of {GLOBAL_POOL_TYPES} (as timm's ViT), got {global_pool!r}.")
    return global_pool


def _freeze_as_buffers(module: nn.Module) -> None:
    """Turn every parameter of ``module`` into a (persistent) buffer of the same name.

    For weights that are loaded but never trained (the last graph pooling): they keep
    their state-dict keys, move with ``.to()``, and are no parameters an optimiser or
    timm's "every parameter gets a gradient" check would see.
    """
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is None:
                continue
            del sub._parameters[name]
            sub.register_buffer(name, param.detach())


# ---------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------


class ConvStem(nn.Module):
    """Convolutional stem with patch size 8 (Xiao et al., "Early Convolutions Help
    Transformers See Better", 2021), as MoCo v3 and CAST use it.

    Four 3x3 convolutions (strides 2, 2, 2, 1; widths C/8, C/4, C/2, C), each followed by
    BatchNorm and ReLU, then a 1x1 convolution to C channels. Module names (``proj.0`` ...
    ``proj.12``) are the original's, so checkpoints load unchanged.

    Args:
        img_size: the image size the position embeddings are laid out for.
        patch_size: must be 8.
        in_chans: input channels.
        embed_dim: C, divisible by 8.

    Shapes:
        (B, in_chans, H, W) float -> (B, H/8, W/8, C), channels last.

    With the BatchNorms in eval mode (``model.eval()``) each BatchNorm is folded into the
    convolution before it (``w * g / sqrt(v + eps)``, ``b - m * g / sqrt(v + eps)``:
    the same affine map, one pass less over each activation; differentiable, so
    gradients still reach every parameter), the ReLUs run in place, and the three
    stride-2 convolutions run over ``chunk_bytes``-sized groups of images: their
    112 x 112 and 56 x 56 activations (2.4 MiB per 224 x 224 image for the first) then
    stay in the CPU's cache and in memory the allocator reuses, instead of a fresh
    38 MiB block per batch of 16. Outputs equal the unfolded path up to float32
    rounding (about 1e-7 relative; tested). ``benchmarks/models.py`` measures the gain.
    """

    #: largest first-convolution output (bytes) computed at once on the eval path
    chunk_bytes: int = 8 * 2 ** 20

    def __init__(self, img_size: Union[int, Tuple[int, int]] = 224, patch_size: int = 8,
                 in_chans: int = 3, embed_dim: int = 384) -> None:
        super().__init__()
        if patch_size != 8:
            raise ValueError(f"patch_size must be 8 for CAST's ConvStem, got {patch_size}.")
        if embed_dim % 8:
            raise ValueError(f"embed_dim must be divisible by 8 for ConvStem, got {embed_dim}.")
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.img_size = img_size
        self.in_chans = in_chans
        self.patch_size = (patch_size, patch_size)
        self.grid_size = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        layers: List[nn.Module] = []
        in_dim, out_dim = in_chans, embed_dim // 8
        for i in range(4):
            layers += [
                nn.Conv2d(in_dim, out_dim, 3, stride=2 if i < 3 else 1, padding=1, bias=False),
                nn.BatchNorm2d(out_dim),
                nn.ReLU(inplace=True),
            ]
            in_dim, out_dim = out_dim, out_dim * 2
        layers.append(nn.Conv2d(in_dim, embed_dim, kernel_size=1))
        self.proj = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Channels-last convolutions are faster on CPU (oneDNN) and GPU, and make the
        # channels-last output a free view.
        x = x.contiguous(memory_format=torch.channels_last)
        if any(m.training for m in self.proj if isinstance(m, nn.BatchNorm2d)):
            return self.proj(x).permute(0, 2, 3, 1)  # batch statistics: the plain path
        return self._forward_folded(x).permute(0, 2, 3, 1)

    def _folded_convs(self) -> List[Tuple[torch.Tensor, torch.Tensor, nn.Conv2d]]:
        """(weight, bias, conv) of each 3x3 convolution with its eval-mode BatchNorm folded in.

        Not ``torch.nn.utils.fusion.fuse_conv_bn_weights``: it returns new leaf Parameters,
        which would cut the gradient to the convolution and BatchNorm weights.
        """
        folded = []
        for i in range(0, 12, 3):
            conv, bn = self.proj[i], self.proj[i + 1]
            scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
            weight = conv.weight * scale.view(-1, 1, 1, 1).to(conv.weight.dtype)
            bias = bn.bias - bn.running_mean * scale
            if conv.bias is not None:
                bias = bias + conv.bias * scale
            folded.append((weight, bias.to(conv.weight.dtype), conv))
        return folded

    def _forward_folded(self, x: torch.Tensor) -> torch.Tensor:
        convs = self._folded_convs()

        def conv_relu(h: torch.Tensor, k: int) -> torch.Tensor:
            weight, bias, conv = convs[k]
            return F.relu_(F.conv2d(h, weight, bias, conv.stride, conv.padding))

        def strided(h: torch.Tensor) -> torch.Tensor:
            for k in range(3):
                h = conv_relu(h, k)
            return h

        batch, _, height, width = x.shape
        per_image = self.proj[0].out_channels * -(-height // 2) * -(-width // 2) * x.element_size()
        chunk = max(1, self.chunk_bytes // max(per_image, 1))
        if torch.compiler.is_compiling() or chunk >= batch:  # one graph: no batch-dependent split
            x = strided(x)
        else:
            x = torch.cat([strided(part) for part in x.split(chunk)])
        return self.proj[12](conv_relu(x, 3))


class AssignmentBlock(nn.Module):
    """The attention block that embeds tokens before they are assigned to centroids
    (``GraphPooling.centroid_fc`` in the original): pre-norm self-attention with a
    residual, no MLP, then the mean over tokens is replaced by a learned bias.

    Shapes:
        (B, N, C) -> (B, N, C). All N tokens attend to each other (padded ones too, as in
        the original) unless ``padding_mask`` (B, N) bool is given: then padded tokens are
        neither attended to nor part of the mean (fixed-budget mode, ``max_tokens``).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True,
                 norm_layer: Callable[..., nn.Module] = partial(nn.LayerNorm, eps=1e-6)) -> None:
        super().__init__()
        self.norm = norm_layer(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias)
        self.bias = nn.Parameter(torch.zeros(dim).normal_(0, 1e-2))

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if padding_mask is None:
            x = x + self.attn(self.norm(x))
            return x - x.mean(dim=1, keepdim=True) + self.bias
        keep = ~padding_mask
        x = x + self.attn(self.norm(x), attn_mask=keep[:, None, None, :])
        weights = keep.unsqueeze(-1).to(x.dtype)
        mean = (x * weights).sum(dim=1, keepdim=True) / weights.sum(dim=1, keepdim=True).clamp(min=1)
        return x - mean + self.bias


class GraphPooling(nn.Module):
    """CAST's graph pooling: cluster N tokens into K centroids.

    1. Centroid selection by farthest point sampling (FPS, :func:`hcast.ops.
       farthest_point_sampling`, float64) on ``[mean, tokens]``, where padded tokens are
       replaced by the mean of the valid ones and the mean is the start point; the start
       point is dropped, leaving K token indices.
    2. Tokens are embedded by :class:`AssignmentBlock`; the logit of token i for centroid
       k is 5 x the cosine similarity of their embeddings; assignments are the softmax
       over k.
    3. (``update_centroids``) Token features after ``fc1`` (LayerNorm, Linear C->4C, GELU,
       dropout) are averaged per centroid with the soft assignments; ``fc2`` (LayerNorm,
       Linear 4C->C) maps them back and the sampled tokens are added as a residual. The
       class token gets the same MLP update.

    When a token set has fewer than K + 1 distinct points (e.g. a blank image with one
    superpixel), FPS picks the start point again. The original fails an assertion there;
    here such picks fall back to the first sampled token (or the first valid token when
    even the first pick is the start point), giving duplicate centroids that share the
    assignment mass. Wherever the original runs, the result is identical.

    Args:
        dim: token width C.
        num_clusters: K.
        num_heads: heads of the assignment attention (12 in the released models).
        update_centroids: build ``fc1``/``fc2`` and return pooled centroids; False for a
            last stage whose centroids nobody reads (only the assignments).
        drop: dropout after GELU in ``fc1`` (0.1 in the original).
    """

    def __init__(self, dim: int, num_clusters: int, num_heads: int = 12, update_centroids: bool = True,
                 drop: float = 0.1,
                 norm_layer: Callable[..., nn.Module] = partial(nn.LayerNorm, eps=1e-6)) -> None:
        super().__init__()
        self.num_clusters = num_clusters
        self.update_centroids = update_centroids
        self.assign = AssignmentBlock(dim, num_heads, qkv_bias=True, norm_layer=norm_layer)
        if update_centroids:
            # The original builds these norms with nn.LayerNorm's default eps (1e-5).
            self.fc1_norm = nn.LayerNorm(dim)
            self.fc1 = nn.Linear(dim, dim * 4)
            self.act = nn.GELU()
            self.drop = nn.Dropout(drop)
            self.fc2_norm = nn.LayerNorm(dim * 4)
            self.fc2 = nn.Linear(dim * 4, dim)

    @torch.no_grad()
    def sample_centroids(self, tokens: torch.Tensor, padding_mask: torch.Tensor,
                         validate_args: bool = True) -> torch.Tensor:
        """FPS centroid indices (B, K) int64 in ``[0, N)`` for tokens (B, N, C) with
        padding mask (B, N) bool (True = padded).

        Padded tokens are replaced by the start point (the mean of the valid tokens):
        their distance to the sampled set is exactly 0, so FPS picks one only once every
        valid token is taken, and then it picks the start point first (first maximum),
        which the fallback below replaces. A padded token is never a centroid."""
        if tokens.dtype in (torch.bfloat16, torch.float16):  # bf16 weights: the mean in float32
            tokens = tokens.float()
        valid = (~padding_mask).unsqueeze(-1).to(tokens.dtype)
        mean = (tokens * valid).sum(1, keepdim=True) / valid.sum(1, keepdim=True).clamp(min=1)
        filled = torch.where(padding_mask.unsqueeze(-1), mean, tokens)
        points = torch.cat([mean, filled], dim=1).to(torch.float64)
        num_points = points.shape[1]
        num_samples = self.num_clusters + 1
        inds = farthest_point_sampling(points, min(num_samples, num_points), 0, validate_args=validate_args)
        if num_samples > num_points:  # more clusters than tokens: FPS would repeat the start
            inds = F.pad(inds, (0, num_samples - num_points), value=0)
        inds = inds[:, 1:] - 1
        # A re-picked start point (-1) means the token set ran out of distinct points.
        first_valid = (~padding_mask).to(torch.uint8).argmax(dim=1)
        fallback = torch.where(inds[:, 0] >= 0, inds[:, 0], first_valid)
        return torch.where(inds < 0, fallback[:, None], inds)

    def forward(self, cls_token: torch.Tensor, tokens: torch.Tensor,
                padding_mask: torch.Tensor, masked: bool = False, validate_args: bool = True
                ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Pool tokens into centroids.

        Args:
            cls_token (Tensor[B, 1, C]): the class token.
            tokens (Tensor[B, N, C]): the tokens to cluster.
            padding_mask (Tensor[B, N], bool): True where a token is padding.
            masked: keep padded tokens out of the assignment attention, its mean and the
                averaging into centroids (fixed-budget mode); False: they take part, as
                in the original. FPS never picks them either way.
            validate_args: passed to :func:`hcast.ops.farthest_point_sampling` (False: no
                finiteness check, no host sync).

        Returns:
            ``(cls_token, centroids, logits, sampled)``: the updated class token
            (B, 1, C), the centroids (B, K, C) (both None without ``update_centroids``),
            the assignment logits (B, N, K) and the FPS token indices (B, K) int64.
        """
        sampled = self.sample_centroids(tokens, padding_mask, validate_args)
        gather_index = sampled.unsqueeze(-1).expand(-1, -1, tokens.shape[-1])
        embedded = self.assign(tokens, padding_mask if masked else None)
        normalized = F.normalize(embedded, dim=-1)  # row-wise: gathering after it is exact
        logits = 5 * normalized @ torch.gather(normalized, 1, gather_index).transpose(1, 2)
        if not self.update_centroids:
            return None, None, logits, sampled
        assignments = logits.softmax(dim=-1)  # (B, N, K)
        if masked:  # padded tokens carry no mass into any centroid
            assignments = assignments.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        hidden = self.drop(self.act(self.fc1(self.fc1_norm(torch.cat([cls_token, tokens], dim=1)))))
        cls_hidden, token_hidden = hidden[:, :1], hidden[:, 1:]
        pooled = assignments.transpose(1, 2) @ token_hidden / assignments.sum(dim=1).unsqueeze(-1)
        out = self.fc2(self.fc2_norm(torch.cat([cls_hidden, pooled], dim=1)))
        centroids = out[:, 1:] + torch.gather(tokens, 1, gather_index)
        return out[:, :1] + cls_token, centroids, logits, sampled


class CASTStage(nn.Module):
    """Transformer blocks on ``[class token, tokens]`` followed by graph pooling."""

    def __init__(self, blocks: Sequence[nn.Module], pool: GraphPooling) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        self.pool = pool
        self.grad_checkpointing = False

    def forward_blocks(self, cls_x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Run the blocks on (B, 1 + N, C); ``attn_mask`` (B, 1, 1, 1 + N) bool, True
        where a key may be attended to (fixed-budget mode), None: every token."""
        if attn_mask is None:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                return checkpoint_seq(self.blocks, cls_x)
            return self.blocks(cls_x)
        for block in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                cls_x = checkpoint(block, cls_x, attn_mask, use_reentrant=False)
            else:
                cls_x = block(cls_x, attn_mask=attn_mask)
        return cls_x


def sincos_2d_pos_embed(grid_size: Tuple[int, int], dim: int, temperature: float = 10000.) -> torch.Tensor:
    """MoCo v3's fixed 2D sin-cos position embedding, as CAST's MoCo models build it.

    The grid is built as ``meshgrid(arange(w), arange(h))`` (``ij`` indexing) and flattened,
    so for square grids the first half of the channels encodes the *row* of a cell; this
    quirk of the original is kept because the released weights were trained with it.

    Returns:
        Tensor[1, h*w, dim], float32.

    Raises:
        ValueError: if ``dim`` is not divisible by 4.
    """
    if dim % 4:
        raise ValueError(f"dim must be divisible by 4 for a 2D sin-cos embedding, got {dim}.")
    h, w = grid_size
    grid_w, grid_h = torch.meshgrid(torch.arange(w, dtype=torch.float32),
                                    torch.arange(h, dtype=torch.float32), indexing="ij")
    omega = 1.0 / temperature ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))
    out_w = grid_w.flatten()[:, None] * omega[None]
    out_h = grid_h.flatten()[:, None] * omega[None]
    return torch.cat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], dim=1)[None]


def init_linear(module: nn.Module) -> None:
    """normal(0, 0.02) weights and zero biases for ``nn.Linear`` modules."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _check_num_classes(num_classes: Any) -> int:
    """``num_classes`` as an int: TypeError for a non-int, ValueError below 0 (0 builds no
    classifier, for features)."""
    return V.check_int("num_classes (0 builds no classifier, for features)", num_classes, 0)


def paint_tokens(tokens: torch.Tensor, grid_ids: torch.Tensor, assignments: Sequence[torch.Tensor],
                 mode: str = "soft") -> torch.Tensor:
    """Paint region tokens back onto the stem's grid: a dense (B, C, h, w) feature map.

    CAST's tokens after ``l`` graph poolings are regions (clusters of clusters of
    superpixels), not grid cells. Each grid cell belongs to one superpixel
    (``grid_ids``); the assignments of the poolings take a superpixel to the stage's
    regions. ``'soft'`` composes the soft assignments (softmax of the logits,
    ``P_0 @ P_1 @ ...``), so a cell gets the mixture of region features its superpixel
    is assigned to (differentiable through the assignments too); ``'hard'`` follows
    each superpixel's most likely region at every pooling (the regions of
    :meth:`CAST.forward_segments`) and copies that region's feature.

    Args:
        tokens (Tensor[B, N_l, C]): the stage's region tokens (no class token).
        grid_ids (Tensor[B, h, w], int64): superpixel id of every grid cell, in ``[0, S)``.
        assignments: the ``l`` assignment logits (B, S, K_0), (B, K_0, K_1), ...,
            (B, K_{l-2}, N_l) of the poolings before the stage; empty for stage 0
            (``N_0 = S``: the superpixel tokens themselves).
        mode: ``'soft'`` or ``'hard'``.

    Returns:
        Tensor[B, C, h, w] of the dtype of ``tokens``.
    """
    if mode not in PAINT_MODES:
        raise ValueError(f"paint mode must be one of {PAINT_MODES}, got {mode!r}.")
    per_superpixel = tokens
    if assignments:
        if mode == "soft":
            composed = assignments[0].softmax(dim=-1)
            for logits in assignments[1:]:
                composed = composed @ logits.softmax(dim=-1)
            per_superpixel = composed.to(tokens.dtype) @ tokens  # (B, S, C)
        else:
            region = assignments[0].argmax(dim=-1)  # (B, S)
            for logits in assignments[1:]:
                region = torch.gather(logits.argmax(dim=-1), 1, region)
            per_superpixel = torch.gather(tokens, 1, region.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
    batch, height, width = grid_ids.shape
    index = grid_ids.reshape(batch, height * width, 1).expand(-1, -1, tokens.shape[-1])
    dense = torch.gather(per_superpixel, 1, index)  # (B, h*w, C)
    return dense.transpose(1, 2).reshape(batch, -1, height, width)


def _has_seeds() -> bool:
    try:
        import cv2
    except ImportError:
        return False
    return hasattr(cv2, "ximgproc") and hasattr(cv2.ximgproc, "createSuperpixelSEEDS")


# ---------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------


class CAST(FromPretrainedMixin, nn.Module):
    """CAST classifier (Ke et al., ICLR 2024) on superpixel tokens.

    Args:
        img_size: the image size the position embedding is laid out for; other sizes
            (multiples of 8) work, the embedding is resampled on the fly.
        patch_size: 8 (the conv stem's stride).
        in_chans: input channels.
        num_classes: classifier outputs; 0 for a feature extractor.
        global_pool: how :meth:`forward_head` pools the last stage's tokens, as timm's
            ViT: ``'token'`` (class token, as the original), ``'avg'`` / ``'max'`` /
            ``'avgmax'`` (over the segment tokens), ``'map'`` (timm's attention pooling,
            ``attn_pool``, new weights) or ``''`` (no pooling: all tokens go to the head).
        embed_dim: token width C.
        depths: transformer blocks per stage (4 stages).
        num_heads: attention heads of the blocks and of the pooling's assignment block.
        num_clusters: centroids K of each stage's graph pooling.
        mlp_ratio, qkv_bias: transformer block settings.
        pos_embed: ``'learn'`` (DeiT-style learned, with a class slot) or ``'sincos'``
            (MoCo v3's fixed 2D sin-cos embedding; zero class slot, not trained).
        drop_rate, pos_drop_rate, proj_drop_rate, attn_drop_rate, drop_path_rate: dropout
            and stochastic depth rates (timm's meanings).
        pool_drop_rate: dropout inside graph pooling's MLP (0.1 in the original).
        norm_layer: norm of the blocks and of the final norm.
        validate_args: check input values at the forward boundary (``images`` finite,
            one pass and a host sync); shape and dtype checks always run. Also an
            attribute, ``model.validate_args``.
        feature_paint: how :meth:`forward_intermediates` (and ``features_only=True``)
            paints region tokens on the stem grid, ``'soft'`` or ``'hard'``
            (:func:`paint_tokens`).
        max_tokens: ``None`` (the default, as the original and the released checkpoints):
            the number of superpixel tokens is the largest id in the batch plus one, and
            padded tokens (ids with no grid cell) take part in the first stage's attention
            and pooling, so an image's outputs depend on the images batched with it. An
            int: the fixed token budget of the *fixed-budget mode*: every image gets
            ``max_tokens`` tokens, padded and empty ones are masked out of attention, the
            assignment block's mean and the averaging into centroids (FPS never picks them
            in either mode); an image's outputs no longer depend on its batch and equal
            the default mode's for that image evaluated alone (when each of its ids owns a
            grid cell); shapes are static (one graph: ``torch.compile(fullgraph=True)``,
            ``torch.export``, ONNX). Ids must be ``< max_tokens`` (checked with
            ``validate_args``). Also an attribute, ``model.max_tokens``.

    Inputs:
        images (Tensor[B, in_chans, H, W], float): normalised with the ``pretrained_cfg``
            mean/std; H and W multiples of 8; finite.
        segments (Tensor[B, H, W], int64, optional): superpixel ids >= 0 at the image's
            resolution (the model resizes them to its H/8 x W/8 grid by nearest
            neighbour, as the original does; ids at another resolution raise
            ``ValueError``: resize them explicitly with
            :func:`hcast.ops.resize_segments`). Without them the model computes
            superpixels with :func:`hcast.ops.superpixels` as ``pretrained_cfg`` says
            (``superpixel_method``, ``num_segments``; SEEDS, 196 for the released weights).

    Raises:
        ValueError: at construction, for a negative ``num_classes``, mismatched
            ``depths``/``num_clusters`` or an unknown ``global_pool``/``pos_embed``.
    """

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: int = 8,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "token",
            embed_dim: int = 384,
            depths: Sequence[int] = (3, 3, 3, 2),
            num_heads: int = 12,
            num_clusters: Sequence[int] = (64, 32, 16, 8),
            mlp_ratio: float = 4.0,
            qkv_bias: bool = True,
            pos_embed: str = "learn",
            drop_rate: float = 0.0,
            pos_drop_rate: float = 0.0,
            proj_drop_rate: float = 0.0,
            attn_drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            pool_drop_rate: float = 0.1,
            norm_layer: Optional[Callable[..., nn.Module]] = None,
            validate_args: bool = True,
            feature_paint: str = "soft",
            max_tokens: Optional[int] = None,
    ) -> None:
        super().__init__()
        num_classes = _check_num_classes(num_classes)
        if max_tokens is not None:  # the superpixel token budget, above the largest superpixel id
            max_tokens = V.check_int("max_tokens", max_tokens, 1)
        self.max_tokens = max_tokens
        if len(depths) != _NUM_STAGES or len(num_clusters) != _NUM_STAGES:
            raise ValueError(
                f"depths and num_clusters must have {_NUM_STAGES} entries (one per stage), got "
                f"depths={tuple(depths)} and num_clusters={tuple(num_clusters)}.")
        _check_global_pool(global_pool)
        if feature_paint not in PAINT_MODES:
            raise ValueError(f"feature_paint must be one of {PAINT_MODES}, got {feature_paint!r}.")
        if pos_embed not in ("learn", "sincos"):
            raise ValueError(f"pos_embed must be 'learn' or 'sincos', got {pos_embed!r}.")
        norm_layer = norm_layer or partial(nn.LayerNorm, eps=1e-6)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1
        self.depths = tuple(depths)
        self.num_clusters = tuple(num_clusters)
        self.pos_embed_type = pos_embed
        self.feature_paint = feature_paint
        self.grad_checkpointing = False
        self.validate_args = validate_args

        self.patch_embed = ConvStem(img_size, patch_size, in_chans, embed_dim)
        self.grid_size = self.patch_embed.grid_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        pos_embed_init = torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim)
        if pos_embed == "sincos":  # fixed: a buffer, saved and loaded under the same key
            self.register_buffer("pos_embed", pos_embed_init)
        else:
            self.pos_embed = nn.Parameter(pos_embed_init)
        self.pos_drop = nn.Dropout(pos_drop_rate)

        num_blocks = sum(depths)  # stochastic depth rate rising linearly over all blocks
        dpr = [drop_path_rate * i / max(num_blocks - 1, 1) for i in range(num_blocks)]
        stages = []
        for i, (depth, clusters) in enumerate(zip(depths, num_clusters)):
            start = sum(depths[:i])
            blocks = [
                Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, proj_drop=proj_drop_rate,
                      attn_drop=attn_drop_rate, drop_path=dpr[start + j], norm_layer=norm_layer)
                for j in range(depth)
            ]
            last = i == _NUM_STAGES - 1
            pool = GraphPooling(embed_dim, clusters, num_heads=num_heads, update_centroids=not last,
                                drop=pool_drop_rate, norm_layer=norm_layer)
            stages.append(CASTStage(blocks, pool))
        self.stages = nn.ModuleList(stages)
        # The last pooling only produces the coarsest segmentation; like the original, it
        # is not trained (its weights stay as loaded): buffers, not parameters.
        _freeze_as_buffers(self.stages[-1].pool)
        self.feature_info = [dict(num_chs=embed_dim, reduction=8, module=f"stages.{i}") for i in range(_NUM_STAGES)]
        self.norm = norm_layer(embed_dim)
        self.attn_pool = AttentionPoolLatent(embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio,
                                             norm_layer=norm_layer) if global_pool == "map" else None
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    # -- initialisation, timm helpers ------------------------------------------------------

    def init_weights(self) -> None:
        """ViT init as timm's: normal(0, 0.02) for linear weights, the position embedding
        and the class token, zero biases. (timm's ``trunc_normal_(std=.02)`` truncates at
        +-2, i.e. 100 standard deviations: the same distribution, sampled far slower.) The
        sin-cos variant gets its fixed embedding (a buffer)."""
        nn.init.normal_(self.cls_token, std=0.02)
        if self.pos_embed_type == "sincos":
            with torch.no_grad():
                self.pos_embed.zero_()
                self.pos_embed[:, 1:] = sincos_2d_pos_embed(self.grid_size, self.embed_dim)
        else:
            nn.init.normal_(self.pos_embed, std=0.02)
        self.apply(init_linear)

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        return {"pos_embed", "cls_token"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r"^cls_token|pos_embed|patch_embed",
            blocks=r"^stages\.(\d+)" if coarse else [
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^stages\.(\d+)\.pool", (99999,)),
                (r"^norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the classifier with a new ``num_classes``-way linear layer (Identity for
        0); optionally change ``global_pool`` (see the class docstring).

        Raises:
            ValueError: an unknown ``global_pool``, or switching to or between attention
                pooling (``'map'``), which needs new weights: build the model with it.
        """
        if global_pool is not None:
            _check_global_pool(global_pool)
            if global_pool == "map" and self.attn_pool is None:
                raise ValueError("global_pool='map' needs attention-pooling weights; build the model with "
                                 "global_pool='map' instead of switching in reset_classifier().")
            if global_pool != "map":
                self.attn_pool = None
            self.global_pool = global_pool
        num_classes = _check_num_classes(num_classes)
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    # -- forward ----------------------------------------------------------------------------

    def superpixels(self, images: torch.Tensor) -> torch.Tensor:
        """Superpixel ids (B, H, W) int64 for normalised images (B, 3, H, W), computed as
        ``pretrained_cfg`` says (``superpixel_method``, ``num_segments``; the images are
        un-normalised with its ``mean``/``std`` first). SEEDS needs
        OpenCV contrib; without it this falls back to ``torch_slic`` with a warning."""
        from hcast.ops import superpixels

        cfg = getattr(self, "pretrained_cfg", None) or {}
        method = cfg.get("superpixel_method") or "seeds"
        num_segments = cfg.get("num_segments") or 196
        if method == "seeds" and not _has_seeds():
            warnings.warn("SEEDS superpixels need OpenCV contrib (pip install opencv-contrib-python-headless); "
                          "falling back to method='torch_slic', outputs will differ from the released models'.",
                          RuntimeWarning, stacklevel=3)
            method = "torch_slic"
        mean = cfg.get("mean") or IMAGENET_DEFAULT_MEAN
        std = cfg.get("std") or IMAGENET_DEFAULT_STD
        with torch.no_grad():
            return superpixels(images, num_segments=num_segments, method=method, mean=mean, std=std)

    def _check_inputs(self, images: torch.Tensor, segments: Optional[torch.Tensor]) -> None:
        """Shape and dtype checks (always), value checks with ``validate_args``: finite
        images, superpixel ids in ``[0, H * W)`` (an image cannot hold more segments than
        pixels: a stray id would build that many tokens), or ``[0, max_tokens)``.

        Raises:
            TypeError: ``images`` not a float tensor, or of another dtype than the model's
                weights outside autocast; ``segments`` not an integer tensor.
            ValueError: a wrong shape, channel count, size, or id.
        """
        V.check_tensor("images", images)
        V.check_floating("images", images, f"pass float images (B, {self.patch_embed.in_chans}, H, W) normalised "
                         f"with the model's mean/std: convert uint8 images with timm's transforms "
                         f"(timm.data.create_transform) or images.float().div(255) and normalise")
        if images.ndim != 4 or images.shape[1] != self.patch_embed.in_chans:
            raise ValueError(f"images must have shape (B, {self.patch_embed.in_chans}, H, W), got "
                             f"{tuple(images.shape)}; convert grayscale or RGBA images to "
                             f"{self.patch_embed.in_chans} channels (e.g. PIL's image.convert('RGB')).")
        weight_dtype = self.cls_token.dtype
        if images.dtype != weight_dtype and not torch.is_autocast_enabled(images.device.type):
            raise TypeError(f"images are {images.dtype} but the model's weights are {weight_dtype}; pass "
                            f"images.to({weight_dtype}) (or run the model under torch.autocast).")
        if images.shape[-2] % 8 or images.shape[-1] % 8:
            raise ValueError(f"images height and width must be multiples of 8 (CAST's stem stride), "
                             f"got {tuple(images.shape[-2:])}; resize or pad the images.")
        if segments is not None:
            V.check_tensor("segments", segments)
            V.check_integer("segments", segments, "pass the (B, H, W) superpixel ids of hcast.ops.superpixels")
            V.check_rank("segments", segments, 3, "(B, H, W) holding superpixel ids")
            if segments.shape[0] != images.shape[0]:
                raise ValueError(f"segments must have the batch size of images ({images.shape[0]}), got "
                                 f"{segments.shape[0]}.")
            if segments.shape[-2:] != images.shape[-2:]:
                raise ValueError(f"segments must have the images' height and width: images have shape "
                                 f"{tuple(images.shape)}, segments {tuple(segments.shape)}. Compute the "
                                 f"superpixels on the images as passed, or, if nearest-neighbour resizing "
                                 f"is what you want, resize them explicitly with "
                                 f"hcast.ops.resize_segments(segments, {tuple(images.shape[-2:])}).")
        if self.validate_args:
            V.check_finite("images", images)
            if segments is not None and self.max_tokens is not None:
                self._check_budget(segments)
            elif segments is not None and segments.numel():
                self._check_ids(segments)

    def _check_ids(self, segments: torch.Tensor) -> None:
        """Ids in ``[0, H * W)`` (default mode; one pass and a host sync)."""
        low, high = (int(v) for v in torch.aminmax(segments))
        pixels = segments.shape[-2] * segments.shape[-1]
        if low < 0 or high >= pixels:
            raise ValueError(
                f"segments must hold superpixel ids in [0, H * W) = [0, {pixels}) (one image of "
                f"{tuple(segments.shape[-2:])} cannot hold more segments than pixels; the model builds one token "
                f"per id up to the largest), got ids in [{low}, {high}]; relabel the ids to 0..S-1 "
                f"(torch.unique(segments, return_inverse=True)).")

    def _check_budget(self, segments: torch.Tensor) -> None:
        """Ids in ``[0, max_tokens)`` (fixed-budget mode; one pass and a host sync)."""
        low, high = int(segments.min()), int(segments.max())
        if low < 0 or high >= self.max_tokens:
            raise ValueError(
                f"segments must hold superpixel ids in [0, max_tokens) = [0, {self.max_tokens}) in the "
                f"fixed-budget mode, got ids in [{low}, {high}]; compute fewer superpixels, relabel "
                f"the ids to 0..S-1 (torch.unique(..., return_inverse=True)), or build the model with "
                f"max_tokens >= {high + 1}.")

    def _pos_embed(self, grid: Tuple[int, int]) -> torch.Tensor:
        """Position embedding (1, 1 + h*w, C) for a (h, w) grid, resampled if needed."""
        if tuple(grid) == tuple(self.grid_size):
            return self.pos_embed
        if self.pos_embed_type == "sincos":
            grid_embed = sincos_2d_pos_embed(grid, self.embed_dim).to(self.pos_embed)
            return torch.cat([self.pos_embed[:, :1], grid_embed], dim=1)
        return resample_abs_pos_embed(self.pos_embed, list(grid), old_size=list(self.grid_size),
                                      num_prefix_tokens=1)

    def embed(self, images: torch.Tensor, segments: torch.Tensor
              ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Superpixel tokens ``(cls_token (B,1,C), tokens (B,S,C), padding_mask (B,S))``."""
        x = self.patch_embed(images)
        batch, height, width, channels = x.shape
        pos_embed = self._pos_embed((height, width))
        # Pooling is linear, so pooling features + position embedding at once equals the
        # original's two poolings.
        x = x + pos_embed[:, 1:].reshape(1, height, width, channels)
        if self.max_tokens is None:
            tokens, padding_mask = superpixel_pool(x, segments, validate_args=self.validate_args)
        else:  # ids checked at the boundary (_check_inputs): no host sync here
            if torch.compiler.is_exporting():  # the exported program checks its ids itself
                torch._assert_async(((segments >= 0) & (segments < self.max_tokens)).all(),
                                    f"segments must hold superpixel ids in [0, max_tokens) = [0, {self.max_tokens}) "
                                    f"(the exported token budget); compute fewer superpixels or export with a "
                                    f"larger max_tokens")
                # ONNX drops the assert and its scatter reads negative indices from the end:
                # a negative id becomes max_tokens, which ONNX Runtime refuses (out of bounds)
                segments = torch.where(segments < 0, torch.full_like(segments, self.max_tokens), segments)
            tokens, padding_mask = superpixel_pool(x, segments, self.max_tokens, validate_args=False)
        cls_token = (self.cls_token + pos_embed[:, :1]).expand(batch, -1, -1)
        return cls_token, self.pos_drop(tokens), padding_mask

    def forward_stages(self, images: torch.Tensor, segments: Optional[torch.Tensor] = None,
                       num_pools: Optional[int] = None, num_stages: Optional[int] = None) -> Dict[str, Any]:
        """Run the stages and return everything a head, a feature map or a segmentation
        needs: the one stage loop of CAST (``forward_features``, ``forward_intermediates``,
        ``forward_segments`` and H-CAST's levels all read it).

        Args:
            images, segments: as for :meth:`forward`.
            num_stages: run the first ``num_stages`` stages (default: all).
            num_pools: how many graph poolings to run, after stages ``0 .. num_pools - 1``
                (default ``num_stages - 1``: each pooling that feeds a later stage; the
                number of stages adds the last stage's assignments, for segmentations).

        Returns:
            dict with ``segments`` (B, h, w) int64 (the superpixels used),
            ``class_tokens``: list of 4 (B, C) class tokens after each stage's blocks (not
            normalised), ``tokens``: (B, 1 + K_3, C) last stage output (not normalised),
            ``logits``: list of ``num_pools`` assignment logits (B, N_l, K_l),
            ``sampled``: list of FPS indices (B, K_l), ``padding_mask``: (B, S) bool,
            ``stage_tokens``: list of 4 (B, 1 + N_l, C) outputs of each stage's blocks
            (class token first; not normalised).
        """
        num_stages = len(self.stages) if num_stages is None else num_stages
        num_pools = num_stages - 1 if num_pools is None else num_pools
        segments = self._segments(images, segments)
        cls_token, x, padding_mask = self.embed(images, segments)
        mask = padding_mask
        attn_mask = self._attn_mask(padding_mask)
        class_tokens, logits, sampled, stage_tokens = [], [], [], []
        cls_x = None
        for i, stage in enumerate(self.stages[:num_stages]):
            cls_x = stage.forward_blocks(torch.cat([cls_token, x], dim=1), attn_mask if i == 0 else None)
            class_tokens.append(cls_x[:, 0])
            stage_tokens.append(cls_x)
            if i < num_pools:
                cls_token, x, logit, inds = stage.pool(cls_x[:, :1], cls_x[:, 1:], mask, i == 0 and attn_mask is not None,
                                                       self.validate_args)
                logits.append(logit)
                sampled.append(inds)
                if x is not None:  # None after the last stage's pooling (its centroids feed nothing)
                    mask = x.new_zeros(x.shape[:2], dtype=torch.bool)
        return dict(segments=segments, class_tokens=class_tokens, tokens=cls_x, logits=logits,
                    sampled=sampled, padding_mask=padding_mask, stage_tokens=stage_tokens)

    def _segments(self, images: torch.Tensor, segments: Optional[torch.Tensor]) -> torch.Tensor:
        """Checked superpixel ids on the images' device (computed if None)."""
        self._check_inputs(images, segments)
        if segments is None:
            segments = self.superpixels(images)
            if self.max_tokens is not None:
                self._check_budget(segments)
        return segments.to(images.device)

    def _attn_mask(self, padding_mask: torch.Tensor) -> Optional[torch.Tensor]:
        """Fixed-budget mode: (B, 1, 1, 1 + S) bool, True for the class token and the
        superpixel tokens that own a grid cell; None in the default mode."""
        if self.max_tokens is None:
            return None
        keep = torch.cat([padding_mask.new_ones(padding_mask.shape[0], 1), ~padding_mask], dim=1)
        return keep[:, None, None, :]

    def _features(self, stage_tokens: Sequence[torch.Tensor]) -> Any:
        """What :meth:`forward_features` returns, from the stages' outputs."""
        return self.norm(stage_tokens[-1])

    def forward_features(self, images: torch.Tensor, segments: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Normalised last-stage tokens (B, 1 + K_3, C): the class token, then the K_3 = 16
        (cast_small) segment tokens that stage 4 runs on."""
        return self._features(self.forward_stages(images, segments)["stage_tokens"])

    def pool(self, x: torch.Tensor, pool_type: Optional[str] = None) -> torch.Tensor:
        """(B, 1 + K, C) tokens -> (B, C) as ``global_pool`` says ((B, 1 + K, C) for ``''``)."""
        if self.attn_pool is not None and pool_type is None:
            return self.attn_pool(x[:, self.num_prefix_tokens:])
        pool_type = self.global_pool if pool_type is None else pool_type
        return global_pool_nlc(x, pool_type=pool_type, num_prefix_tokens=self.num_prefix_tokens)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, 1 + K, C) tokens -> (B, num_classes) logits, or (B, C) with ``pre_logits``
        (per token, (B, 1 + K, ...), with ``global_pool=''``)."""
        x = self.head_drop(self.pool(x))
        return x if pre_logits else self.head(x)

    def forward(self, images: torch.Tensor, segments: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, 3, H, W) images [+ (B, H, W) superpixels] -> (B, num_classes) logits."""
        return self.forward_head(self.forward_features(images, segments))

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
        """The outputs of the stages, as timm's ``forward_intermediates`` (what
        ``features_only=True`` returns).

        Stage ``l``'s blocks run on region tokens: the S superpixels for stage 0, then
        the K_0, K_1, K_2 centroids of the graph poolings (64, 32, 16 for cast_small).
        ``output_fmt='NCHW'`` paints each region token's feature over its region on the
        stem's H/8 x W/8 grid (:func:`paint_tokens`, ``paint`` or the model's
        ``feature_paint``): every map has stride 8, and its detail shrinks from
        superpixels (stage 0) to K_{l-1} regions (stage l). ``'NLC'`` returns the region
        tokens themselves, (B, N_l, C) (stage 0: N_0 = S, padded ids hold values no grid
        cell reads).

        Args:
            images, segments: as for :meth:`forward`.
            indices: stages to return: the last n if an int, all if None, else these
                0-based stage indices (negative ones count from the end).
            return_prefix_tokens: also return each stage's class token (B, 1, C), as
                ``(feature, class_token)`` pairs.
            norm: apply the final norm to every intermediate.
            stop_early: stop after the last stage asked for.
            output_fmt: ``'NCHW'`` (painted maps) or ``'NLC'`` (tokens).
            intermediates_only: return only the intermediates.
            paint: ``'soft'`` or ``'hard'``; default ``self.feature_paint``.

        Returns:
            a list of per-stage features (Tensor[B, C, H/8, W/8] or Tensor[B, N_l, C]),
            or ``(final, intermediates)`` where ``final`` is what :meth:`forward_features`
            returns.

        Raises:
            ValueError: an unknown ``output_fmt`` or ``paint``, or stage indices out of
                range.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}.")
        paint = self.feature_paint if paint is None else paint
        if paint not in PAINT_MODES:
            raise ValueError(f"paint must be one of {PAINT_MODES}, got {paint!r}.")
        try:
            take_indices, max_index = feature_take_indices(len(self.stages), indices)
        except AssertionError as error:
            raise ValueError(f"indices must pick stages in [-{len(self.stages)}, {len(self.stages)}), got "
                             f"{indices!r}.") from error
        num_stages = max_index + 1 if stop_early or intermediates_only else len(self.stages)
        out = self.forward_stages(images, segments, num_stages=num_stages)
        grid_ids = resize_segments(out["segments"], (images.shape[-2] // 8, images.shape[-1] // 8))
        intermediates = []
        for i in (i for i in range(num_stages) if i in take_indices):  # stage order
            y = self.norm(out["stage_tokens"][i]) if norm else out["stage_tokens"][i]
            feature = y[:, 1:]  # each stage runs on one class token, then its region tokens
            if output_fmt == "NCHW":  # stage i's regions: the first i poolings' assignments
                feature = paint_tokens(feature, grid_ids, out["logits"][:i], paint)
            intermediates.append((feature, y[:, :1]) if return_prefix_tokens else feature)
        if intermediates_only:
            return intermediates
        return self._features(out["stage_tokens"]), intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the stages (and the pooling after the last kept one), and optionally the
        final norm and the head, that ``forward_intermediates(indices=...)`` does not need.

        Returns:
            the kept 0-based stage indices.
        """
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[:max_index + 1]
        self.stages[-1].pool = nn.Identity()  # its output feeds no kept stage
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.attn_pool = None
            self.reset_classifier(0, "")
        return take_indices

    @torch.no_grad()
    def forward_segments(self, images: torch.Tensor, segments: Optional[torch.Tensor] = None
                         ) -> Dict[str, Any]:
        """The hierarchical segmentation CAST learns: superpixels grouped stage by stage.

        Returns:
            dict with ``superpixels`` (B, h, w) int64, the ids used; ``segmentations``: list
            of 4 (B, h, w) int64 label maps, finest first (map l holds each pixel's
            stage-l cluster in ``[0, num_clusters[l])``); ``logits``: list of the 4
            stages' assignment logits (B, N_l, K_l) (N_1 = number of superpixel tokens,
            N_l = K_{l-1}). Superpixels too small to own a cell of the H/8 x W/8 grid take
            the label of the grid cell they fall in.
        """
        from hcast.ops import hierarchical_segmentation

        out = self.forward_stages(images, segments, num_pools=_NUM_STAGES)
        segments = out["segments"].to(images.device).long()
        grid = (images.shape[-2] // 8, images.shape[-1] // 8)
        grid_ids = resize_segments(segments, grid)
        cell_ids = F.interpolate(grid_ids[:, None].float(), size=segments.shape[-2:], mode="nearest")[:, 0].long()
        padding_mask = out["padding_mask"]
        num_tokens = padding_mask.shape[1]
        has_token = segments < num_tokens
        has_token &= ~torch.gather(padding_mask, 1, segments.clamp(max=num_tokens - 1).flatten(1)).view_as(segments)
        token_ids = torch.where(has_token, segments, cell_ids)
        maps = hierarchical_segmentation(out["logits"], token_ids)
        return dict(superpixels=segments, segmentations=maps, logits=out["logits"])


# ---------------------------------------------------------------------------------------
# Checkpoint conversion
# ---------------------------------------------------------------------------------------

def _adapt_pos_embed(state_dict: Dict[str, torch.Tensor], model: CAST) -> None:
    """Resize the checkpoint's position embedding to the model's grid, in place. A
    sin-cos embedding is fixed, so the model's own (exact) one is used instead."""
    pos_embed = state_dict.get("pos_embed")
    if pos_embed is None or pos_embed.shape == model.pos_embed.shape:
        return
    if model.pos_embed_type == "sincos":
        state_dict["pos_embed"] = model.pos_embed.detach().clone()
        return
    num_grid = pos_embed.shape[1] - 1
    side = int(math.sqrt(num_grid))
    if side * side != num_grid:
        raise ValueError(f"pos_embed of the checkpoint has {num_grid} grid positions, not a square grid; "
                         f"create the model with the checkpoint's img_size.")
    state_dict["pos_embed"] = resample_abs_pos_embed(pos_embed, list(model.grid_size), old_size=[side, side],
                                                     num_prefix_tokens=1)


def convert_backbone(checkpoint: Dict[str, Any], model: CAST) -> Dict[str, torch.Tensor]:
    """Original or hcast checkpoint -> hcast backbone keys (heads untouched except MoCo's
    projection MLP and H-CAST's extra heads, which a plain CAST has no place for)."""
    state_dict = original.strip_prefixes(original.unwrap_state_dict(checkpoint))
    state_dict = original.cast_keys_to_hcast(state_dict, model.depths)
    _adapt_pos_embed(state_dict, model)
    return state_dict


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: CAST) -> Dict[str, torch.Tensor]:
    """Convert a checkpoint into this model's keys; timm's ``pretrained_filter_fn``.

    Reads: the original training checkpoints (a dict holding ``model`` or ``state_dict``)
    or bare state dicts, with the original key names (``blocksK.M`` and the duplicate
    ``blocks.N``, ``poolK.pool_block.*``, MoCo's ``pe_token``), MoCo's
    ``module.base_encoder.`` prefix (the momentum encoder, predictor and projection MLP are
    dropped), H-CAST checkpoints (only the fine ``head`` is kept, its extra heads dropped),
    and hcast's own keys unchanged (e.g. from ``save_for_hf`` safetensors). The position
    embedding is resized to the model's grid when the image size differs.

    Returns:
        dict[str, Tensor] with this model's key names.
    """
    out = convert_backbone(state_dict, model)
    if isinstance(model.head, nn.Identity):
        out = {k: v for k, v in out.items() if not k.startswith("head.")}
    return out


# ---------------------------------------------------------------------------------------
# Pretrained configs and entry points
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class CASTPretrainedCfg(PretrainedCfg):
    """timm's ``PretrainedCfg`` plus what a superpixel model needs to preprocess images and
    what H-CAST's released checkpoints carry.

    Attributes:
        superpixel_method: :func:`hcast.ops.superpixels` method used in training
            (``'seeds'`` for the released weights).
        num_segments: superpixels requested per image (196 for 224 x 224).
        gdrive_id: Google Drive file id of a checkpoint hosted there (H-CAST).
        level_classes: class counts per taxonomy level, finest first (H-CAST).
        fpa: full-path accuracy (%) the authors report for the checkpoint.
        taxonomy: name of the checkpoint's :func:`hcast.hierarchy.benchmark_taxonomy` (H-CAST).
    """
    superpixel_method: Optional[str] = "seeds"
    num_segments: Optional[int] = 196
    gdrive_id: Optional[str] = None
    level_classes: Optional[Tuple[int, ...]] = None
    fpa: Optional[float] = None
    taxonomy: Optional[str] = None

    @property
    def has_weights(self):
        return super().has_weights or self.gdrive_id


def as_pretrained_cfg(cfg: Any) -> Any:
    """A dict pretrained cfg (e.g. from a hub ``config.json``) as :class:`CASTPretrainedCfg`,
    so timm keeps hcast's keys (:func:`hcast.weights.as_pretrained_cfg`); anything else is
    returned unchanged."""
    return _as_pretrained_cfg(cfg, CASTPretrainedCfg)


def _create_cast(variant: str, pretrained: bool = False, model_cls: type = None,
                 filter_fn: Callable = checkpoint_filter_fn, **kwargs: Any) -> nn.Module:
    model_cls = model_cls or CAST
    if "pretrained_cfg" in kwargs:
        kwargs["pretrained_cfg"] = as_pretrained_cfg(kwargs["pretrained_cfg"])
    # hcast's builder: timm's plus safe .pth loading and Google Drive tags (hcast.weights.builder)
    out_indices = kwargs.pop("out_indices", _NUM_STAGES)  # features_only: every stage, painted at stride 8
    return build_model_with_hcast_cfg(model_cls, variant, pretrained, pretrained_filter_fn=filter_fn,
                                      feature_cfg=dict(out_indices=out_indices, feature_cls="getter"), **kwargs)


def _cfg(**kwargs: Any) -> CASTPretrainedCfg:
    cfg = dict(
        num_classes=1000, input_size=(3, 224, 224), pool_size=None, crop_pct=0.875,
        interpolation="bicubic", fixed_input_size=False, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
        first_conv="patch_embed.proj.0", classifier="head", license="mit",
        origin_url="https://github.com/twke18/CAST",
        paper_name="Learning Hierarchical Image Segmentation For Recognition and By Recognition",
        superpixel_method="seeds", num_segments=196,
    )
    cfg.update(kwargs)
    return CASTPretrainedCfg(**cfg)


_HUB = "twke/CAST"
default_cfgs = generate_default_cfgs({
    "cast_small.deit_in1k": _cfg(
        hf_hub_id=_HUB, hf_hub_filename="snapshots/deit/imagenet1k/cast_small/best_checkpoint.pth",
        description="DeiT-style supervised training on ImageNet-1K, 80.4% top-1."),
    "cast_small.moco_in1k": _cfg(
        hf_hub_id=_HUB, hf_hub_filename="snapshots/moco/imagenet1k/cast_small/checkpoint_0099.pth.tar",
        num_classes=0, description="MoCo v3 self-supervised on ImageNet-1K (100 epochs), 68.1% linear probe."),
    "cast_small_deep.moco_in1k": _cfg(
        hf_hub_id=_HUB, hf_hub_filename="snapshots/moco/imagenet1k/cast_small_deep/checkpoint_0099.pth.tar",
        num_classes=0, description="MoCo v3 self-supervised on ImageNet-1K (100 epochs), 69.1% linear probe."),
    "cast_base.moco_in1k": _cfg(
        hf_hub_id=_HUB, hf_hub_filename="snapshots/moco/imagenet1k/cast_base/checkpoint_0099.pth.tar",
        num_classes=0, description="MoCo v3 self-supervised on ImageNet-1K (100 epochs), 72.4% linear probe."),
    "cast_base_deep": _cfg(),
    "cast_tiny": _cfg(input_size=(3, 64, 64), num_segments=49),
})


def _resolve_tag(variant: str, kwargs: Dict[str, Any]) -> Optional[str]:
    """The pretrained tag a model is being built for (given, or the variant's default)."""
    cfg = kwargs.get("pretrained_cfg")
    if isinstance(cfg, str):
        return cfg
    if isinstance(cfg, PretrainedCfg):
        return cfg.tag
    if isinstance(cfg, dict):
        return cfg.get("tag")
    default = get_pretrained_cfg(variant)
    return default.tag if default is not None else None


def _variant_kwargs(variant: str, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """MoCo v3 tags were trained with the fixed sin-cos position embedding."""
    tag = _resolve_tag(variant, kwargs)
    if tag and tag.startswith("moco"):
        kwargs.setdefault("pos_embed", "sincos")
    return kwargs


@register_model
def cast_tiny(pretrained: bool = False, **kwargs: Any) -> CAST:
    """CAST-Ti for small images (64 x 64): width 192, 3 heads, depths 3,3,3,2, clusters
    16,8,4,2. No released weights; for quick experiments and tests."""
    args = dict(img_size=64, embed_dim=192, depths=(3, 3, 3, 2), num_heads=3, num_clusters=(16, 8, 4, 2))
    return _create_cast("cast_tiny", pretrained, **dict(args, **_variant_kwargs("cast_tiny", kwargs)))


@register_model
def cast_small(pretrained: bool = False, **kwargs: Any) -> CAST:
    """CAST-S: width 384, 12 heads, depths 3,3,3,2, clusters 64,32,16,8."""
    args = dict(embed_dim=384, depths=(3, 3, 3, 2), num_heads=12, num_clusters=(64, 32, 16, 8))
    return _create_cast("cast_small", pretrained, **dict(args, **_variant_kwargs("cast_small", kwargs)))


@register_model
def cast_small_deep(pretrained: bool = False, **kwargs: Any) -> CAST:
    """CAST-SD: width 384, 12 heads, depths 6,3,3,3, clusters 64,32,16,8."""
    args = dict(embed_dim=384, depths=(6, 3, 3, 3), num_heads=12, num_clusters=(64, 32, 16, 8))
    return _create_cast("cast_small_deep", pretrained, **dict(args, **_variant_kwargs("cast_small_deep", kwargs)))


@register_model
def cast_base(pretrained: bool = False, **kwargs: Any) -> CAST:
    """CAST-B: width 768, 12 heads, depths 3,3,3,2, clusters 64,32,16,8."""
    args = dict(embed_dim=768, depths=(3, 3, 3, 2), num_heads=12, num_clusters=(64, 32, 16, 8))
    return _create_cast("cast_base", pretrained, **dict(args, **_variant_kwargs("cast_base", kwargs)))


@register_model
def cast_base_deep(pretrained: bool = False, **kwargs: Any) -> CAST:
    """CAST-BD: width 768, 12 heads, depths 6,3,3,3, clusters 64,32,16,8."""
    args = dict(embed_dim=768, depths=(6, 3, 3, 3), num_heads=12, num_clusters=(64, 32, 16, 8))
    return _create_cast("cast_base_deep", pretrained, **dict(args, **_variant_kwargs("cast_base_deep", kwargs)))
