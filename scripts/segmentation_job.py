"""The real-input segmentation run (scripts/segmentation_job.sh calls this).

Builds GarmentScenes (hcast.data.garment_scenes: all 10 Fashion-MNIST garments pasted on
crops of scikit-image photographs; the val split's garments are Fashion-MNIST test images
and its backgrounds come from photo regions no training crop touches), computes SEEDS
superpixels once, trains a small CAST segmenter (cast_seg_tiny encoder + SPML's softmax
head) from scratch with hcast.train.finetune: first the encoder alone classifies single
garments on photographs (8,000 fresh scenes, a one-level taxonomy of the 10 garments,
--warmup-cpu-budget CPU seconds), then the segmenter trains on the "garment-scenes" recipe
(task "segmentation": AdamW, poly schedule) in what is left of the budget in CPU seconds;
it reports the held-out
per-class IoU, the mIoU (mmseg convention: every class occurs) and the all-background
baseline, with a picture. The segmenter folder it writes ($OUT/segmenter) is what
`hcast segment` and `hcast evaluate` load.
"""
import argparse
import time
from pathlib import Path

import torch

import hcast  # noqa: F401  (registers the models)
import timm
from hcast.data.garment_scenes import GarmentScenes
from hcast.models.segmentation_heads import CASTSegmenter
from hcast.ops import superpixels
from hcast._io import atomic_write, write_json
from hcast.ops.segmentation_metrics import SegmentationIoU
from hcast.train import SegmentationTask, SegmentationTensors, finetune, get_recipe
from hcast.train.segmentation import predict_segmentation, save_segmentation_picture

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", default="runs/segmentation_job")
parser.add_argument("--train-images", type=int, default=4000)
parser.add_argument("--val-images", type=int, default=500)
parser.add_argument("--size", type=int, default=64)
parser.add_argument("--superpixels", type=int, default=49)
parser.add_argument("--cpu-budget", type=float, default=840,
                    help="training budget in CPU seconds of this process (840 = 7 minutes of 2 idle cores; "
                         "on a machine shared with other jobs the run takes longer on the clock but does the "
                         "same work); 0: no budget")
parser.add_argument("--steps", type=int, default=None)
parser.add_argument("--batch-size", type=int, default=None)
parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the recipe's, 2e-3)")
parser.add_argument("--ema-decay", type=float, default=None,
                    help="evaluate an exponential moving average of the weights (timm ModelEmaV3) with this decay")
parser.add_argument("--warmup-cpu-budget", type=float, default=250,
                    help="CPU seconds (taken from --cpu-budget) spent first training the encoder to classify single "
                         "garments on photographs (fresh scenes, cross-entropy on the average-pooled features, "
                         "constant learning rate); 0: segment from scratch")
parser.add_argument("--warmup-images", type=int, default=8000)
parser.add_argument("--warmup-lr", type=float, default=2e-3)
parser.add_argument("--threads", type=int, default=None)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--garments", type=int, nargs=2, default=(1, 2), help="min and max garments per image")
parser.add_argument("--scale", type=float, nargs=2, default=(0.45, 0.8), help="garment side / image side")
parser.add_argument("--embed-dim", type=int, default=128)
parser.add_argument("--heads", type=int, default=4)
parser.add_argument("--depths", type=int, nargs=4, default=(1, 1, 1, 1))
parser.add_argument("--clusters", type=int, nargs=4, default=(32, 16, 8, 4))
parser.add_argument("--pool-drop", type=float, default=0.1,
                    help="dropout in graph pooling's MLP (CASTSeg pool_drop_rate, the original's 0.1)")
parser.add_argument("--fusion-drop", type=float, default=0.2,
                    help="dropout in BlockFusion (CASTSeg fusion_drop_rate, the original's 0.2)")
args = parser.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
torch.manual_seed(args.seed)

t0 = time.time()
scene_args = dict(garments=tuple(args.garments), scale=tuple(args.scale), seed=args.seed)
train = GarmentScenes("train", args.train_images, args.size, **scene_args)
val = GarmentScenes("val", args.val_images, args.size, **scene_args)
x_train, y_train = train.tensors()
x_val, y_val = val.tensors()
s_train = superpixels(x_train, num_segments=args.superpixels, method="seeds")
s_val = superpixels(x_val, num_segments=args.superpixels, method="seeds")
print(f"data: {len(train)} train / {len(val)} held-out {args.size}x{args.size} images, {train.num_classes} classes, "
      f"SEEDS {args.superpixels} superpixels; {time.time() - t0:.0f} s")

model_args = dict(embed_dim=args.embed_dim, num_heads=args.heads, depths=tuple(args.depths), num_clusters=tuple(args.clusters),
                  img_size=args.size, pool_drop_rate=args.pool_drop, fusion_drop_rate=args.fusion_drop)
