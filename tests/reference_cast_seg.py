"""A plain re-statement of the original CAST segmentation encoder, the equality oracle
for :mod:`hcast.models.cast_seg`.

Follows github:twke18/CAST ``cast_models/cast_seg.py`` (MoCo convention: sin-cos
``pos_embed`` (1, N, C) + ``pe_token``) and ``cast_seg_deit.py`` (DeiT convention:
learned ``pos_embed`` (1, N + 1, C)) with ``BlockFusion`` from ``cast_models/modules.py``,
with the original parameter names so a state dict in the original layout loads with
``strict=True``. The stem features and the position table are upsampled to the
superpixels' resolution with ``F.interpolate`` and averaged per superpixel by a
scatter-add segment mean (the materialised form hcast avoids). Building blocks
(attention, graph pooling with a float64 FPS loop, conv stem) come from
``reference_cast.py``. Nothing here is optimised.
"""
from __future__ import annotations

import re
from typing import Dict

import torch
import torch.nn as nn
import torch.nn.functional as F

from reference_cast import Block, ConvStem, GraphPoolingBlock, Pooling, segment_mean_nd


class BatchNorm1dTokens(nn.Module):
    """modules._BatchNorm1d: BatchNorm1d over the channels of (B, N, C)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


class BlockFusion(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj_blocks = nn.Sequential(BatchNorm1dTokens(dim * 4), nn.Dropout(0.2), nn.Linear(dim * 4, dim))

    def forward(self, b1, b2, b3, b4, c1, c2, c3, c4, l12, l23, l34):
        lab12, lab23, lab34 = l12.argmax(-1), l23.argmax(-1), l34.argmax(-1)
        lab13 = torch.gather(lab23, 1, lab12)
        lab14 = torch.gather(lab34, 1, lab13)

        def unpool(block, label):
            return torch.gather(block, 1, label.unsqueeze(2).expand(-1, -1, block.shape[-1]))

        out_block = torch.cat([b1, unpool(b2, lab12), unpool(b3, lab13), unpool(b4, lab14)], dim=-1)
        out_cls = torch.cat([c1, c2, c3, c4], dim=-1)
        cls_x = self.proj_blocks(torch.cat([out_cls, out_block], dim=1))
        return cls_x[:, 1:], cls_x[:, :1]


def moco_mlp(in_dim: int, out_dim: int = 256, hidden: int = 4096) -> nn.Sequential:
    """MoCo v3 builder._build_mlp(3, in_dim, hidden, out_dim)."""
    return nn.Sequential(nn.Linear(in_dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(),
                         nn.Linear(hidden, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(),
                         nn.Linear(hidden, out_dim, bias=False), nn.BatchNorm1d(out_dim, affine=False))


class ReferenceCASTSeg(nn.Module):
    """``cast_seg.CAST`` (``variant='moco'``) / ``cast_seg_deit.CAST`` (``'deit'``).

    ``head``: ``None`` (Identity, ``num_classes=0``), an int (Linear) or ``'moco'``
    (the projector MoCo v3 puts on the base encoder, 256 outputs)."""

    def __init__(self, img_size: int = 224, embed_dim: int = 384, depths=(3, 3, 3, 2), num_heads: int = 12,
                 num_clusters=(320, 160, 80, 40), model_stage: str = "segmentation", variant: str = "moco",
                 head=None) -> None:
        super().__init__()
        grid = img_size // 8
        self.grid = (grid, grid)
        self.model_stage, self.variant, self.embed_dim = model_stage, variant, embed_dim
        self.patch_embed = ConvStem(embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        if variant == "moco":
            self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid, embed_dim))
            self.pe_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        else:
            self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, embed_dim))
            self.norm = nn.LayerNorm(embed_dim, eps=1e-6)  # built, output unused (cast_seg_deit)
        starts = [sum(depths[:i]) for i in range(5)]
        if variant == "deit":  # slices of timm's blocks: global indices, registered twice
            self.blocks = nn.Sequential(*[Block(embed_dim, num_heads) for _ in range(sum(depths))])
        for i in range(4):
            if variant == "deit":
                setattr(self, f"blocks{i + 1}", self.blocks[starts[i]:starts[i + 1]])
            else:  # cast_seg.py deletes self.blocks and builds one Sequential per stage
                setattr(self, f"blocks{i + 1}", nn.Sequential(*[Block(embed_dim, num_heads) for _ in range(depths[i])]))
            setattr(self, f"pool{i + 1}", Pooling(GraphPoolingBlock(embed_dim, num_clusters[i], num_heads)))
        self.block_fusion = BlockFusion(embed_dim)
        if head == "moco":
            self.head = moco_mlp(embed_dim)
        elif head:
            self.head = nn.Linear(embed_dim, head)
        else:
            self.head = nn.Identity()

    def forward_features(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        n, h, w, c = x.shape
        if self.model_stage == "pretrain":
            y = F.interpolate(y.unsqueeze(1).float(), x.shape[1:3], mode="nearest").squeeze(1).long()
        yh, yw = y.shape[-2:]
        x = F.interpolate(x.permute(0, 3, 1, 2), size=(yh, yw), mode="bilinear").permute(0, 2, 3, 1)
        x = segment_mean_nd(x, y)
        mask = segment_mean_nd(torch.ones(n, yh, yw, 1), y).squeeze(-1) <= 0.5
        table = self.pos_embed if self.variant == "moco" else self.pos_embed[:, 1:]
        pos = table.view(1, self.grid[0], self.grid[1], c).permute(0, 3, 1, 2)
        pos = F.interpolate(pos, size=(yh, yw), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
        pos = segment_mean_nd(pos.expand(n, -1, -1, -1).contiguous(), y)
        x = x + pos
        cls_token = self.cls_token.expand(n, -1, -1)
        cls_token = cls_token + (self.pe_token if self.variant == "moco" else self.pos_embed[:, :1])
        blocks, cls_tokens, logits = [], [], []
        for i in range(1, 5):
            cls_x = getattr(self, f"blocks{i}")(torch.cat([cls_token, x], dim=1))
            cls_token, x = cls_x[:, :1], cls_x[:, 1:]
            blocks.append(x)
            cls_token, logit, centroid, pool_mask, _ = getattr(self, f"pool{i}")(cls_token, x, mask)
            cls_tokens.append(cls_token)
            logits.append(logit)
            x, mask = centroid, pool_mask
        out_block, out_cls = self.block_fusion(*blocks, *cls_tokens, *logits[:3])
        if self.variant == "deit":
            return torch.cat([out_cls, out_block], dim=1)
        return out_block.mean(dim=1) if self.model_stage == "pretrain" else out_block

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self.forward_features(x, y)
        if self.variant == "deit":
            return out
        if self.model_stage == "pretrain":
            return self.head(out)
        b, s, c = out.shape
        return self.head(out.flatten(0, 1)).unflatten(0, (b, s))


def to_original(model, variant: str = "moco") -> Dict[str, torch.Tensor]:
    """hcast ``cast_seg_*`` state dict -> the original layout (inverse of the filter)."""
    depths = model.depths
    starts = [sum(depths[:i]) for i in range(len(depths))]
    out = {}
    for key, value in model.state_dict().items():
        m = re.match(r"stages\.(\d+)\.blocks\.(\d+)\.(.*)", key)
        if m:
            stage, index, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            if variant == "moco":  # cast_seg.py: one Sequential per stage, local indices
                out[f"blocks{stage + 1}.{index}.{rest}"] = value
            else:  # cast_seg_deit.py: slices of ``blocks``, global indices, both registrations
                out[f"blocks{stage + 1}.{starts[stage] + index}.{rest}"] = value
                out[f"blocks.{starts[stage] + index}.{rest}"] = value
            continue
        m = re.match(r"stages\.(\d+)\.pool\.(.*)", key)
        if m:
            rest = m.group(2)
            for new, old in (("assign.", "centroid_fc."), ("fc1_norm.", "fc1.0."), ("fc1.", "fc1.1."),
                             ("fc2_norm.", "fc2.0."), ("fc2.", "fc2.1.")):
                if rest.startswith(new):
                    rest = old + rest[len(new):]
                    break
            out[f"pool{int(m.group(1)) + 1}.pool_block.{rest}"] = value
            continue
        if key.startswith("fusion.norm."):
            out["block_fusion.proj_blocks.0.norm." + key[len("fusion.norm."):]] = value
            continue
        if key.startswith("fusion.proj."):
            out["block_fusion.proj_blocks.2." + key[len("fusion.proj."):]] = value
            continue
        out[key] = value
    if variant == "moco":
        out["pe_token"] = out["pos_embed"][:, :1].clone()
        out["pos_embed"] = out["pos_embed"][:, 1:].clone()
    else:
        out["norm.weight"] = torch.ones(model.embed_dim)
        out["norm.bias"] = torch.zeros(model.embed_dim)
    return out
