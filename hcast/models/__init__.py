"""hcast models, in timm's style. Importing this package registers them with timm.

* :mod:`hcast.models.cast`: CAST (``cast_*``), the superpixel ViT with graph pooling.
* :mod:`hcast.models.cast_seg`: CAST's segmentation encoder (``cast_seg_*``), per-superpixel
  and per-pixel outputs.
* :mod:`hcast.models.hcast`: H-CAST (``hcast_*``), one classifier per taxonomy level.
* :mod:`hcast.models.hier_vit`: Hier-ViT (``hier_vit_*``), H-CAST's DeiT baseline.
* :mod:`hcast.models.factory`: :func:`from_pretrained`, one loading path through timm.
"""

from hcast.models import cast  # registers cast_* with timm
from hcast.models import cast_seg  # registers cast_seg_* with timm
from hcast.models import hcast  # registers hcast_* with timm
from hcast.models import hier_vit  # registers hier_vit_* with timm
from hcast.models.cast import CAST
from hcast.models.cast_seg import CASTSeg
from hcast.models.factory import convert_checkpoint, from_pretrained
from hcast.models.hcast import HCAST
from hcast.models.hier_vit import HierVisionTransformer

__all__ = [
    "CAST",
    "CASTSeg",
    "HCAST",
    "HierVisionTransformer",
    "cast",
    "cast_seg",
    "convert_checkpoint",
    "from_pretrained",
    "hcast",
    "hier_vit",
]