encoder = timm.create_model("cast_seg_tiny", num_classes=0, **model_args)
if args.warmup_cpu_budget:
    # The encoder first learns to tell the garments apart: one garment per photo crop, its class
    # (hcast.train.finetune's classification task on a one-level taxonomy of the 10 garments),
    # then segments with what it learned. The warm-up's CPU seconds come out of the budget.
    from PIL import Image

    from hcast.hierarchy import Taxonomy

    t1 = time.time()
    single = GarmentScenes("train", args.warmup_images, args.size, garments=(1, 1), scale=tuple(args.scale),
                           seed=args.seed + 1000)
    garment = [int(labels.max()) - 1 for labels in single.labels]  # the one garment's class
    items = [(Image.fromarray(image), label) for image, label in zip(single.images, garment)]
    garments = Taxonomy.from_named_paths([(name,) for name in train.classes[1:]], level_names=("garment",))
    classifier = timm.create_model("cast_seg_tiny", num_classes=garments.num_classes[0], **model_args)
    warmup = get_recipe("garment-scenes").config.replace(
        task="classification", time_budget=args.warmup_cpu_budget / 60, seed=args.seed, num_segments=args.superpixels,
        input_size=args.size, lr=args.warmup_lr, min_lr=args.warmup_lr, kl_weight=0.0)  # constant LR, cross-entropy
    cpu0 = time.process_time()
    warm = finetune(classifier, items[200:], items[:200], garments, warmup)
    warmup_cpu = time.process_time() - cpu0
    missing, unexpected = encoder.load_state_dict(
        {k: v for k, v in classifier.state_dict().items() if not k.startswith("head.")}, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    print(f"warm-up: {warm.num_updates} steps, {warmup_cpu:.0f} CPU s, {time.time() - t1:.0f} s on the clock; "
          f"garment accuracy on 200 held-back scenes {100 * float(warm.best_score):.1f}%")
    args.cpu_budget -= warmup_cpu
model = CASTSegmenter(encoder, train.num_classes, head="softmax")
# the recipe hcast finetune --recipe garment-scenes runs; --cpu-budget is in CPU seconds (the config's in minutes)
changes = dict(time_budget=args.cpu_budget / 60 if args.cpu_budget else None, seed=args.seed,
               num_segments=args.superpixels, input_size=args.size)
changes.update({name: getattr(args, name) for name in ("steps", "batch_size", "lr") if getattr(args, name) is not None})
if args.ema_decay:
    changes.update(ema_decay=args.ema_decay, ema_eval=True)
config = get_recipe("garment-scenes").config.replace(**changes)
print(f"model: cast_seg_tiny (width {args.embed_dim}, depths {args.depths}, clusters {args.clusters}) + SPML "
      f"softmax head, "
      f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters; {config}")
task = SegmentationTask(train.num_classes, list(train.classes), model_name="cast_seg_tiny")
cpu_start, wall_start = time.process_time(), time.time()
result = finetune(model, SegmentationTensors(x_train, s_train, y_train, flip=True),
                  SegmentationTensors(x_val, s_val, y_val), task, config, output=out / "segmenter",
                  model_args=model_args)
train_seconds, train_cpu_seconds = time.time() - wall_start, time.process_time() - cpu_start

scores = result.metrics  # the held-out split, evaluated once after training (val_every=0)
baseline = SegmentationIoU(train.num_classes, class_names=list(train.classes))
baseline.update(torch.zeros_like(y_val), y_val)
base = baseline.compute()
width = max(len(name) for name in train.classes)
print("held-out per-class IoU (%):")
print("\n".join(f"{name:<{width}}  {100 * iou:5.1f}" for name, iou in zip(train.classes, scores["iou"])))
print(f"all-background baseline mIoU: {100 * float(base['miou']):.1f}")
print(f"mIoU: {100 * float(scores['miou']):.1f}")
write_json(dict(
    miou=float(scores["miou"]), iou=dict(zip(train.classes, scores["iou"])),
    pixel_accuracy=float(scores["pixel_accuracy"]), baseline_miou=float(base["miou"]), steps=result.num_updates,
    train_seconds=train_seconds, train_cpu_seconds=train_cpu_seconds, config=config.to_dict(),
    args=vars(args)), out / "metrics.json")

show = torch.arange(6)
pred = predict_segmentation(model, x_val[show], s_val[show])
with torch.no_grad():
    levels = encoder.forward_segments(x_val[show], s_val[show])["segmentations"]
save_segmentation_picture(out / "segmentation.png", x_val[show], [s_val[show], levels[1], levels[2]], pred,
                          list(train.classes), y_val[show], hierarchy_names=[
                              "superpixels", f"CAST regions ({args.clusters[1]})", f"CAST regions ({args.clusters[2]})"])
print(f"picture: {out / 'segmentation.png'}; training {train_seconds:.0f} s on the clock, "
      f"{train_cpu_seconds:.0f} CPU s ({result.num_updates} steps); whole run {time.time() - t0:.0f} s")

(out / "images").mkdir(exist_ok=True)
from PIL import Image  # noqa: E402

for i in range(3):  # held-out images for `hcast segment`
    with atomic_write(out / "images" / f"val{i}.png", description="image") as tmp:
        Image.fromarray(val.images[i]).save(tmp, format="PNG")
print(f"segmenter: {out / 'segmenter'}")
