"""Fine-tune H-CAST on your own images and class tree, with hcast.train's pieces.

Your data: one sub-folder per fine class (optionally inside ``train/`` and ``val/``), and
the class tree either as a taxonomy JSON (``Taxonomy.save``) or as a CSV with one line
per fine class giving its path from fine to coarse::

    # taxonomy.csv
    husky,dog,animal
    beagle,dog,animal
    tabby,cat,animal
    sedan,car,vehicle

    python examples/finetune_imagefolder.py --data my_images --taxonomy taxonomy.csv \\
        --model hcast_small.deit_in1k --pretrained --epochs 10 --output runs/mine

This is the ``hcast finetune`` loop written out (AdamW, cosine schedule with warm-up,
H-CAST loss, superpixels in the DataLoader workers, per-epoch evaluation, an atomic
checkpoint per epoch); the folder it writes loads with
``timm.create_model("local-dir:runs/mine", pretrained=True)`` and works with
``hcast evaluate`` / ``hcast predict``.
"""
import argparse
import csv
from pathlib import Path

import timm
import torch
from timm.data import resolve_data_config
from timm.scheduler import CosineLRScheduler
from torch.utils.data import DataLoader

import hcast  # noqa: F401  (registers the hcast models with timm)
from hcast import train
from hcast.data import WithSuperpixels, create_train_val_datasets, create_transform
from hcast.hierarchy import Taxonomy
from hcast.hierarchy.losses import HCASTLoss
from hcast.ops import SuperpixelTransform
from hcast.precision import resolve_precision


def read_taxonomy(path: str) -> Taxonomy:
    """A taxonomy JSON file, or a CSV of fine-to-coarse class-name paths (one line per fine class)."""
    if path.endswith(".csv"):
        with open(path, newline="") as f:
            rows = [tuple(cell.strip() for cell in row) for row in csv.reader(f) if row and not row[0].startswith("#")]
        return Taxonomy.from_named_paths(rows)
    return Taxonomy.load(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="image folder: one sub-folder per fine class")
    p.add_argument("--taxonomy", required=True, help="taxonomy .json or fine,...,coarse .csv")
    p.add_argument("--output", required=True)
    p.add_argument("--model", default="hcast_small.deit_in1k")  # CAST-S ImageNet backbone, fresh heads
    p.add_argument("--pretrained", action="store_true", help="start from the model's pretrained backbone")
    p.add_argument("--input-size", type=int, default=None, help="default: the model's")
    p.add_argument("--num-segments", type=int, default=None, help="superpixels per image (default: the model's)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--model-kwargs", nargs="*", default=[], metavar="KEY=VALUE")
    args = p.parse_args()

    from hcast.cli import parse_kwargs

    taxonomy = read_taxonomy(args.taxonomy)
    device = train.resolve_device("auto")
    model = timm.create_model(args.model, pretrained=args.pretrained, level_classes=taxonomy.num_classes,
                              **parse_kwargs(args.model_kwargs)).to(device)
    cfg = resolve_data_config({}, model=model)
    size = args.input_size or cfg["input_size"][-1]
    sp = SuperpixelTransform(num_segments=args.num_segments or model.pretrained_cfg["num_segments"],
                             method=model.pretrained_cfg["superpixel_method"], mean=cfg["mean"], std=cfg["std"])
    train_set, val_set = create_train_val_datasets(
        args.data, WithSuperpixels(create_transform(size, True, cfg["mean"], cfg["std"]), sp),
        WithSuperpixels(create_transform(size, False, cfg["mean"], cfg["std"]), sp), taxonomy=taxonomy)
    train_loader = DataLoader(train_set, args.batch_size, shuffle=True, drop_last=True, num_workers=args.workers)
    val_loader = DataLoader(val_set, args.batch_size, num_workers=args.workers)

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    total = args.epochs * len(train_loader)
    scheduler = CosineLRScheduler(optimizer, t_initial=total, lr_min=1e-6, warmup_t=min(len(train_loader), total // 5),
                                  warmup_lr_init=1e-6, warmup_prefix=True, t_in_epochs=False)
    criterion = HCASTLoss(kl_weight=0.5, label_smoothing=0.1)
    amp_dtype = resolve_precision("auto", device, training=True)  # bf16 where native, else fp32
    updates = 0
    for epoch in range(args.epochs):
        stats = train.train_one_epoch(model, train_loader, criterion, optimizer, taxonomy, device, epoch=epoch,
                                       scheduler=scheduler, num_updates=updates, amp_dtype=amp_dtype, clip_grad=1.0)
        updates = stats["num_updates"]
        metrics = train.evaluate(model, val_loader, taxonomy, device, amp_dtype=amp_dtype)
        print(f"epoch {epoch + 1}: loss {stats['loss']:.3f}, {stats['images_per_s']:.0f} img/s")
        print(train.format_metrics_table(metrics))
        train.save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch},
                               Path(args.output) / "checkpoint-latest.pth")
        train.save_model_folder(model, args.output, taxonomy,
                                 extra_config={"pretrained_cfg": {"num_segments": sp.num_segments}},
                                 data_config={"input_size": (3, size, size)})
    print(f"model folder: {args.output}")


if __name__ == "__main__":
    main()
