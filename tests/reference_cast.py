"""A plain re-implementation of the original CAST / H-CAST forward pass, used as the
equality oracle for hcast's models.

It follows the structure and the parameter names of the original code
(github.com/twke18/CAST ``cast_models/``; H-CAST: github.com/ngocquanai/HiOT @ b1a222b
``cast_models/cast_deit_hier.py``) so that a state dict in the original layout loads into
it with ``strict=True``: ``blocks.N`` plus the same modules registered again as
``blocksK.M``, ``poolK.pool_block.{centroid_fc,fc1,fc2}``, MoCo's ``pe_token``, H-CAST's
``family_head`` / ``manufacturer_head``. Attention is computed unfused, superpixel
pooling by a scatter-add segment mean over the flattened batch, farthest point sampling
by a straightforward float64 loop (first maximum wins), and it fails like the original
when a stage runs out of distinct tokens. Written for these tests; nothing here is
optimised.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


def segment_mean_nd(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean of x (B, H, W, C) per id of ids (B, H, W) -> (B, max_id + 1, C); zeros for
    empty ids. The id range is shared over the batch, as in the original."""
    batch, channels = x.shape[0], x.shape[-1]
    num_ids = int(ids.max()) + 1
    flat_ids = (ids.reshape(batch, -1) + torch.arange(batch)[:, None] * num_ids).reshape(-1)
    sums = torch.zeros(batch * num_ids, channels, dtype=x.dtype)
    sums.scatter_add_(0, flat_ids[:, None].expand(-1, channels), x.reshape(-1, channels))
    counts = torch.zeros(batch * num_ids, dtype=x.dtype).scatter_add_(0, flat_ids, torch.ones_like(flat_ids, dtype=x.dtype))
    counts = torch.where(counts == 0, torch.ones_like(counts), counts)
    return (sums / counts[:, None]).view(batch, num_ids, channels)


def farthest_point_sampler(points: torch.Tensor, num_samples: int, start: int = 0) -> torch.Tensor:
    """DGL-style FPS: (B, N, C) float64 -> (B, num_samples) indices, first max wins."""
    batch, num_points, _ = points.shape
    out = torch.zeros(batch, num_samples, dtype=torch.long)
    for b in range(batch):
        dist = torch.full((num_points,), float("inf"), dtype=torch.float64)
        last = start
        out[b, 0] = start
        for i in range(1, num_samples):
            d = ((points[b] - points[b, last]) ** 2).sum(-1)
            dist = torch.minimum(dist, d)
            last = int(torch.argmax(dist))
            out[b, i] = last
    return out


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """timm's ViT block (as of the original code): pre-norm attention and MLP."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, dim * 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class CentroidBlock(nn.Module):
    """graph_pool.Block: attention without MLP, then x - mean + bias."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm(x))
        return x - torch.mean(x, dim=1, keepdim=True) + self.bias.view(1, 1, -1)


class GraphPoolingBlock(nn.Module):
    def __init__(self, dim: int, num_clusters: int, num_heads: int) -> None:
        super().__init__()
        self.centroid_fc = CentroidBlock(dim, num_heads)
        self.fc1 = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * 4), nn.GELU(), nn.Dropout(0.1))
        self.fc2 = nn.Sequential(nn.LayerNorm(dim * 4), nn.Linear(dim * 4, dim))
        self.num_clusters = num_clusters

    def forward(self, cls_token, src, mask):
        bs, sl, cs = src.shape
        valid = (~mask).to(src.dtype).unsqueeze(2)
        mean_src = ((src * valid).sum(1) / valid.sum(1).clamp(min=1)).unsqueeze(1)
        filled = torch.where(mask.unsqueeze(2).expand(-1, -1, cs), mean_src.expand(-1, sl, -1), src)
        padded = torch.cat([mean_src, filled], dim=1)
        inds = farthest_point_sampler(padded.to(torch.float64), self.num_clusters + 1, 0)
        inds = inds[:, 1:] - 1
        assert (inds >= 0).all(), "FPS picked the mean start point again (too few distinct tokens)"
        gather_inds = inds.unsqueeze(2).expand(-1, -1, cs)
        node = self.centroid_fc(src)
        centroid = torch.gather(node, 1, gather_inds)
        logits = torch.einsum("bij,bjk->bik", F.normalize(node, dim=-1), F.normalize(centroid, dim=-1).transpose(1, 2)) * 5
        assignments = torch.softmax(logits, dim=-1)
        fc1_all = self.fc1(torch.cat([cls_token, src], dim=1))
        fc1_cls, fc1_src = fc1_all[:, :1], fc1_all[:, 1:]
        normalizer = torch.einsum("bij,bjk->bik", assignments.transpose(1, 2), torch.ones(bs, sl, 1))
        centroids = torch.einsum("bij,bjk->bik", assignments.transpose(1, 2), fc1_src) / normalizer
        fc2_all = self.fc2(torch.cat([fc1_cls, centroids], dim=1))
        centroids = fc2_all[:, 1:] + torch.gather(src, 1, gather_inds)
        cls_token = fc2_all[:, :1] + cls_token
        return cls_token, centroids, logits, inds


