"""Dense heads on CAST's superpixel tokens, with the original code's parameter names.

Three heads the CAST authors evaluate with (github:twke18/CAST):

* :class:`SoftmaxClassifier`: SPML's VOC fine-tuning head
  (``SPML/spml/models/predictions/softmax_classifier.py``): 1x1 conv -> BatchNorm ->
  ReLU -> 1x1 conv on the per-pixel embedding map, in which every pixel holds its
  superpixel's feature. Here it runs once per superpixel and is copied to the pixels;
  BatchNorm's training statistics are weighted by each superpixel's pixel count, so they
  equal the original's statistics over pixels.
* :class:`SuperpixMaskTransformer`: Segmenter's mask transformer on superpixel tokens
  (``segmenter/segm/model/decoder.py``), for ADE20K and Pascal Context.
* :class:`SegSortRetrieval`: SegSort's nearest-neighbour retrieval
  (``SPML/spml/models/predictions/segsort.py``, ``spml/utils/segsort/{common,eval}.py``):
  region prototypes (mean direction of the unit pixel embeddings of each CAST region)
  labelled by a majority vote of their ``k`` most similar memory prototypes (train+
  regions labelled with their majority ground-truth class). CAST's "unsupervised" VOC
  result.

Each takes per-superpixel features (B, S, C), as
:meth:`hcast.models.cast_seg.CASTSeg.forward_superpixels` gives them, and the superpixel
ids (B, H, W), and returns per-pixel outputs at the ids' resolution.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import Block

from hcast import _validation as V

__all__ = [
    "CASTSegmenter",
    "SoftmaxClassifier",
    "SuperpixMaskTransformer",
    "SegSortRetrieval",
    "region_prototypes",
    "majority_labels",
    "knn_vote",
    "superpixel_pixel_counts",
    "paint_superpixels",
]


def superpixel_pixel_counts(segments: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Pixels per superpixel id: (B, H, W) int64 ids -> (B, num_segments) float32."""
    batch = segments.shape[0]
    flat = (segments.reshape(batch, -1) + torch.arange(batch, device=segments.device)[:, None] * num_segments)
    return torch.bincount(flat.reshape(-1), minlength=batch * num_segments).view(batch, num_segments).float()


