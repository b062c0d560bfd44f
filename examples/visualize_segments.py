"""Draw what a CAST / H-CAST model segments: image, superpixels and its four grouping levels.

    python examples/visualize_segments.py runs/fashion_mnist/model garment.png --out segments.png
    python examples/visualize_segments.py cast_small --pretrained --out astronaut.png   # skimage's photo

Recognition alone teaches CAST to group superpixels into parts and objects: each graph
pooling stage assigns the previous stage's segments to fewer clusters, and composing the
assignments (``model.forward_segments``) gives a hierarchical segmentation of the image.
"""
import argparse

import torch
from PIL import Image
from timm.data import resolve_data_config

import hcast  # noqa: F401  (registers the hcast models with timm)
from hcast.data import create_transform
from hcast.ops import SuperpixelTransform
from hcast.visualize import save_segmentation_figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="timm name (cast_small, hcast_tiny, ...) or a folder written by `hcast finetune`")
    parser.add_argument("images", nargs="*", help="image files (default: scikit-image's astronaut and cat)")
    parser.add_argument("--out", default="segments.png", help="the PNG to write")
    parser.add_argument("--pretrained", action="store_true", help="load the timm model's pretrained weights")
    parser.add_argument("--model-kwargs", nargs="*", default=[], metavar="KEY=VALUE",
                        help="timm.create_model arguments for a registry model, e.g. level_classes=[10,5]")
    args = parser.parse_args()

    from hcast.cli import load_model, parse_kwargs

    model, _, _ = load_model(args.model, pretrained=args.pretrained or None, **parse_kwargs(args.model_kwargs))
    data_cfg = resolve_data_config({}, model=model)
    transform = create_transform(data_cfg["input_size"], mean=data_cfg["mean"], std=data_cfg["std"])
    superpixels = SuperpixelTransform(num_segments=model.pretrained_cfg["num_segments"],
                                      method=model.pretrained_cfg["superpixel_method"],
                                      mean=data_cfg["mean"], std=data_cfg["std"])
    if args.images:
        pictures = [Image.open(path) for path in args.images]
    else:
        from skimage import data

        pictures = [Image.fromarray(data.astronaut()), Image.fromarray(data.chelsea())]
    images = torch.stack([transform(p) for p in pictures])
    segments = torch.stack([superpixels(image) for image in images])
    with torch.no_grad():
        out = model.forward_segments(images, segments)  # superpixels + one label map per pooling stage
    save_segmentation_figure(images, out["superpixels"], out["segmentations"], args.out,
                             mean=data_cfg["mean"], std=data_cfg["std"])
    print(f"wrote {args.out}: {len(out['segmentations'])} grouping levels of {len(pictures)} image(s)")


if __name__ == "__main__":
    main()
