"""Metric learning with a CAST backbone: Proxy-Anchor with and without the HIER regulariser.

Trains the same CAST embedding twice on a stratified Fashion-MNIST subset, once with
Proxy-Anchor (Kim et al., CVPR 2020; from pytorch-metric-learning) alone and once
with Proxy-Anchor + HIER (Kim et al., CVPR 2023; :class:`hcast.metric_learning.HIERLoss`),
from the same initialisation and batch order, then reports leave-one-out Recall@K on
a stratified subset of the Fashion-MNIST test split, with the Poincare distance as
HIER's evaluation does. The embedding head is HIER's: ``LayerNorm (no affine) ->
Linear -> ToPoincare`` (curvature 0.1, clipping radius 2.3) on the backbone's pooled
features (``forward_head(forward_features(x), pre_logits=True)``), so the only
difference between the two runs is the HIER term.

    python examples/metric_learning_hier.py --train-size 1000 --test-size 500 --epochs 2 --batch-size 50 --emb 64 --num-hproxies 64
    python examples/metric_learning_hier.py --train-size 256 --test-size 200 --epochs 1 --model cast_tiny

Any timm model works as the backbone (``--model resnet18``); CAST models get their
superpixels computed once per image, before training, with ``model.superpixels``.
Needs the ``metric`` extra (geoopt, pytorch-metric-learning) and Fashion-MNIST
(Debian's ``dataset-fashion-mnist`` or ``--data-root``).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from typing import Optional, Sequence

import timm
import torch
import torch.nn.functional as F
from torch import nn

import hcast  # noqa: F401  (registers the CAST models with timm)
from hcast.data.fashion_mnist import FashionMNIST, stratified_indices
from hcast.metric_learning import HIERLoss, ToPoincare, recall_at_k

KS = (1, 2, 4, 8)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="cast_tiny", help="timm/hcast backbone (CAST: cast_tiny, cast_small, ...)")
    p.add_argument("--train-size", type=int, default=2000, help="training images (stratified, train split)")
    p.add_argument("--test-size", type=int, default=1000, help="retrieval images (stratified, test split)")
    p.add_argument("--img-size", type=int, default=None, help="input size (default: the model's pretrained_cfg)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--emb", type=int, default=128, help="embedding size (HIER: 128 for ViTs)")
    p.add_argument("--lr", type=float, default=1e-4, help="backbone/head learning rate (AdamW)")
    p.add_argument("--weight-decay", type=float, default=1e-2)
    p.add_argument("--metric-loss", choices=("pa", "ms"), default="pa", help="Proxy-Anchor or Multi-Similarity")
    p.add_argument("--lambda-hier", type=float, default=0.5, help="weight of HIER (paper: 0.5 or 1)")
    p.add_argument("--num-hproxies", type=int, default=128,
                   help="HIER proxies (paper: 512; fewer keep CPU runs short)")
    p.add_argument("--topk", type=int, default=20, help="HIER's reciprocal-neighbour size")
    p.add_argument("--curvature", type=float, default=0.1)
    p.add_argument("--clip-r", type=float, default=2.3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", default=None, help="folder with the Fashion-MNIST IDX files")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--only", choices=("baseline", "hier"), default=None, help="run one of the two trainings")
    p.add_argument("--json", default=None, help="write the results to this file")
    return p.parse_args(argv)


def load_images(split: str, size: int, num: int, seed: int, data_root: Optional[str], mean, std):
    """Stratified subset as normalised (N, 3, size, size) float images and (N,) int64 labels."""
    full = FashionMNIST(data_root, split=split, download=False)
    idx = stratified_indices(full.targets, num, seed=seed)
    images = torch.from_numpy(full.images[idx]).float().div_(255)[:, None]  # (N, 1, 28, 28)
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).expand(-1, 3, -1, -1)
    mean = torch.tensor(mean).view(1, 3, 1, 1)
    std = torch.tensor(std).view(1, 3, 1, 1)
    return ((images - mean) / std).contiguous(), full.targets[idx]


class Embedder(nn.Module):
    """Backbone + HIER's embedding head; returns points of the Poincare ball."""

    def __init__(self, backbone: nn.Module, emb: int, curvature: float, clip_r: float) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(
            nn.LayerNorm(backbone.num_features, elementwise_affine=False),
            nn.Linear(backbone.num_features, emb),
            ToPoincare(curvature, clip_r),
        )
        nn.init.orthogonal_(self.head[1].weight)
        nn.init.zeros_(self.head[1].bias)
        self.takes_segments = hasattr(backbone, "superpixels")

    def forward(self, images: torch.Tensor, segments: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.takes_segments:
            features = self.backbone.forward_features(images, segments)
        else:
            features = self.backbone.forward_features(images)
        return self.head(self.backbone.forward_head(features, pre_logits=True))


@torch.no_grad()
def compute_superpixels(backbone: nn.Module, images: torch.Tensor, chunk: int = 256) -> Optional[torch.Tensor]:
    if not hasattr(backbone, "superpixels"):
        return None
    return torch.cat([backbone.superpixels(images[i : i + chunk]) for i in range(0, len(images), chunk)])


@torch.no_grad()
def embed_all(model: Embedder, images, segments, device, batch: int = 256) -> torch.Tensor:
    model.eval()
    out = []
    for i in range(0, len(images), batch):
        seg = None if segments is None else segments[i : i + batch].to(device)
        out.append(model(images[i : i + batch].to(device), seg).float().cpu())
    model.train()
    return torch.cat(out)


def train_and_evaluate(args, use_hier: bool, data) -> dict:
    (x_train, y_train, s_train), (x_test, y_test, s_test) = data
    device = torch.device(args.device)
    torch.manual_seed(args.seed)  # same initialisation for both runs
    backbone = timm.create_model(args.model, num_classes=0, pretrained=False)
    model = Embedder(backbone, args.emb, args.curvature, args.clip_r).to(device)
    from pytorch_metric_learning import losses

    if args.metric_loss == "pa":
        metric_loss = losses.ProxyAnchorLoss(num_classes=10, embedding_size=args.emb, margin=0.1, alpha=32).to(device)
    else:
        metric_loss = losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5).to(device)
    groups = [
        {"params": model.parameters(), "lr": args.lr},
        # Proxy-Anchor's proxies learn much faster than the network (pytorch-metric-learning: 100x).
        {"params": metric_loss.parameters(), "lr": args.lr * 100},
    ]
    hier = None
    if use_hier:
        with torch.random.fork_rng(devices=[]):  # keep the RNG stream of the baseline
            torch.manual_seed(args.seed + 1)
            hier = HIERLoss(args.emb, num_proxies=args.num_hproxies, curvature=args.curvature,
                            clip_r=args.clip_r, topk=args.topk).to(device)
        groups.append({"params": hier.parameters(), "lr": args.lr * 50})  # HIER's lr_scale for its proxies
    optimizer = torch.optim.AdamW(groups, weight_decay=args.weight_decay)
    order = torch.Generator().manual_seed(args.seed)
    steps = math.ceil(len(x_train) / args.batch_size)
    t0 = time.time()
    for epoch in range(args.epochs):
        perm = torch.randperm(len(x_train), generator=order)
        totals = {"metric": 0.0, "hier": 0.0}
        for step in range(steps):
            idx = perm[step * args.batch_size : (step + 1) * args.batch_size]
            if len(idx) < 2:
                continue
            seg = None if s_train is None else s_train[idx].to(device)
            z = model(x_train[idx].to(device), seg)
            y = y_train[idx].to(device)
            loss = metric_loss(z, y)
            totals["metric"] += loss.item()
            if hier is not None:
                loss_hier = hier(z, y)
                totals["hier"] += loss_hier.item()
                loss = loss + args.lambda_hier * loss_hier
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimizer.step()
        print(f"[{'hier' if use_hier else 'baseline'}] epoch {epoch + 1}/{args.epochs}: "
              f"metric loss {totals['metric'] / steps:.4f}, hier loss {totals['hier'] / steps:.4f} "
              f"({time.time() - t0:.0f} s)", flush=True)
    z_test = embed_all(model, x_test, s_test, device)
    recalls = recall_at_k(z_test, y_test, k=KS, metric="poincare", curvature=args.curvature)
    return {f"R@{k}": float(r) for k, r in zip(KS, recalls)}


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    probe = timm.create_model(args.model, num_classes=0, pretrained=False)
    cfg = probe.pretrained_cfg or {}
    size = args.img_size or cfg.get("input_size", (3, 64, 64))[-1]
    mean, std = cfg.get("mean", (0.5, 0.5, 0.5)), cfg.get("std", (0.5, 0.5, 0.5))
    x_train, y_train = load_images("train", size, args.train_size, args.seed, args.data_root, mean, std)
    x_test, y_test = load_images("test", size, args.test_size, args.seed, args.data_root, mean, std)
    t0 = time.time()
    s_train, s_test = compute_superpixels(probe, x_train), compute_superpixels(probe, x_test)
    if s_train is not None:
        print(f"superpixels for {len(x_train) + len(x_test)} images in {time.time() - t0:.1f} s", flush=True)
    data = ((x_train, y_train, s_train), (x_test, y_test, s_test))
    results = {"args": vars(args)}
    runs = [args.only] if args.only else ["baseline", "hier"]
    for name in runs:
        t0 = time.time()
        results[name] = train_and_evaluate(args, name == "hier", data)
        results[name]["seconds"] = round(time.time() - t0, 1)
    print(f"\n{'run':<10}" + "".join(f"{f'R@{k}':>8}" for k in KS))
    for name in runs:
        print(f"{name:<10}" + "".join(f"{results[name][f'R@{k}']:>8.4f}" for k in KS))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
