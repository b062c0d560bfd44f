"""H-CAST in your own training loop: model, loss, metrics and superpixels from hcast, nothing else.

    python examples/train_loop_minimal.py --steps 300 --eval-images 1000
"""
import argparse
import json

import timm
import torch
from torch.utils.data import DataLoader

import hcast  # noqa: F401  (registers hcast_tiny & co. with timm)
from hcast.data import FashionMNIST, WithSuperpixels, create_transform
from hcast.hierarchy import fashion_mnist_taxonomy
from hcast.hierarchy.losses import HCASTLoss
from hcast.hierarchy.metrics import HierarchicalMetrics
from hcast.ops import SuperpixelTransform

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=300)
p.add_argument("--batch-size", type=int, default=64)
p.add_argument("--eval-images", type=int, default=1000)
p.add_argument("--model-kwargs", default="{}", help='e.g. \'{"embed_dim": 32, "depths": [1, 1, 1, 1]}\'')
args = p.parse_args()

taxonomy = fashion_mnist_taxonomy()  # 10 garments -> 5 groups, finest level first
model = timm.create_model("hcast_tiny", level_classes=taxonomy.num_classes, **json.loads(args.model_kwargs))
size = model.pretrained_cfg["input_size"][-1]  # 64 for hcast_tiny
sp = SuperpixelTransform(num_segments=model.pretrained_cfg["num_segments"], method="seeds")
train = FashionMNIST(split="train", transform=WithSuperpixels(create_transform(size, is_training=True), sp))
test = FashionMNIST(split="test", transform=WithSuperpixels(create_transform(size), sp), indices=range(args.eval_images))
paths = taxonomy.paths()  # (num_fine, num_levels): the label of every level, from the fine label
criterion, opt = HCASTLoss(kl_weight=0.5), torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)

model.train()
loader = DataLoader(train, batch_size=args.batch_size, shuffle=True, drop_last=True)
for step, ((images, segments), fine) in zip(range(args.steps), loader):
    loss = criterion(model.forward_levels(images, segments), list(paths[fine].T))  # per level, finest first
    opt.zero_grad(); loss.backward(); opt.step()  # noqa: E702
    if step % 50 == 0:
        print(f"step {step}: loss {loss.item():.3f}")

model.eval()
metrics = HierarchicalMetrics(taxonomy)  # a torchmetrics Metric: also correct under DDP
with torch.no_grad():
    for (images, segments), fine in DataLoader(test, batch_size=256):
        metrics.update(model.forward_levels(images, segments), list(paths[fine].T))
print({k: round(float(v), 4) for k, v in metrics.compute().items()})