def paint_superpixels(values: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """Copy per-superpixel values to their pixels: (B, S, K) and (B, H, W) ids -> (B, K, H, W)."""
    batch, channels = values.shape[0], values.shape[-1]
    index = segments.reshape(batch, -1, 1).expand(-1, -1, channels)
    return torch.gather(values, 1, index).transpose(1, 2).reshape(batch, channels, *segments.shape[-2:])


def _check(tokens: torch.Tensor, segments: Optional[torch.Tensor], name: str = "tokens") -> None:
    """(B, S, C) float per-superpixel ``tokens`` (named ``name`` in messages) and (B, H, W)
    integer ``segments`` of the same batch size."""
    V.check_tensor(name, tokens)
    V.check_floating(name, tokens)
    V.check_rank(name, tokens, 3, "(B, S, C)")
    if segments is not None:
        V.check_tensor("segments", segments)
        V.check_integer("segments", segments)
        V.check_rank("segments", segments, 3, "(B, H, W)")
        V.check_same_batch(name, tokens, "segments", segments)


class SoftmaxClassifier(nn.Module):
    """SPML's softmax classifier on superpixel features (CAST's VOC fine-tuning head).

    ``semantic_classifier``: Conv2d(C, C, 1, bias=False) -> BatchNorm2d(C) -> ReLU ->
    Conv2d(C, num_classes, 1), the original's module and keys.

    Args:
        embed_dim: C.
        num_classes: K (21 for VOC).

    Shapes:
        ``forward(tokens (B, S, C), segments (B, H, W) int64)`` -> logits
        (B, K, H, W), each pixel its superpixel's; without ``segments``: (B, S, K).
    """

    def __init__(self, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.semantic_classifier = nn.Sequential(
            nn.Conv2d(embed_dim, embed_dim, kernel_size=1, bias=False),
            nn.BatchNorm2d(embed_dim),
            nn.ReLU(inplace=True),
            nn.Conv2d(embed_dim, num_classes, kernel_size=1, bias=True),
        )

    def _norm(self, x: torch.Tensor, weights: Optional[torch.Tensor]) -> torch.Tensor:
        """BatchNorm on (N, C) rows; in training each row counts ``weights`` times (its
        pixels), as the original's BatchNorm2d over the pixel map."""
        bn = self.semantic_classifier[1]
        if not bn.training or weights is None:
            return bn(x[:, :, None, None])[:, :, 0, 0]
        # the statistics in float32 (under bfloat16 autocast pixel counts above 256 would round)
        x, weights = x.float(), weights.float()
        total = weights.sum()
        mean = (weights[:, None] * x).sum(0) / total
        var = (weights[:, None] * (x - mean) ** 2).sum(0) / total
        if bn.track_running_stats:
            with torch.no_grad():
                momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked + 1)
                bn.num_batches_tracked += 1
                unbiased = var * total / (total - 1).clamp(min=1)
                bn.running_mean.mul_(1 - momentum).add_(momentum * mean)
                bn.running_var.mul_(1 - momentum).add_(momentum * unbiased)
        return (x - mean) * torch.rsqrt(var + bn.eps) * bn.weight + bn.bias

    def forward(self, tokens: torch.Tensor, segments: Optional[torch.Tensor] = None) -> torch.Tensor:
        _check(tokens, segments)
        batch, num, channels = tokens.shape
        conv1, _, act, conv2 = self.semantic_classifier
        x = tokens.reshape(-1, channels) @ conv1.weight[:, :, 0, 0].t()
        weights = None
        if segments is not None:  # training statistics over pixels, pixels' ids only
            weights = superpixel_pixel_counts(segments, num).reshape(-1).to(torch.float32)
            keep = weights > 0
            rows = self._norm(x[keep], weights[keep]) if self.training else self._norm(x[keep], None)
            normed = rows.new_zeros(x.shape)  # the normalised dtype (float32 from bfloat16 under autocast)
            normed[keep] = rows
            x = normed
        else:
            x = self._norm(x, None)
        x = act(x) @ conv2.weight[:, :, 0, 0].t() + conv2.bias
        logits = x.view(batch, num, -1)
        return logits if segments is None else paint_superpixels(logits, segments)


class SuperpixMaskTransformer(nn.Module):
    """Segmenter's mask transformer on superpixel tokens (``SuperpixMaskTransformer``).

    Tokens are projected to ``d_model`` (``proj_dec``), ``num_classes`` learned class
    embeddings (``cls_emb``) are appended, ``n_layers`` transformer blocks run on both,
    and a LayerNorm (``decoder_norm``); the masks are the cosine similarities of the
    projected tokens (``proj_patch``) and class embeddings (``proj_classes``),
    normalised over classes by ``mask_norm``, and copied to the pixels of each superpixel.
    Keys and defaults are the original's (``n_heads = d_model // 64``, ``d_ff = 4 d_model``,
    LayerNorm eps 1e-5, dropout 0.1).

    Shapes:
        ``forward(tokens (B, S, C), segments (B, H, W))`` -> masks (B, K, H, W);
        without ``segments``: (B, S, K).
    """

    def __init__(self, num_classes: int, d_encoder: int, n_layers: int = 2, d_model: Optional[int] = None,
                 n_heads: Optional[int] = None, d_ff: Optional[int] = None, drop_path_rate: float = 0.0,
                 dropout: float = 0.1) -> None:
        super().__init__()
        d_model = d_model or d_encoder
        n_heads = n_heads or max(1, d_model // 64)
        d_ff = d_ff or 4 * d_model
        self.num_classes = self.n_cls = num_classes
        self.scale = d_model ** -0.5
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, n_layers)]
        self.blocks = nn.ModuleList([
            Block(d_model, n_heads, mlp_ratio=d_ff / d_model, qkv_bias=True, proj_drop=dropout, attn_drop=dropout,
                  drop_path=dpr[i], norm_layer=nn.LayerNorm) for i in range(n_layers)])
        self.cls_emb = nn.Parameter(torch.randn(1, num_classes, d_model))
        self.proj_dec = nn.Linear(d_encoder, d_model)
        self.proj_patch = nn.Parameter(self.scale * torch.randn(d_model, d_model))
        self.proj_classes = nn.Parameter(self.scale * torch.randn(d_model, d_model))
        self.decoder_norm = nn.LayerNorm(d_model)
        self.mask_norm = nn.LayerNorm(num_classes)
        self.apply(self._init)
        nn.init.trunc_normal_(self.cls_emb, std=0.02)

    @staticmethod
    def _init(m: nn.Module) -> None:  # segm/model/utils.py init_weights
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.zeros_(m.bias)
            nn.init.ones_(m.weight)

    @torch.jit.ignore
    def no_weight_decay(self):
        return {"cls_emb"}

    def forward(self, tokens: torch.Tensor, segments: Optional[torch.Tensor] = None) -> torch.Tensor:
        _check(tokens, segments)
        x = self.proj_dec(tokens)
        x = torch.cat([x, self.cls_emb.expand(x.shape[0], -1, -1)], dim=1)
        for block in self.blocks:
            x = block(x)
        x = self.decoder_norm(x)
        patches = x[:, :-self.n_cls] @ self.proj_patch
        classes = x[:, -self.n_cls:] @ self.proj_classes
        patches = patches / patches.norm(dim=-1, keepdim=True)
        classes = classes / classes.norm(dim=-1, keepdim=True)
        masks = self.mask_norm(patches @ classes.transpose(1, 2))  # (B, S, K)
        return masks if segments is None else paint_superpixels(masks, segments)


