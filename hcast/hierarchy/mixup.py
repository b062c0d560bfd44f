"""Mixup / CutMix for hierarchical targets (and superpixel ids).

One mix (the same partner, ``i <-> N-1-i`` as timm pairs a batch with its flip,
and the same lambda) is applied to the images, to the superpixel ids when they
are given, and to the targets of *every* level, each smoothed by
``label_smoothing`` as timm's ``mixup_target`` does. This is what the H-CAST
authors' ``deit/mixup_hier.py`` (github:ngocquanai/HiOT at b1a222b) does for the
targets; the sampling of lambda, of mixup vs. cutmix and of the cutmix box is
timm's own (:class:`timm.data.Mixup`, which this class extends).

Superpixel ids. The H-CAST code computes superpixels in the data loader on the
*unmixed* image and never mixes them, so after CutMix the pasted box is pooled
with the receiving image's superpixels. Here, with ``mix_segments=True`` (the
default), CutMix pastes the partner's superpixel ids into the same box, offset
by the receiver's largest id + 1 so that no id is shared between the two
images, and the ids of each image are then renumbered to ``0 .. S'-1`` (S' <=
2 * S), keeping every id's pixels together; superpixels cut by the box edge
become two segments. Mixup (blending) keeps the receiver's superpixels (a
blended image has no better ones). ``mix_segments=False`` reproduces the
authors' behaviour: segments are returned unchanged.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Optional, Union

import numpy as np
import torch
from timm.data.mixup import Mixup, cutmix_bbox_and_lam, mixup_target

from hcast import _validation as V

__all__ = ["HierarchicalMixup", "renumber_segments"]


def renumber_segments(segments: torch.Tensor) -> torch.Tensor:
    """Renumber each image's superpixel ids to ``0 .. S_b - 1`` keeping their order.

    Args:
        segments: (B, H, W) integer superpixel ids.

    Returns:
        (B, H, W) int64 ids; pixels that shared an id still do, and the order of
        ids is kept (id ``a < b`` before gives ``a' < b'``).
    """
    out = torch.empty_like(segments, dtype=torch.int64)
    for b in range(segments.shape[0]):
        _, inverse = torch.unique(segments[b], sorted=True, return_inverse=True)
        out[b] = inverse
    return out


class HierarchicalMixup(Mixup):
    """Mixup/CutMix of images, superpixel ids and the targets of every level.

    Args:
        mixup_alpha: Beta(alpha, alpha) parameter of mixup; mixup is active if > 0.
            Default 0.8 as DeiT and H-CAST train.
        cutmix_alpha: Beta parameter of cutmix; active if > 0. Default 1.0.
        cutmix_minmax: min/max box ratio; overrides ``cutmix_alpha`` (timm).
        prob: probability of mixing a batch (or element).
        switch_prob: probability of cutmix instead of mixup when both are active.
        mode: ``"batch"``, ``"pair"`` or ``"elem"`` (timm's modes).
        correct_lam: correct lambda for the box area clipped by the border.
        label_smoothing: smoothing applied to every level's one-hot targets.
        level_classes: number of classes per level, finest first (e.g.
            ``taxonomy.num_classes``). Required.
        mix_segments: also cut-mix superpixel ids (see the module docstring);
            ``False`` returns them unchanged, as the H-CAST code does.

    Call:
        ``mixup(images, targets)`` -> ``(images, level_targets)``;
        ``mixup(images, targets, segments)`` -> ``(images, segments, level_targets)``.

        * images: (N, C, H, W) float, mixed in place (as timm) and returned.
        * targets: one (N,) int64 label tensor per level, finest first.
        * segments: optional (N, H, W) int64 superpixel ids at the images' size.
        * level_targets: list of (N, C_l) float target distributions (rows sum to 1),
          to pass to :class:`~hcast.hierarchy.losses.HCASTLoss`.

    Raises:
        TypeError: images that are not a float tensor, targets that are not integer
            tensors (one per level), segments that are not an integer tensor.
        ValueError: an odd batch size, a level count that does not match
            ``level_classes``, labels outside ``[0, C_l)``, or images or segments of the
            wrong rank, or segments whose shape does not match the images.
    """

    def __init__(
        self,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        cutmix_minmax: Optional[Sequence[float]] = None,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        mode: str = "batch",
        correct_lam: bool = True,
        label_smoothing: float = 0.1,
        level_classes: Sequence[int] = (),
        mix_segments: bool = True,
    ) -> None:
        level_classes = tuple(int(c) for c in level_classes)
        if not level_classes or any(c < 1 for c in level_classes):
            raise ValueError(
                f"level_classes must give the class count of every level, finest first (e.g. "
                f"taxonomy.num_classes), got {level_classes}."
            )
        V.check_choice("mode", mode, ("batch", "pair", "elem"))
        if cutmix_minmax is not None and len(cutmix_minmax) != 2:
            raise ValueError(f"cutmix_minmax must be (min, max), got {cutmix_minmax!r}.")
        if mixup_alpha <= 0 and cutmix_alpha <= 0 and cutmix_minmax is None:
            raise ValueError("enable mixup_alpha > 0, cutmix_alpha > 0 or cutmix_minmax; all are off.")
        super().__init__(
            mixup_alpha=mixup_alpha,
            cutmix_alpha=cutmix_alpha,
            cutmix_minmax=cutmix_minmax,
            prob=prob,
            switch_prob=switch_prob,
            mode=mode,
            correct_lam=correct_lam,
            label_smoothing=label_smoothing,
            num_classes=level_classes[0],
        )
        self.level_classes = level_classes
        self.mix_segments = bool(mix_segments)

    # The three mixers mirror timm's _mix_batch/_mix_elem/_mix_pair, with the superpixel ids cut
    # with the same box.
    def _mix_batch_seg(self, x: torch.Tensor, seg: Optional[torch.Tensor], pasted: list[bool]) -> float:
        lam, use_cutmix = self._params_per_batch()
        if lam == 1.0:
            return 1.0
        if use_cutmix:
            (yl, yh, xl, xh), lam = cutmix_bbox_and_lam(
                x.shape, lam, ratio_minmax=self.cutmix_minmax, correct_lam=self.correct_lam
            )
            x[:, :, yl:yh, xl:xh] = x.flip(0)[:, :, yl:yh, xl:xh]
            if seg is not None:
                src = seg.flip(0).clone()
                offset = seg.flatten(1).amax(1).view(-1, 1, 1) + 1
                seg[:, yl:yh, xl:xh] = src[:, yl:yh, xl:xh] + offset
                pasted[:] = [True] * len(pasted)
        else:
            x_flipped = x.flip(0).mul_(1.0 - lam)
            x.mul_(lam).add_(x_flipped)
        return lam

    def _mix_elem_seg(
        self, x: torch.Tensor, seg: Optional[torch.Tensor], pasted: list[bool], pair: bool
    ) -> torch.Tensor:
        batch_size = len(x)
        n = batch_size // 2 if pair else batch_size
        lam_batch, use_cutmix = self._params_per_elem(n)
        x_orig = x.clone()
        seg_orig = seg.clone() if seg is not None else None
        for i in range(n):
            j = batch_size - i - 1
            lam = lam_batch[i]
            if lam == 1.0:
                continue
            if use_cutmix[i]:
                (yl, yh, xl, xh), lam = cutmix_bbox_and_lam(
                    x[i].shape, lam, ratio_minmax=self.cutmix_minmax, correct_lam=self.correct_lam
                )
                x[i][:, yl:yh, xl:xh] = x_orig[j][:, yl:yh, xl:xh]
                if seg is not None:
                    seg[i][yl:yh, xl:xh] = seg_orig[j][yl:yh, xl:xh] + seg_orig[i].max() + 1
                    pasted[i] = True
                if pair:
                    x[j][:, yl:yh, xl:xh] = x_orig[i][:, yl:yh, xl:xh]
                    if seg is not None:
                        seg[j][yl:yh, xl:xh] = seg_orig[i][yl:yh, xl:xh] + seg_orig[j].max() + 1
                        pasted[j] = True
                lam_batch[i] = lam
            else:
                x[i] = x_orig[i] * lam + x_orig[j] * (1 - lam)
                if pair:
                    x[j] = x_orig[j] * lam + x_orig[i] * (1 - lam)
        if pair:
            lam_batch = np.concatenate((lam_batch, lam_batch[::-1]))
        return torch.tensor(lam_batch, device=x.device, dtype=x.dtype).unsqueeze(1)

    def _check(self, x: torch.Tensor, targets: Sequence[torch.Tensor], segments: Optional[torch.Tensor]) -> list:
        V.check_tensor("images", x)
        V.check_rank("images", x, 4, "(N, C, H, W)")
        V.check_floating("images", x)
        if len(x) % 2 != 0:
            raise ValueError(f"the batch size must be even for mixup/cutmix (as timm's Mixup), got {len(x)}; "
                             f"use drop_last=True in the DataLoader.")
        if torch.is_tensor(targets) and len(self.level_classes) == 1:
            targets = [targets]
        targets = V.as_levels(targets, "targets")
        V.check_level_count("targets", len(targets), len(self.level_classes), of=f"level_classes={self.level_classes}")
        for l, (t, c) in enumerate(zip(targets, self.level_classes)):
            V.check_labels(f"targets[{l}]", t, len(x), "images", num_classes=c, where=f" for level {l}")
        if segments is not None:
            V.check_tensor("segments", segments)
            V.check_rank("segments", segments, 3, "(N, H, W)")
            V.check_integer("segments", segments)
            if segments.shape[0] != x.shape[0] or segments.shape[-2:] != x.shape[-2:]:
                raise ValueError(
                    f"segments has shape {tuple(segments.shape)} but images {tuple(x.shape)}; the superpixel "
                    f"ids must have the images' batch size and (H, W)."
                )
        return targets

    def __call__(
        self,
        x: torch.Tensor,
        target: Sequence[torch.Tensor],
        segments: Optional[torch.Tensor] = None,
    ) -> Union[tuple[torch.Tensor, list[torch.Tensor]], tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]]:
        targets = self._check(x, target, segments)
        seg = None
        if segments is not None and self.mix_segments:
            seg = segments.long().clone()
        pasted = [False] * len(x)
        if self.mode == "batch":
            lam = self._mix_batch_seg(x, seg, pasted)
        else:
            lam = self._mix_elem_seg(x, seg, pasted, pair=self.mode == "pair")
        level_targets = [
            mixup_target(t, c, lam, self.label_smoothing).to(x.dtype) if x.is_floating_point()
            else mixup_target(t, c, lam, self.label_smoothing)
            for t, c in zip(targets, self.level_classes)
        ]
        if segments is None:
            return x, level_targets
        out_seg = segments
        if seg is not None:
            # Renumber only the images that received pasted ids; the others keep their ids.
            for b in (i for i, p in enumerate(pasted) if p):
                seg[b] = renumber_segments(seg[b : b + 1])[0]
            out_seg = seg
        return x, out_seg, level_targets
