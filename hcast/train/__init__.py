"""Fine-tuning as a library: the API ``hcast finetune`` is a thin layer over.

* :func:`finetune` (:mod:`hcast.train.finetune`): model + datasets + taxonomy + a
  :class:`FinetuneConfig` -> a trained model, its best epoch, the log; DDP under torchrun.
* :class:`FinetuneConfig` (:mod:`hcast.train.config`) and the named recipes
  (:mod:`hcast.train.recipes`: :func:`get_recipe`, :data:`RECIPES`): the H-CAST authors'
  settings per benchmark, Hier-ViT's, and the main job's.
* :func:`create_train_transform` / :func:`create_val_transform`
  (:mod:`hcast.train.transforms`): timm's data pipeline configured by a config.
* Pieces for a loop of your own (:mod:`hcast.train.loop`, :mod:`hcast.train.evaluation`,
  :mod:`hcast.train.distributed`): :func:`train_one_epoch`, :func:`evaluate`,
  :class:`TimeBudget`, :func:`init_distributed`, :class:`ShardSampler`, ...
* :func:`predict_paths` (:mod:`hcast.train.predict`): the best taxonomy paths of a batch.
* Outputs (:mod:`hcast.train.outputs`): :func:`save_model_folder`, :func:`write_log`,
  :func:`plot_learning_curves`.
"""
from hcast.train.config import FinetuneConfig
from hcast.train.distributed import (
    DistributedContext,
    ShardSampler,
    destroy_distributed,
    init_distributed,
    resolve_training_precision,
    resolve_device,
    unwrap_model,
)
from hcast.train.loop import AttentionBackendChooser, TimeBudget, level_targets, train_one_epoch
from hcast.train.evaluation import evaluate, format_metrics_table
from hcast.train.outputs import plot_learning_curves, save_model_folder, write_log
from hcast.train.transforms import create_train_transform, create_val_transform
from hcast.train.recipes import RECIPES, Recipe, get_recipe, list_recipes
from hcast.train.predict import predict_paths
from hcast.train.finetune import (FinetuneResult, TransformedDataset, check_resume, create_optimizer_and_scheduler,
                                  finetune, uses_superpixels)
# checkpoints and JSON for loops of your own (hcast.weights.folder: atomic writes, safe loading)
from hcast._io import write_json
from hcast.weights.folder import load_checkpoint, save_checkpoint

__all__ = [
    "AttentionBackendChooser",
    "DistributedContext",
    "FinetuneConfig",
    "FinetuneResult",
    "RECIPES",
    "Recipe",
    "ShardSampler",
    "TimeBudget",
    "TransformedDataset",
    "check_resume",
    "create_optimizer_and_scheduler",
    "create_train_transform",
    "create_val_transform",
    "destroy_distributed",
    "evaluate",
    "finetune",
    "format_metrics_table",
    "get_recipe",
    "init_distributed",
    "level_targets",
    "list_recipes",
    "load_checkpoint",
    "plot_learning_curves",
    "predict_paths",
    "resolve_training_precision",
    "resolve_device",
    "save_checkpoint",
    "save_model_folder",
    "train_one_epoch",
    "unwrap_model",
    "uses_superpixels",
    "write_json",
    "write_log",
]
