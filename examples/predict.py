"""Predict the taxonomy path of your images with a model folder written by `hcast finetune`.

    python examples/predict.py runs/fashion_mnist/model shirt.png boot.png

The folder is a timm model folder: ``timm.create_model("local-dir:FOLDER", pretrained=True)``
rebuilds the model with its weights; ``config.json`` also stores the taxonomy (class tree
and names) and the superpixel settings the model was trained with.
"""
import argparse
import json
from pathlib import Path

import timm
import torch
from PIL import Image
from timm.data import resolve_data_config

import hcast  # noqa: F401  (registers the hcast models with timm)
from hcast.data import create_transform
from hcast.hierarchy import Taxonomy
from hcast.hierarchy.decoding import consistent_decode
from hcast.ops import SuperpixelTransform


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a folder written by `hcast finetune` (config.json + model.safetensors)")
    parser.add_argument("images", nargs="+", help="image files")
    args = parser.parse_args()

    model = timm.create_model(f"local-dir:{args.model}", pretrained=True).eval()
    taxonomy = Taxonomy.from_dict(json.loads((Path(args.model) / "config.json").read_text())["taxonomy"])
    data_cfg = resolve_data_config({}, model=model)
    transform = create_transform(data_cfg["input_size"], mean=data_cfg["mean"], std=data_cfg["std"])
    superpixels = SuperpixelTransform(num_segments=model.pretrained_cfg["num_segments"],
                                      method=model.pretrained_cfg["superpixel_method"],
                                      mean=data_cfg["mean"], std=data_cfg["std"])

    images = torch.stack([transform(Image.open(path)) for path in args.images])
    segments = torch.stack([superpixels(image) for image in images])
    with torch.no_grad():
        logits = model.forward_levels(images, segments)  # one (B, C_l) tensor per level, finest first
    probs = [level.softmax(-1) for level in logits]
    paths = consistent_decode(logits, taxonomy)  # the best path that exists in the taxonomy
    for b, path in enumerate(args.images):
        steps = []
        for level, ids in enumerate(paths):
            class_id = int(ids[b])
            name = taxonomy.names[level][class_id] if taxonomy.names[level] else str(class_id)
            steps.append(f"{taxonomy.level_names[level]}: {name} ({100 * float(probs[level][b, class_id]):.1f}%)")
        print(f"{path}: " + " -> ".join(steps))


if __name__ == "__main__":
    main()
