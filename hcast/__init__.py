"""hcast: CAST and H-CAST for timm users.

``import hcast`` registers every hcast model with timm, so that
``timm.create_model("cast_small.deit_in1k", pretrained=True)`` works.
"""
__version__ = "0.1.0"

from hcast import ops  # noqa: F401
from hcast import weights  # noqa: F401
from hcast import models  # noqa: F401  (registers the models with timm)
from hcast import hierarchy  # noqa: F401
from hcast import metric_learning  # noqa: F401
from hcast.models.factory import from_pretrained  # noqa: F401,E402
