"""`hcast segment` and `hcast evaluate` on segmentation data, with a saved segmenter."""
from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from skimage import data as skdata

import hcast  # noqa: F401
from hcast.cli import main
from hcast.data.segmentation import VOC_CLASSES
from hcast.models.segmentation_heads import CASTSegmenter
from hcast.train.segmentation import load_segmenter, save_segmenter
from segmentation_fixtures import make_voc


def _segmenter(path, num_classes, names):
    torch.manual_seed(0)
    args = dict(embed_dim=96, depths=(1, 1, 1, 1), num_clusters=(16, 8, 4, 2))
    model = CASTSegmenter(timm.create_model("cast_seg_tiny", num_classes=0, **args), num_classes).eval()
    save_segmenter(model, path, "cast_seg_tiny", args, names)
    return model


def test_save_load_round_trip(tmp_path):
    model = _segmenter(tmp_path / "seg", 3, ["a", "b", "c"])
    loaded, names = load_segmenter(str(tmp_path / "seg"))
    x = torch.randn(1, 3, 40, 48)
    segments = torch.arange(40 * 48).view(1, 40, 48) // 60
    assert names == ["a", "b", "c"]
    torch.testing.assert_close(loaded(x, segments), model(x, segments))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"architecture": "cast_small"}')
    with pytest.raises(ValueError, match="not a segmenter saved by"):
        load_segmenter(str(tmp_path / "other"))


def test_segment_writes_labels_and_picture(tmp_path, capsys):
    _segmenter(tmp_path / "seg", 3, ["background", "cat", "cup"])
    image = tmp_path / "chelsea.png"
    Image.fromarray(skdata.chelsea()[:60, :80]).save(image)
    assert main(["segment", str(tmp_path / "seg"), str(image), "--out", str(tmp_path / "out")]) == 0
    labels = np.array(Image.open(tmp_path / "out" / "chelsea_labels.png"))
    assert labels.shape == (60, 80) and labels.max() < 3
    assert (tmp_path / "out" / "chelsea_segmentation.png").stat().st_size > 1000
    assert main(["segment", str(tmp_path / "seg"), str(tmp_path / "missing.png")]) == 2
    assert "missing.png" in capsys.readouterr().err


def test_evaluate_on_voc_layout(tmp_path, capsys):
    make_voc(tmp_path / "data")
    _segmenter(tmp_path / "voc", 21, list(VOC_CLASSES))
    assert main(["evaluate", str(tmp_path / "voc"), "voc2012", "--data-root", str(tmp_path / "data"),
                 "--split", "val", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "person" in out and "mIoU (spml)" in out and "mIoU: " in out
    _segmenter(tmp_path / "three", 3, ["a", "b", "c"])
    assert main(["evaluate", str(tmp_path / "three"), "voc2012", "--data-root", str(tmp_path / "data")]) == 2
    assert "21" in capsys.readouterr().err


def test_sliding_window_averages_overlaps():
    from hcast.train.segmentation import sliding_window_logits

    class Position(torch.nn.Module):  # logits = the window's left offset, so overlaps show
        calls = []

        def forward(self, images, segments=None):
            self.calls.append(tuple(images.shape[-2:]))
            return torch.full((1, 2, *images.shape[-2:]), float(len(self.calls)))

    model = Position()
    out = sliding_window_logits(model, torch.zeros(3, 10, 16), crop=10, stride=4)
    # windows at columns 0, 4 and 6 (flush right): values 1, 2, 3
    assert model.calls == [(10, 10)] * 3
    # columns 0-3: 1; 4-5: (1 + 2) / 2; 6-9: (1 + 2 + 3) / 3; 10-13: (2 + 3) / 2; 14-15: 3
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([1., 1, 1, 1, 1.5, 1.5, 2, 2, 2, 2, 2.5, 2.5, 2.5, 2.5, 3, 3]))
    single = sliding_window_logits(model, torch.zeros(1, 3, 8, 8), crop=10, stride=4)
    assert single.shape == (1, 2, 8, 8) and model.calls[-1] == (8, 8)


def test_finetune_the_voc_recipe_on_the_native_layout(tmp_path, capsys):
    voc, _ = make_voc(tmp_path / "data")
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("2007_000032\n")
    out = tmp_path / "voc"
    assert main(["finetune", "--recipe", "cast-seg-voc", "--data", "voc2012", "--data-root", str(tmp_path / "data"),
                 "--model", "cast_seg_tiny", "--no-pretrained", "--input-size", "32", "--num-segments", "16",
                 "--steps", "2", "--batch-size", "1", "--device", "cpu", "--workers", "0", "--threads", "1",
                 "--no-progress", "--model-kwargs", "embed_dim=32", "num_heads=2", "depths=[1,1,1,1]",
                 "num_clusters=[8,4,2,2]", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "segmentation, 21 classes" in printed and "2 updates" in printed and "mIoU" in printed
    model, names = load_segmenter(str(out))
    assert names == list(VOC_CLASSES) and model.head_type == "softmax"
    # the head trains at 10x the encoder's learning rate (SPML), both on the poly decay
    state = torch.load(out / "checkpoint-latest.pth", weights_only=False)
    assert sorted({g["lr_scale"] for g in state["optimizer"]["param_groups"]}) == [1.0, 10.0]
    assert main(["evaluate", str(out), "voc2012", "--data-root", str(tmp_path / "data"), "--split", "val",
                 "--no-progress"]) == 0
    assert "mIoU (spml)" in capsys.readouterr().out
