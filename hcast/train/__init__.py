"""Fine-tuning as a library: the API ``hcast finetune`` is a thin layer over.

* :func:`finetune` (:mod:`hcast.train.finetune`): model + datasets + taxonomy (or a task)
  + a :class:`FinetuneConfig` -> a trained model, its best epoch, the log; DDP under
  torchrun. Its steps (:func:`prepare_data`, :func:`prepare_training`,
  :func:`resume_training`, :func:`train_epochs`, :class:`RunOutputs`) are public.
* Tasks (:mod:`hcast.train.tasks`): :class:`ClassificationTask` (H-CAST on a taxonomy) and
  :class:`SegmentationTask` (CAST segmenters: pixel cross-entropy, mIoU); the optimizer and
  schedules (:mod:`hcast.train.optim`).
* :class:`FinetuneConfig` (:mod:`hcast.train.config`) and the named recipes
  (:mod:`hcast.train.recipes`: :func:`get_recipe`, :data:`RECIPES`): the H-CAST authors'
  settings per benchmark, Hier-ViT's, and the main job's.
* :func:`create_train_transform` / :func:`create_val_transform`
  (:mod:`hcast.train.transforms`): timm's data pipeline configured by a config.
* Pieces for a loop of your own (:mod:`hcast.train.loop`, :mod:`hcast.train.evaluation`,
  :mod:`hcast.train.batches`, :mod:`hcast.train.distributed`): :func:`train_one_epoch`,
  :func:`train_steps`, :func:`unpack_batch`, :func:`evaluate`,
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
    resolve_device,
)
from hcast.train.batches import progress_bar, unpack_batch
from hcast.train.loop import AttentionBackendChooser, TimeBudget, level_logits, level_targets, train_one_epoch, train_steps
from hcast.train.evaluation import evaluate, format_metrics_table
from hcast.train.outputs import plot_learning_curves, save_model_folder, write_log
from hcast.train.transforms import create_train_transform, create_val_transform
from hcast.train.recipes import RECIPES, Recipe, get_recipe, list_recipes
from hcast.train.predict import predict_paths
from hcast.train.optim import PolyLR, create_optimizer_and_scheduler
from hcast.train.tasks import ClassificationTask, SegmentationTask, SegmentationTensors, Task, TransformedDataset
from hcast.train.finetune import (FinetuneData, FinetuneResult, RunOutputs, SuperpixelSettings, TrainingSetup,
                                  TrainingState, check_batch_size, check_resume, finetune, prepare_data, prepare_training,
                                  resume_checkpoint_path, resume_training, superpixel_settings, train_epochs,
                                  training_data_config, uses_superpixels)
# checkpoints and JSON for loops of your own (hcast.weights.folder: atomic writes, safe loading)
from hcast._io import write_json
from hcast.weights.folder import load_checkpoint, save_checkpoint

__all__ = [
    "AttentionBackendChooser",
    "check_batch_size",
    "check_resume",
    "ClassificationTask",
    "create_optimizer_and_scheduler",
    "create_train_transform",
    "create_val_transform",
    "destroy_distributed",
    "DistributedContext",
    "evaluate",
    "finetune",
    "FinetuneConfig",
    "FinetuneData",
    "FinetuneResult",
    "format_metrics_table",
    "get_recipe",
    "init_distributed",
    "level_logits",
    "level_targets",
    "list_recipes",
    "load_checkpoint",
    "plot_learning_curves",
    "PolyLR",
    "predict_paths",
    "prepare_data",
    "prepare_training",
    "progress_bar",
    "Recipe",
    "RECIPES",
    "resolve_device",
    "resume_checkpoint_path",
    "resume_training",
    "RunOutputs",
    "save_checkpoint",
    "save_model_folder",
    "SegmentationTask",
    "SegmentationTensors",
    "ShardSampler",
    "superpixel_settings",
    "SuperpixelSettings",
    "Task",
    "TimeBudget",
    "train_epochs",
    "train_one_epoch",
    "train_steps",
    "training_data_config",
    "TrainingSetup",
    "TrainingState",
    "TransformedDataset",
    "unpack_batch",
    "uses_superpixels",
    "write_json",
    "write_log",
]
