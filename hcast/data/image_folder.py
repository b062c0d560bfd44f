"""Your own images: one sub-folder per fine class, ordered by a taxonomy.

The layout is torchvision's ``ImageFolder`` (``ROOT/<fine class name>/<image>``);
what hcast adds is the class order. Label ``i`` is the fine class ``i`` of the
:class:`~hcast.hierarchy.Taxonomy` (``taxonomy.names[0][i]``), not the i-th folder in
alphabetical order, so the labels line up with the taxonomy's parent maps and with a
model's heads. Every fine class of the taxonomy needs a folder; folders the taxonomy
does not know are an error (a typo in a folder name would otherwise drop a class).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
from torchvision.datasets import ImageFolder

from hcast.data.images import load_image
from hcast.hierarchy import Taxonomy

__all__ = ["HierarchicalImageFolder"]


class HierarchicalImageFolder(ImageFolder):
    """``ImageFolder`` whose labels are the taxonomy's fine class ids.

    Args:
        root: the folder holding one sub-folder per fine class.
        taxonomy: the class tree; its finest level must carry names
            (``taxonomy.names[0]``) equal to the sub-folder names.
        transform: applied to each RGB PIL image (read by :func:`hcast.data.images.load_image`).
        target_transform: applied to the fine label (an ``int``).

    ``dataset[i]`` returns ``(transform(image), fine_label)``; ``dataset.targets`` is the
    list of fine labels. Per-level labels follow from ``taxonomy.paths()[fine_label]``.

    Raises:
        ValueError: when the taxonomy has no fine class names, when a fine class has no
            folder, or when a folder names no fine class of the taxonomy.
        FileNotFoundError: when ``root`` is not a folder.
        hcast.data.images.UnreadableImageError: from ``dataset[i]``, naming an image file that
            cannot be read.
    """

    def __init__(
        self,
        root: Union[str, Path],
        taxonomy: Taxonomy,
        transform: Optional[Callable] = None,
        target_transform: Optional[Callable] = None,
    ) -> None:
        if not Path(root).is_dir():
            raise FileNotFoundError(f"root: expected a folder of class sub-folders, got {str(root)!r} (not a folder).")
        fine_names = taxonomy.names[0]
        if fine_names is None:
            raise ValueError(
                "taxonomy: the finest level has no class names, so image folders cannot be matched to "
                "class ids; build the taxonomy with names (e.g. Taxonomy.from_named_paths) and save it "
                "with Taxonomy.save."
            )
        self.taxonomy = taxonomy
        self._fine_names = tuple(fine_names)
        # hcast's reader: 16-bit images scaled, an unreadable file named (hcast.data.images)
        super().__init__(str(root), transform=transform, target_transform=target_transform, loader=load_image)

    def find_classes(self, directory: Union[str, Path]) -> Tuple[List[str], Dict[str, int]]:
        """Map sub-folder names to the taxonomy's fine class ids (not alphabetical order)."""
        folders = sorted(e.name for e in Path(directory).iterdir() if e.is_dir() and not e.name.startswith("."))
        missing = [n for n in self._fine_names if n not in folders]
        unknown = [n for n in folders if n not in self._fine_names]
        if missing or unknown:
            parts = []
            if missing:
                parts.append(f"fine classes without a folder: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
            if unknown:
                parts.append(f"folders the taxonomy does not name: {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
            raise ValueError(
                f"root {str(directory)!r} does not match the taxonomy's fine classes ({'; '.join(parts)}); "
                "rename the folders or the taxonomy's fine class names so they are equal."
            )
        return list(self._fine_names), {n: i for i, n in enumerate(self._fine_names)}

    @property
    def level_targets(self) -> torch.Tensor:
        """(N, num_levels) int64 labels of every image, finest first."""
        return self.taxonomy.paths()[torch.as_tensor(self.targets, dtype=torch.int64)]