class Pooling(nn.Module):
    def __init__(self, pool_block: GraphPoolingBlock) -> None:
        super().__init__()
        self.pool_block = pool_block

    def forward(self, cls_token, x, mask):
        cls_token, centroid, logit, inds = self.pool_block(cls_token, x, mask)
        return cls_token, logit, centroid, torch.zeros(logit.shape[0], logit.shape[-1], dtype=torch.bool), inds


class ConvStem(nn.Module):
    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        layers = []
        cin, cout = 3, embed_dim // 8
        for i in range(4):
            layers += [nn.Conv2d(cin, cout, 3, 2 if i < 3 else 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
            cin, cout = cout, cout * 2
        layers.append(nn.Conv2d(cin, embed_dim, 1))
        self.proj = nn.Sequential(*layers)

    def forward(self, x):
        return self.proj(x).permute(0, 2, 3, 1)


class ReferenceCAST(nn.Module):
    """CAST (``variant='deit'``: learned ``pos_embed`` (1, N+1, C); ``'moco'``: sin-cos
    ``pos_embed`` (1, N, C) + ``pe_token``) with optional H-CAST heads
    (``level_classes`` of length 2 or 3)."""

    def __init__(self, img_size: int = 224, embed_dim: int = 384, depths: Sequence[int] = (3, 3, 3, 2),
                 num_heads: int = 12, num_clusters: Sequence[int] = (64, 32, 16, 8), num_classes: int = 1000,
                 variant: str = "deit", level_classes: Optional[Sequence[int]] = None) -> None:
        super().__init__()
        grid = img_size // 8
        self.patch_embed = ConvStem(embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.variant = variant
        if variant == "moco":
            self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid, embed_dim))
            self.pe_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        else:
            self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, embed_dim))
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads) for _ in range(sum(depths))])
        starts = [sum(depths[:i]) for i in range(5)]
        for i in range(4):
            # Same modules registered a second time, as nn.Sequential slicing does.
            setattr(self, f"blocks{i + 1}", self.blocks[starts[i]:starts[i + 1]])
            setattr(self, f"pool{i + 1}", Pooling(GraphPoolingBlock(embed_dim, num_clusters[i], num_heads)))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.level_classes = tuple(level_classes) if level_classes else None
        if self.level_classes:
            num_classes = self.level_classes[0]
            self.family_head = nn.Linear(embed_dim, self.level_classes[1])
            if len(self.level_classes) == 3:
                self.manufacturer_head = nn.Linear(embed_dim, self.level_classes[2])
        self.head = nn.Linear(embed_dim, num_classes) if num_classes else nn.Identity()

    def _block_operations(self, x, cls_token, mask, blocks, pool, norm):
        cls_x = torch.cat([cls_token, x], dim=1)
        cls_x = blocks(cls_x)
        cls_token, x = cls_x[:, :1], cls_x[:, 1:]
        cls_token, logit, centroid, pool_mask, inds = pool(cls_token, x, mask)
        out = norm(cls_x)[:, 0] if norm is not None else cls_x[:, 0]
        return x, cls_token, logit, centroid, pool_mask, inds, out

    def forward_features(self, x: torch.Tensor, y: torch.Tensor) -> Dict[str, torch.Tensor]:
        x = self.patch_embed(x)
        n, h, w, c = x.shape
        y = F.interpolate(y.unsqueeze(1).float(), x.shape[1:3], mode="nearest").squeeze(1).long()
        x = segment_mean_nd(x, y)
        mask = segment_mean_nd(torch.ones(n, h, w, 1), y).squeeze(-1) <= 0.5
        if self.variant == "moco":
            pos = segment_mean_nd(self.pos_embed.view(1, h, w, c).expand(n, -1, -1, -1), y)
            cls_token = self.cls_token.expand(n, -1, -1) + self.pe_token.expand(n, -1, -1)
        else:
            pos = segment_mean_nd(self.pos_embed[:, 1:].view(1, h, w, c).expand(n, -1, -1, -1), y)
            cls_token = self.cls_token.expand(n, -1, -1) + self.pos_embed[:, :1]
        x = x + pos
        result: Dict[str, torch.Tensor] = {"padding_mask": mask}
        for i in range(1, 5):
            norm = self.norm if i == 4 else None
            x, cls_token, logit, centroid, pool_mask, inds, out = self._block_operations(
                x, cls_token, mask, getattr(self, f"blocks{i}"), getattr(self, f"pool{i}"), norm)
            result[f"logit{i}"], result[f"out{i}"], result[f"block{i}"] = logit, out, x
            x, mask = centroid, pool_mask
        return result

    def forward(self, x: torch.Tensor, y: torch.Tensor):
        r = self.forward_features(x, y)
        if not self.level_classes:
            return self.head(r["out4"])
        if len(self.level_classes) == 3:
            return self.head(r["out2"]), self.family_head(r["out3"]), self.manufacturer_head(r["out4"])
        return self.head(r["out3"]), self.family_head(r["out4"])


def reference_segmentation(logits: List[torch.Tensor], segments: torch.Tensor) -> List[torch.Tensor]:
    """Per-pixel labels for each stage: argmax of each stage's logits, composed."""
    labels = [lg.argmax(-1) for lg in logits]
    maps = []
    current = segments.flatten(1)
    for lab in labels:
        current = torch.gather(lab, 1, current)
        maps.append(current.view_as(segments))
    return maps
