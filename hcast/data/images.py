"""Reading image files: one reader, one policy for files that cannot be read.

* :func:`load_image`: the one way hcast opens an image file (datasets, ``hcast
  predict``): decoded in full, converted to 8-bit RGB by :func:`to_rgb`; a file that is
  missing, truncated, corrupt or not an image raises :class:`UnreadableImageError`
  naming it.
* :func:`to_rgb`: any PIL image to 8-bit RGB, with 16-bit images *scaled* (65535 -> 255)
  rather than clipped as ``Image.convert("RGB")`` does.
* :class:`SkipUnreadable` and :func:`collate_readable`: the policy of hcast's training
  and evaluation loaders. An unreadable image is left out of its batch with a warning
  that names the file (:class:`UnreadableImageWarning`), as ``hcast predict`` skips such
  a file, instead of ending a run in a DataLoader worker with an error that names no file.
"""
from __future__ import annotations

import os
import warnings
from typing import Any, List, Optional, Sequence, Union

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torch.utils.data import default_collate

__all__ = ["UnreadableImageError", "UnreadableImageWarning", "load_image", "to_rgb", "SkipUnreadable",
           "collate_readable"]

# 16-bit modes Pillow opens PNG / TIFF files in (grey levels 0..65535)
_MODES_16BIT = ("I;16", "I;16L", "I;16B", "I;16N")


class UnreadableImageError(OSError):
    """An image file that cannot be read: missing, truncated, corrupt, or no image at all.

    The message names the file, what went wrong and what to do.
    """


class UnreadableImageWarning(UserWarning):
    """An unreadable image was left out of a batch (the message names the file)."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit ``"RGB"``.

    ``"RGB"`` images are returned as they are; grayscale, palette, RGBA, CMYK ... go
    through ``Image.convert("RGB")`` (grayscale becomes three equal channels). 16-bit
    grayscale (modes ``"I;16*"``, and ``"I"`` from a 16-bit PNG) is scaled to 8 bits
    (``round(v / 257)``, so 65535 is white): Pillow's ``convert`` clips such values to 255,
    which turns almost every pixel white. (Pillow already reads 16-bit RGB PNGs as 8-bit
    ``"RGB"``.)

    Raises:
        ValueError: 32-bit integer or float images (modes ``"I"``, ``"F"``) whose range is
            not known; convert them to 8-bit yourself.
    """
    if image.mode == "RGB":
        return image
    if image.mode in _MODES_16BIT or (image.mode == "I" and image.format == "PNG"):
        values = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8), mode="L")
    elif image.mode in ("I", "F"):
        raise ValueError(f"image mode {image.mode!r} ({'32-bit integer' if image.mode == 'I' else 'float'} pixels) "
                         "has no known white level; convert the image to 8-bit RGB (or 16-bit PNG) first.")
    return image.convert("RGB")


def load_image(path: Union[str, os.PathLike]) -> Image.Image:
    """Read the image file ``path`` as an 8-bit RGB PIL image (:func:`to_rgb`), decoded in full.

    Raises:
        UnreadableImageError: (an ``OSError``) the file is missing, truncated, corrupt, not an
            image Pillow can read, too large for Pillow's decompression-bomb limit, or of a
            pixel type without a known range; the message names the file.
    """
    name = os.fspath(path)
    try:
        with Image.open(name) as image:
            image.load()  # decode now: a truncated file fails here, not in a later transform
            return to_rgb(image)
    except FileNotFoundError:
        raise UnreadableImageError(f"image {name!r}: no such file; check the path.") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UnreadableImageError(
            f"image {name!r} cannot be read: {e or type(e).__name__} (truncated, corrupt, or not an image Pillow "
            "reads); replace or remove the file.") from None


class SkipUnreadable(Dataset):
    """``dataset[i]``, or ``None`` with an :class:`UnreadableImageWarning` naming the file when
    its image cannot be read; :func:`collate_readable` then leaves it out of the batch.

    Every other error propagates. Attributes of ``dataset`` (``targets``, ``taxonomy``...)
    are reachable through the wrapper.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset[index]
        except UnreadableImageError as e:
            warnings.warn(f"{e} It is left out (item {index}).", UnreadableImageWarning, stacklevel=2)
            return None

    def __getattr__(self, name: str) -> Any:
        if name == "dataset" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


def collate_readable(batch: Sequence[Any]) -> Optional[Any]:
    """``torch.utils.data.default_collate`` of the items that are not ``None`` (images
    :class:`SkipUnreadable` could not read); ``None`` when no item is left."""
    items: List[Any] = [item for item in batch if item is not None]
    return default_collate(items) if items else None
