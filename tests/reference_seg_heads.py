"""Plain re-statements of the original dense heads, the equality oracle for
:mod:`hcast.models.segmentation_heads`.

* SPML's ``SoftmaxClassifier`` (``SPML/spml/models/predictions/softmax_classifier.py``)
  runs on the per-pixel embedding map: each pixel holds its superpixel's feature
  (``SPML/spml/models/embeddings/cast.py`` ``generate_embeddings``).
* Segmenter's ``SuperpixMaskTransformer`` (``segmenter/segm/model/decoder.py``, blocks from
  ``segm/model/blocks.py``): unfused attention, the original module names.
* SegSort retrieval (``spml/utils/segsort/{common,eval}.py``): prototypes over pixels,
  ``argsort`` ranking, one-hot majority vote.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def pixel_map(tokens: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """generate_embeddings: gather superpixel features to pixels, (B, C, H, W)."""
    n, _, c = tokens.shape
    h, w = segments.shape[-2:]
    emb = torch.gather(tokens, 1, segments.view(n, -1, 1).expand(-1, -1, c))
    return emb.view(n, h, w, c).permute(0, 3, 1, 2).contiguous()


class SoftmaxClassifier(nn.Module):
    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.semantic_classifier = nn.Sequential(
            nn.Conv2d(dim, dim, 1, bias=False), nn.BatchNorm2d(dim), nn.ReLU(),
            nn.Conv2d(dim, num_classes, 1, bias=True))

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.semantic_classifier(embedding)


class FeedForward(nn.Module):
    def __init__(self, dim, hidden_dim, dropout):
        super().__init__()
        self.fc1, self.act, self.fc2, self.drop = nn.Linear(dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, dim), nn.Dropout(dropout)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Attention(nn.Module):
    def __init__(self, dim, heads, dropout):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv, self.proj = nn.Linear(dim, dim * 3), nn.Linear(dim, dim)
        self.attn_drop, self.proj_drop = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = self.attn_drop(((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1))
        return self.proj_drop(self.proj((attn @ v).transpose(1, 2).reshape(b, n, c)))


class DecoderBlock(nn.Module):
    def __init__(self, dim, heads, mlp_dim, dropout):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn, self.mlp = Attention(dim, heads, dropout), FeedForward(dim, mlp_dim, dropout)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class SuperpixMaskTransformer(nn.Module):
    def __init__(self, n_cls, d_encoder, n_layers, n_heads, d_model, d_ff, dropout=0.1):
        super().__init__()
        self.n_cls = n_cls
        self.blocks = nn.ModuleList([DecoderBlock(d_model, n_heads, d_ff, dropout) for _ in range(n_layers)])
        self.cls_emb = nn.Parameter(torch.randn(1, n_cls, d_model))
        self.proj_dec = nn.Linear(d_encoder, d_model)
        self.proj_patch = nn.Parameter(torch.randn(d_model, d_model))
        self.proj_classes = nn.Parameter(torch.randn(d_model, d_model))
        self.decoder_norm, self.mask_norm = nn.LayerNorm(d_model), nn.LayerNorm(n_cls)

    def forward(self, x, superpix, im_size):
        h, w = im_size
        x = self.proj_dec(x)
        x = torch.cat((x, self.cls_emb.expand(x.size(0), -1, -1)), 1)
        for blk in self.blocks:
            x = blk(x)
        x = self.decoder_norm(x)
        patches, cls_seg_feat = x[:, :-self.n_cls], x[:, -self.n_cls:]
        patches = patches @ self.proj_patch
        cls_seg_feat = cls_seg_feat @ self.proj_classes
        patches = patches / patches.norm(dim=-1, keepdim=True)
        cls_seg_feat = cls_seg_feat / cls_seg_feat.norm(dim=-1, keepdim=True)
        masks = self.mask_norm(patches @ cls_seg_feat.transpose(1, 2))
        superpix = F.interpolate(superpix.unsqueeze(1).float(), (h, w), mode="nearest").squeeze(1).long()
        b, _, c = masks.shape
        masks = torch.gather(masks, 1, superpix.view(b, -1, 1).expand(-1, -1, c))
        return masks.permute(0, 2, 1).reshape(b, c, h, w)


def calculate_prototypes_from_labels(embeddings, labels, max_label=None):
    embeddings = embeddings.view(-1, embeddings.shape[-1])
    if max_label is None:
        max_label = labels.max() + 1
    prototypes = torch.zeros((max_label, embeddings.shape[-1]), dtype=embeddings.dtype)
    prototypes = prototypes.scatter_add_(0, labels.view(-1, 1).expand(-1, embeddings.shape[-1]), embeddings)
    norm = torch.norm(prototypes, dim=-1, keepdim=True)
    norm = torch.where(torch.ge(norm, 1e-12), norm, torch.ones_like(norm).mul_(1e-12))
    return prototypes / norm


def top_k_labels(embeddings, prototypes, prototype_labels, top_k):
    affinity = torch.mm(embeddings, prototypes.t())
    idx = torch.argsort(affinity, 1, descending=True)[:, :top_k].contiguous()
    return torch.gather(prototype_labels.view(-1), 0, idx.view(-1)).view(-1, top_k)


def majority_label_from_topk(labels):
    one_hot = torch.zeros(labels.shape[0], labels.shape[1], int(labels.max()) + 1, dtype=torch.long)
    one_hot.scatter_(2, labels.unsqueeze(2), 1)
    return torch.argmax(one_hot.sum(dim=1), 1)


def find_majority_label(semantic_labels, cluster_labels):
    semantic_labels, cluster_labels = semantic_labels.view(-1), cluster_labels.view(-1)
    num_clusters, num_classes = cluster_labels.max() + 1, semantic_labels.max() + 1
    acc = torch.zeros((num_clusters, num_classes), dtype=torch.long)
    acc.scatter_add_(0, cluster_labels.view(-1, 1).expand(-1, num_classes), F.one_hot(semantic_labels, int(num_classes)))
    return torch.argmax(acc, 1)


def cluster_index(logits, segments):
    """SPML cast.py generate_clusters: composed argmax regions at every pixel, unique
    over the batch (batch index * divisor + region), then torch.unique's inverse."""
    index = None
    for logit in logits:
        lab = torch.argmax(logit, dim=-1)
        index = lab if index is None else torch.gather(lab, 1, index)
    n, h, w = segments.shape
    idx = torch.gather(index, 1, segments.flatten(1)).view(n, h, w)
    div = idx.max() + 1
    idx = (torch.arange(n).view(n, 1, 1) * div + idx).view(-1)
    _, inverse = torch.unique(idx, return_inverse=True)
    return inverse
