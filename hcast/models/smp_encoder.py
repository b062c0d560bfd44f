"""CAST segmentation encoders for segmentation_models_pytorch (smp).

``import hcast.models.smp_encoder`` registers ``hcast-cast_seg_tiny``, ``hcast-cast_seg_small``
and ``hcast-cast_seg_base`` in ``smp.encoders.encoders``; then::

    import segmentation_models_pytorch as smp
    import hcast.models.smp_encoder  # noqa: F401
    model = smp.Unet("hcast-cast_seg_small", encoder_depth=3, decoder_channels=(128, 64, 32),
                     encoder_weights=None, classes=21)

What CAST can give a decoder: its tokens are superpixels and regions, painted onto the
stem's stride-8 grid. smp's encoders return ``[image, stride 2, 4, 8, 16, 32][:depth + 1]``;
:class:`CASTEncoder` returns the image, the conv stem's stride-2 and stride-4 activations,
and at stride 8 the fused superpixel features (:meth:`CASTSeg.forward_superpixels`,
painted on the grid). Deeper levels exist only as smp's dilated-encoder convention has
them: with ``output_stride=8`` the stride-16 and stride-32 slots are stride-8 maps (the
painted stage-3 and stage-4 region tokens). So the decoders that work are those that
read at most stride 8 (``encoder_depth=3``: Unet, UnetPlusPlus, MAnet, Linknet, PSPNet,
DeepLabV3) or accept a dilated stride-8 encoder (DeepLabV3, DeepLabV3Plus with
``encoder_output_stride=8``). FPN, PAN, UPerNet and Segformer need true stride-16/32
maps (2x top-down merges, PAN's output stride 16/32 only), which CAST does not compute;
DPT needs a plain ViT through timm's universal encoder. docs/segmentation.md lists what
was tested.

CAST needs superpixels and smp passes only images: the encoder computes them as the
model's ``pretrained_cfg`` says (SEEDS; :meth:`CASTSeg.superpixels`). Weights: smp's
``encoder_weights`` names hub files of smp's own; load CAST weights into
``model.encoder.cast`` instead (e.g. ``model.encoder.cast.load_state_dict(
timm.create_model("cast_seg_small", pretrained=True).state_dict())``).
"""
from __future__ import annotations

from typing import List

import timm
import torch
import torch.nn as nn

from hcast.models import cast_seg  # noqa: F401  (registers cast_seg_*)
from hcast.ops.superpixel_pool import resize_segments

__all__ = ["CASTEncoder", "register_smp_encoders"]


class CASTEncoder(nn.Module):
    """smp encoder over :class:`hcast.models.cast_seg.CASTSeg`.

    Args:
        model_name: a ``cast_seg_*`` name.
        depth: smp's encoder depth (1-5); above 3 needs ``output_stride=8``.
        output_stride: 8 for depth > 3 (dilated convention); CAST has no coarser maps.
        in_channels: 3.

    ``forward(images (B, 3, H, W))`` -> list of ``depth + 1`` maps (image, stride 2, stride
    4, stride 8, ...); ``out_channels`` gives their widths.
    """

    def __init__(self, model_name: str = "cast_seg_small", depth: int = 3, output_stride: int = 32,
                 in_channels: int = 3, **model_kwargs) -> None:
        super().__init__()
        if not 1 <= depth <= 5:
            raise ValueError(f"depth must be in [1, 5], got {depth}.")
        if depth > 3 and output_stride != 8:
            raise ValueError(f"CAST computes nothing coarser than stride 8: encoder_depth={depth} needs "
                             f"encoder_output_stride=8 (smp's dilated convention: DeepLabV3 / DeepLabV3Plus), "
                             f"or use encoder_depth=3 (Unet, UnetPlusPlus, MAnet, Linknet, PSPNet, DeepLabV3); "
                             f"got output_stride={output_stride}.")
        if in_channels != 3:
            raise ValueError(f"CAST encoders take RGB images (in_channels=3), got {in_channels}.")
        self.cast = timm.create_model(model_name, num_classes=0, **model_kwargs)
        dim = self.cast.embed_dim
        self._depth, self._output_stride, self._in_channels = depth, output_stride, in_channels
        self._out_channels = [in_channels, dim // 8, dim // 4, dim, dim, dim][:depth + 1]

    @property
    def out_channels(self) -> List[int]:
        return self._out_channels

    @property
    def output_stride(self) -> int:
        return min(self._output_stride, 2 ** self._depth)

    def set_in_channels(self, in_channels: int, pretrained: bool = True) -> None:
        """smp's hook for other input widths: CAST (and its superpixels) take RGB only."""
        if in_channels != 3:
            raise ValueError(f"CAST encoders take RGB images (in_channels=3), got {in_channels}.")

    def make_dilated(self, output_stride: int) -> None:
        if output_stride not in (8, 32) and self._depth > 3:
            raise ValueError(f"CAST encoders have stride-8 maps only; output_stride must be 8, got {output_stride}.")

    def forward(self, images: torch.Tensor) -> List[torch.Tensor]:
        features = [images]
        if self._depth == 0:
            return features
        stem = self.cast.patch_embed.proj
        x = stem[0:3](images.contiguous(memory_format=torch.channels_last))
        features.append(x)  # stride 2
        if self._depth >= 2:
            features.append(stem[3:6](x))  # stride 4
        if self._depth >= 3:
            out = self.cast.forward_stages(images)
            fused = self.cast.fusion(out["stage_tokens"], out["class_tokens"], out["logits"])[:, 1:]
            grid = (-(-images.shape[-2] // 8), -(-images.shape[-1] // 8))
            grid_ids = resize_segments(out["pooled_segments"], grid)
            from hcast.models.cast import paint_tokens

            features.append(paint_tokens(fused, grid_ids, [], "hard"))
            for stage in (2, 3)[:self._depth - 3]:
                features.append(paint_tokens(out["stage_tokens"][stage], grid_ids, out["logits"][:stage], "soft"))
        return features


def register_smp_encoders() -> List[str]:
    """Add ``hcast-<cast_seg name>`` entries to smp's encoder registry; returns the names."""
    from segmentation_models_pytorch.encoders import encoders

    names = []
    for model_name in ("cast_seg_tiny", "cast_seg_small", "cast_seg_base"):
        name = f"hcast-{model_name}"
        encoders[name] = dict(encoder=CASTEncoder, params=dict(model_name=model_name), pretrained_settings={})
        names.append(name)
    return names


SMP_ENCODERS = register_smp_encoders()