# ---------------------------------------------------------------------------------------
# SegSort retrieval
# ---------------------------------------------------------------------------------------


def region_prototypes(embeddings: torch.Tensor, region_ids: torch.Tensor,
                      num_regions: Optional[int] = None, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """SegSort's prototypes: the mean direction of unit embeddings per region
    (``calculate_prototypes_from_labels`` on L2-normalised pixel embeddings).

    Args:
        embeddings (Tensor[N, C]): one row per pixel, or per superpixel with ``weights``.
        region_ids (Tensor[N], int64): region of each row.
        num_regions: R; default ``max(region_ids) + 1``.
        weights (Tensor[N], optional): rows' multiplicities (a superpixel's pixel count:
            the same sum as over its pixels).

    Returns:
        Tensor[R, C]: L2-normalised sums of the normalised rows (zero rows for empty regions).
    """
    unit = F.normalize(embeddings, dim=-1)
    if weights is not None:
        unit = unit * weights[:, None].to(unit.dtype)
    num_regions = int(region_ids.max()) + 1 if num_regions is None else num_regions
    sums = torch.zeros(num_regions, unit.shape[-1], dtype=unit.dtype, device=unit.device)
    sums.index_add_(0, region_ids, unit)
    norm = sums.norm(dim=-1, keepdim=True)
    return sums / torch.where(norm >= 1e-12, norm, torch.full_like(norm, 1e-12))  # SPML's normalize_embedding


def majority_labels(labels: torch.Tensor, region_ids: torch.Tensor, num_regions: Optional[int] = None,
                    weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Each region's most frequent label (``find_majority_label_index``; ties: the
    smallest label). labels, region_ids: (N,) int64; weights: (N,) counts -> (R,) int64."""
    num_regions = int(region_ids.max()) + 1 if num_regions is None else num_regions
    num_labels = int(labels.max()) + 1
    votes = torch.zeros(num_regions * num_labels, dtype=torch.float64, device=labels.device)
    w = torch.ones_like(labels, dtype=torch.float64) if weights is None else weights.to(torch.float64)
    votes.index_add_(0, region_ids * num_labels + labels, w)
    return votes.view(num_regions, num_labels).argmax(dim=1)


def knn_vote(queries: torch.Tensor, memory: torch.Tensor, memory_labels: torch.Tensor, k: int = 20,
             chunk: int = 4096) -> torch.Tensor:
    """Label each query by a majority vote of its ``k`` most similar memory prototypes
    (dot product of unit vectors; ``top_k_ranking`` + ``majority_label_from_topk``; ties
    in the vote go to the smallest label).

    Args:
        queries (Tensor[Q, C]), memory (Tensor[M, C]): unit vectors.
        memory_labels (Tensor[M], int64).
        k: neighbours (20 in CAST's VOC evaluation); at most M.

    Returns:
        Tensor[Q], int64.
    """
    if memory.shape[0] == 0:
        raise ValueError("memory: the retrieval memory is empty; add labelled regions first.")
    k = min(k, memory.shape[0])
    num_labels = int(memory_labels.max()) + 1
    out = []
    for part in queries.split(chunk):
        top = (part @ memory.t()).topk(k, dim=1).indices
        votes = F.one_hot(memory_labels[top], num_labels).sum(dim=1)
        out.append(votes.argmax(dim=1))
    return torch.cat(out) if out else queries.new_zeros(0, dtype=torch.long)


class SegSortRetrieval(nn.Module):
    """SegSort's nearest-neighbour segmentation over CAST regions (the "unsupervised"
    VOC protocol: MoCo features, labels only in the memory).

    Regions are CAST's hierarchical segments (each superpixel's stage-``level`` cluster,
    following the argmax of the assignment logits). :meth:`add` stores the prototypes of
    labelled images' regions with their majority ground-truth label (``ignore_index``
    regions dropped); :meth:`forward` labels a query image's regions by :func:`knn_vote`.

    Args:
        k: neighbours of the vote.
        ignore_index: label of pixels that carry no class (255 for VOC).
    """

    def __init__(self, k: int = 20, ignore_index: int = 255) -> None:
        super().__init__()
        self.k = k
        self.ignore_index = ignore_index
        self.register_buffer("memory", torch.zeros(0, 0), persistent=True)
        self.register_buffer("memory_labels", torch.zeros(0, dtype=torch.long), persistent=True)

    @staticmethod
    def regions(logits, num_superpixels: int) -> torch.Tensor:
        """(B, S) region of every superpixel: argmax of each stage's logits, composed."""
        region = None
        for logit in logits:
            label = logit.argmax(dim=-1)
            region = label if region is None else torch.gather(label, 1, region)
        return region[:, :num_superpixels]

    def _prototypes(self, features: torch.Tensor, segments: torch.Tensor, logits) -> Tuple[torch.Tensor, ...]:
        batch, num, _ = features.shape
        region = self.regions(logits, num)  # (B, S)
        num_regions = int(region.max()) + 1
        flat_region = (region + torch.arange(batch, device=region.device)[:, None] * num_regions).reshape(-1)
        counts = superpixel_pixel_counts(segments, num).reshape(-1)
        protos = region_prototypes(features.reshape(batch * num, -1), flat_region, batch * num_regions, counts)
        return protos, flat_region, counts, num_regions

    @torch.no_grad()
    def add(self, features: torch.Tensor, segments: torch.Tensor, logits, labels: torch.Tensor) -> None:
        """Store labelled regions. features (B, S, C) per superpixel, segments (B, H, W),
        logits: the model's assignment logits, labels (B, H, W) int64 ground truth."""
        _check(features, segments, "features")
        if labels.shape != segments.shape:
            raise ValueError(f"labels must have the shape of segments {tuple(segments.shape)}, got {tuple(labels.shape)}.")
        protos, flat_region, counts, num_regions = self._prototypes(features, segments, logits)
        batch, num = features.shape[:2]
        pixel_region = torch.gather(flat_region.view(batch, num), 1, segments.reshape(batch, -1)).reshape(-1)
        present = torch.zeros(batch * num_regions, dtype=torch.bool, device=protos.device)
        present[pixel_region] = True
        region_label = majority_labels(labels.reshape(-1), pixel_region, batch * num_regions)
        keep = present & (region_label != self.ignore_index)
        memory = protos[keep]
        self.memory = memory if self.memory.numel() == 0 else torch.cat([self.memory, memory])
        self.memory_labels = torch.cat([self.memory_labels, region_label[keep]])

    @torch.no_grad()
    def forward(self, features: torch.Tensor, segments: torch.Tensor, logits) -> torch.Tensor:
        """Per-pixel labels (B, H, W) int64 for features (B, S, C), segments (B, H, W)."""
        _check(features, segments, "features")
        protos, flat_region, _, _ = self._prototypes(features, segments, logits)
        labels = knn_vote(protos, self.memory, self.memory_labels, self.k)
        batch, num = features.shape[:2]
        per_superpixel = labels[flat_region].view(batch, num)
        return torch.gather(per_superpixel, 1, segments.reshape(batch, -1)).view_as(segments)


