"""hcast: CAST and H-CAST for timm users.

``import hcast`` registers every hcast model with timm, so that
``timm.create_model("cast_small.deit_in1k", pretrained=True)`` works.

Packages (imports go downwards: cli -> train -> data / models -> weights / hierarchy / ops;
docs/architecture.md):

* :mod:`hcast.models`: CAST, H-CAST and Hier-ViT in timm's registry, :func:`from_pretrained`.
* :mod:`hcast.weights`: everything between a file and a model (safe loading, the original
  checkpoint formats, Google Drive, the builder, model folders).
* :mod:`hcast.ops`: superpixels, superpixel pooling, farthest point sampling, hierarchical
  segmentation.
* :mod:`hcast.hierarchy`: taxonomies, hierarchical losses, metrics, decoding, mixup.
* :mod:`hcast.metric_learning`: HIER and Recall@K.
* :mod:`hcast.data`: the papers' benchmarks, Fashion-MNIST, image folders, transforms.
* :func:`optimize_for_inference` (imported on first use, :mod:`hcast.inference`): a copy of a
  model on the fastest inference path for the CPU / GPU at hand.
* :mod:`hcast.train` (imported on demand: ``import hcast.train``): fine-tuning as a library,
  ``hcast.train.finetune`` with a ``FinetuneConfig`` and the authors' recipes.
"""
__version__ = "0.1.0"

from hcast import ops
from hcast import weights
from hcast import models  # registers the models with timm
from hcast import hierarchy
from hcast import metric_learning
from hcast import data
from hcast.models.factory import from_pretrained

__all__ = ["__version__", "data", "from_pretrained", "hierarchy", "metric_learning", "models",
           "optimize_for_inference", "ops", "weights"]


def __getattr__(name: str):
    # Imported on first use: the inference module and its backends stay out of `import hcast`.
    if name == "optimize_for_inference":
        from hcast.inference import optimize_for_inference

        return optimize_for_inference
    raise AttributeError(f"module 'hcast' has no attribute {name!r}")
