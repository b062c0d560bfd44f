"""hcast's cast_seg_small against the authors' own code, on the same weights and photos.

Runs github:twke18/CAST's ``cast_models/cast_seg.py`` and ``cast_seg_deit.py`` unmodified
from a checkout (``python benchmarks/cast_seg_against_authors.py /path/to/CAST``), with two
shims: DGL (not installable here) is replaced by hcast's DGL-equivalent FPS
(``tests/test_farthest_point_sampling.py``), and the old timm names the files import are
mapped onto timm 1.0. Random weights are written in the original layouts (MoCo-wrapped
with the momentum encoder, DeiT ``{'model': ...}``), loaded into hcast through
``timm.create_model(..., pretrained=True, pretrained_cfg_overlay=dict(file=...))`` and into
the authors' model with ``strict=True``; prints the max abs / rel differences.
Not a test: it needs the authors' repository.
"""
import os, sys, tempfile, types
_shim = tempfile.mkdtemp()
os.makedirs(os.path.join(_shim, "dgl"))
open(os.path.join(_shim, "dgl", "__init__.py"), "w").close()
with open(os.path.join(_shim, "dgl", "geometry.py"), "w") as f:
    f.write("from hcast.ops import farthest_point_sampling as farthest_point_sampler\n")
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [sys.argv[1] if len(sys.argv) > 1 else ".", _shim, os.path.join(_here, "..", "tests")]
import torch, timm, torch.nn as nn
import timm.layers
helpers = types.ModuleType("timm.models.layers.helpers"); helpers.to_2tuple = timm.layers.to_2tuple
sys.modules["timm.models.layers.helpers"] = helpers
from timm.models.vision_transformer import VisionTransformer
VisionTransformer.dist_token = None; VisionTransformer.head_dist = None; VisionTransformer.num_tokens = 1
VisionTransformer.pre_logits = staticmethod(lambda x: x)
import cast_models.modules as mods
_Stem = mods.ConvStem
class ConvStem(_Stem):
    def __init__(self, img_size=224, patch_size=8, in_chans=3, embed_dim=768, norm_layer=None, flatten=False, **_):
        super().__init__(img_size, patch_size, in_chans, embed_dim, norm_layer, flatten)
mods.ConvStem = ConvStem
import cast_models.cast_seg as cs  # noqa: E402  (after the shims)
from test_cast_seg_reference import _photos, _randomise
from reference_cast_seg import to_original
import hcast
from hcast.ops import superpixels

x = _photos(128, 128); seg = superpixels(x, num_segments=600, method="seeds")
for stage in ["segmentation", "pretrain"]:
    ours = _randomise(timm.create_model("cast_seg_small", model_stage=stage)).eval()
    sd = to_original(ours, "moco")
    if stage == "segmentation":
        theirs = cs.cast_small(num_classes=0)
    else:
        theirs = cs.cast_small_pretrain(num_classes=4096)
        d = theirs.head.weight.shape[1]; del theirs.head
        theirs.head = nn.Sequential(*[m for m in __import__("reference_cast_seg").moco_mlp(d)])
    path = os.path.join(_shim, f"moco_{stage}.pth.tar")
    torch.save({"state_dict": {**{"module.base_encoder." + k: v for k, v in sd.items()},
                               **{"module.momentum_encoder." + k: v + 1 for k, v in sd.items()}}}, path)
    kw = dict(num_classes=0) if stage == "segmentation" else dict(model_stage="pretrain")
    ours = timm.create_model("cast_seg_small", pretrained=True, pretrained_cfg_overlay=dict(file=path), **kw).eval()
    missing, unexpected = theirs.load_state_dict(sd, strict=True)
    print(stage, "missing", missing, "unexpected", unexpected)
    theirs.eval()
    y = seg if stage == "segmentation" else superpixels(x, num_segments=196, method="seeds")
    with torch.no_grad():
        a = theirs(x, y)
        b = ours.forward_superpixels(x, y) if stage == "segmentation" else ours(x, y)
    print(stage, tuple(a.shape), "max abs", float((a - b).abs().max()), "max rel", float((a - b).abs().max() / a.abs().max()))

import cast_models.cast_seg_deit as csd
src = _randomise(timm.create_model("cast_seg_small.deit_in1k"), seed=3).eval()
sd = to_original(src, "deit")
torch.save({"model": sd}, os.path.join(_shim, "deit.pth"))
ours = timm.create_model("cast_seg_small.deit_in1k", pretrained=True, pretrained_cfg_overlay=dict(file=os.path.join(_shim, "deit.pth"))).eval()
theirs = csd.cast_small(num_classes=0)
print("deit", theirs.load_state_dict(sd, strict=False))
theirs.eval()
with torch.no_grad():
    a = theirs(x, seg); b = ours.forward_features(x, seg)
print("deit", tuple(a.shape), "max abs", float((a - b).abs().max()), "max rel", float((a - b).abs().max() / a.abs().max()))
