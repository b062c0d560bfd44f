"""Pictures of what a CAST / H-CAST model segments: image, superpixels, grouping levels.

CAST's graph pooling groups superpixels stage by stage; composing the stages'
assignments gives a hierarchical segmentation of the image for free
(``model.forward_segments``). :func:`save_segmentation_figure` draws, one row per
image: the image, its superpixels, then one panel per pooling stage (finest first),
each region filled with its mean colour and outlined.
"""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

__all__ = ["denormalize", "save_segmentation_figure"]

# matplotlib's tab10 + Dark2: distinct hues that stay visible over grey garments
_PALETTE = [
    (0.12, 0.47, 0.71), (1.0, 0.5, 0.05), (0.17, 0.63, 0.17), (0.84, 0.15, 0.16), (0.58, 0.4, 0.74),
    (0.55, 0.34, 0.29), (0.89, 0.47, 0.76), (0.5, 0.5, 0.5), (0.74, 0.74, 0.13), (0.09, 0.75, 0.81),
    (0.11, 0.62, 0.47), (0.85, 0.37, 0.01), (0.46, 0.44, 0.7), (0.91, 0.16, 0.54), (0.4, 0.65, 0.12),
    (0.9, 0.67, 0.01),
]


def denormalize(
    images: torch.Tensor, mean: Sequence[float] = IMAGENET_DEFAULT_MEAN, std: Sequence[float] = IMAGENET_DEFAULT_STD
) -> np.ndarray:
    """(B,3,H,W) normalised float tensor -> (B,H,W,3) float64 array in [0,1]."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images: expected a (B, 3, H, W) tensor, got shape {tuple(images.shape)}.")
    m = torch.as_tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
    x = images.detach().cpu().double() * s + m
    return x.clamp(0, 1).permute(0, 2, 3, 1).numpy()


def _upsample(array: np.ndarray, factor: int) -> np.ndarray:
    # nearest neighbour, so labels stay labels and small images get thin outlines
    return array.repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else array


def save_segmentation_figure(
    images: torch.Tensor,
    superpixels: torch.Tensor,
    segmentations: Sequence[torch.Tensor],
    path: Union[str, Path],
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
    titles: Optional[Sequence[str]] = None,
    panel_size: float = 2.2,
    display_size: int = 256,
) -> Path:
    """Write a PNG: per image, the image, its superpixels and each grouping level.

    Args:
        images: (B,3,H,W) normalised float images.
        superpixels: (B,H,W) int64 superpixel ids (at the images' size; resized by
            nearest neighbour otherwise).
        segmentations: per pooling stage, finest first, (B,H,W) int64 group labels
            (``model.forward_segments(images, segments)["segmentations"]``).
        path: the PNG file to write (folders are created).
        mean, std: the normalisation to undo.
        titles: optional one line per image, under the image (e.g. the predicted path).
        panel_size: inches per panel.
        display_size: small images are enlarged by an integer factor to about this many
            pixels, so outlines stay thin.

    Returns:
        the path written.

    Raises:
        ValueError: when batch sizes disagree.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.color import label2rgb
    from skimage.segmentation import find_boundaries

    rgb = denormalize(images, mean, std)
    batch, height, width = rgb.shape[:3]
    maps = [superpixels] + list(segmentations)
    for i, m in enumerate(maps):
        if m.shape[0] != batch:
            raise ValueError(f"segmentations[{i - 1}] has batch size {m.shape[0]}, images {batch}."
                             if i else f"superpixels has batch size {m.shape[0]}, images {batch}.")
    maps = [
        torch.nn.functional.interpolate(m[:, None].float(), size=(height, width), mode="nearest")[:, 0].long()
        if tuple(m.shape[-2:]) != (height, width) else m.long()
        for m in maps
    ]
    factor = max(1, display_size // max(height, width))
    cols = len(maps) + 1
    col_titles = ["image", "superpixels"] + [f"grouping {i + 1}" for i in range(len(maps) - 1)]
    fig, axes = plt.subplots(batch, cols, figsize=(panel_size * cols, (panel_size + 0.3 * (titles is not None)) * batch),
                             squeeze=False)
    for b in range(batch):
        image = _upsample(rgb[b], factor)
        for c in range(cols):
            ax = axes[b, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.imshow(image)
            else:
                labels = _upsample(maps[c - 1][b].cpu().numpy(), factor)
                ids, labels = np.unique(labels, return_inverse=True)
                labels = labels.reshape(image.shape[:2])
                if c == 1:  # superpixels: outlines on the photo
                    shown = image.copy()
                    shown[find_boundaries(labels, mode="inner")] = (1.0, 0.85, 0.0)
                else:  # groups: one colour per cluster (pieces of one cluster share it), outlined
                    shown = label2rgb(labels, image, colors=_PALETTE, alpha=0.55, bg_label=-1, image_alpha=1.0)
                    shown[find_boundaries(labels, mode="inner")] = (1.0, 1.0, 1.0)
                ax.imshow(shown)
                ax.set_xlabel(f"{len(ids)} {'superpixels' if c == 1 else 'groups'}", fontsize=8)
            if b == 0:
                ax.set_title(col_titles[c], fontsize=10)
        if titles is not None:
            axes[b, 0].set_xlabel(textwrap.fill(str(titles[b]), 32), fontsize=8)
    fig.tight_layout()
    path = Path(path)
    from hcast._io import atomic_write

    with atomic_write(path) as tmp:  # the temporary's name has no image extension: say which format
        fig.savefig(tmp, dpi=110, format=path.suffix[1:] or "png")
    plt.close(fig)
    return path
