"""hcast's CAST encoders in segmentation_models_pytorch: every decoder that can read CAST's
maps trains (loss falls over a few steps on GarmentScenes, the real-input set); the ones
that cannot are refused with a message saying why."""
from __future__ import annotations

import pytest
import torch

smp = pytest.importorskip("segmentation_models_pytorch")
import hcast.models.smp_encoder  # noqa: E402,F401  (registers hcast-cast_seg_*)
from hcast.data.garment_scenes import GarmentScenes  # noqa: E402

WORKING = {
    "Unet": dict(encoder_depth=3, decoder_channels=(32, 16, 8)),
    "UnetPlusPlus": dict(encoder_depth=3, decoder_channels=(32, 16, 8)),
    "MAnet": dict(encoder_depth=3, decoder_channels=(32, 16, 8)),
    "Linknet": dict(encoder_depth=3),
    "PSPNet": dict(encoder_depth=3, decoder_channels=32),
    "DeepLabV3": dict(encoder_depth=3, decoder_channels=32),
    "DeepLabV3Plus": dict(encoder_depth=5, encoder_output_stride=8, decoder_channels=32),
    "UPerNet": dict(encoder_depth=3, decoder_channels=32),
    "Segformer": dict(encoder_depth=3, decoder_segmentation_channels=32),
}


@pytest.fixture(scope="module")
def batch():
    data = GarmentScenes("train", 2, 32, seed=3)
    return data.tensors()


@pytest.mark.parametrize("name", sorted(WORKING))
def test_decoder_trains_on_cast_maps(name, batch):
    torch.manual_seed(0)
    images, labels = batch
    model = getattr(smp, name)("hcast-cast_seg_tiny", encoder_weights=None, classes=11, **WORKING[name])
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert model(images).shape == (2, 11, 32, 32)
    assert losses[-1] < 0.9 * losses[0], losses


def test_decoders_needing_coarser_maps_are_refused():
    with pytest.raises(ValueError, match="nothing coarser than stride 8"):
        smp.PAN("hcast-cast_seg_tiny", encoder_weights=None, classes=11)
    with pytest.raises(ValueError, match="nothing coarser than stride 8"):
        smp.FPN("hcast-cast_seg_tiny", encoder_weights=None, classes=11)  # reads strides 4..32
    with pytest.raises(ValueError, match="RGB"):
        smp.Unet("hcast-cast_seg_tiny", encoder_weights=None, encoder_depth=3, decoder_channels=(32, 16, 8),
                 in_channels=1)