# ---------------------------------------------------------------------------------------
# Encoder + head
# ---------------------------------------------------------------------------------------

HEADS = ("softmax", "mask_transformer", "linear")


class CASTSegmenter(nn.Module):
    """A CAST segmentation encoder with a dense head: images (+ superpixels) -> per-pixel logits.

    Args:
        encoder: a :class:`hcast.models.cast_seg.CASTSeg` (its own head is not used:
            :meth:`~hcast.models.cast_seg.CASTSeg.forward_superpixels` with ``pre_logits``).
        num_classes: K.
        head: ``'softmax'`` (SPML's :class:`SoftmaxClassifier`, the VOC recipe),
            ``'mask_transformer'`` (Segmenter's, ADE20K / Context) or ``'linear'``.

    ``forward(images (B, 3, H, W), segments (B, H, W) int64)`` -> logits (B, K, H, W), each
    pixel its superpixel's (superpixel boundaries kept). ``segments=None`` computes them
    as the encoder's ``pretrained_cfg`` says.
    """

    def __init__(self, encoder: nn.Module, num_classes: int, head: str = "softmax") -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}.")
        self.encoder, self.num_classes, self.head_type = encoder, num_classes, head
        dim = encoder.embed_dim
        if head == "softmax":
            self.head = SoftmaxClassifier(dim, num_classes)
        elif head == "mask_transformer":
            self.head = SuperpixMaskTransformer(num_classes, dim)
        else:
            self.head = nn.Linear(dim, num_classes)

    def forward(self, images: torch.Tensor, segments: Optional[torch.Tensor] = None) -> torch.Tensor:
        segments = self.encoder.check_segments(images, segments)
        tokens = self.encoder.forward_superpixels(images, segments, pre_logits=True)
        if isinstance(self.head, nn.Linear):
            return paint_superpixels(self.head(tokens), segments)
        return self.head(tokens, segments)
