"""Everything between a file on disk and a model: loading, downloading, saving, converting.

Model files (:mod:`hcast.models`) keep architectures, pretrained cfgs, entry points and a
thin ``checkpoint_filter_fn`` each; everything they need to turn a file into weights
lives here, one job per module:

* :mod:`~hcast.weights.safe_load`: the restricted unpickler for ``.pth`` files
  (:func:`load_checkpoint_file`, :class:`UnsafeCheckpointError`, the allowed globals).
* :mod:`~hcast.weights.original`: the original repositories' checkpoint formats in one
  table (weights entries, ``module.`` / MoCo prefixes, head names, CAST's key layout,
  telling an architecture from its keys).
* :mod:`~hcast.weights.gdrive`: H-CAST's Google Drive checkpoints, cached beside the
  hub's files.
* :mod:`~hcast.weights.builder`: :func:`build_model_with_hcast_cfg` (timm's builder with
  safe loading) and the one dict-to-pretrained-cfg converter.
* :mod:`~hcast.weights.heads`: the one rule for heads, levels, taxonomy and release
  metadata, whatever the weights' source (:func:`~hcast.weights.heads.plan_heads`,
  :func:`~hcast.weights.heads.head_policy`).
* :mod:`~hcast.weights.folder`: model folders in timm's hub format (:func:`save_for_hf`),
  training checkpoints, and :func:`atomic_write`, which every file hcast writes goes
  through.

Imports go one way: :mod:`hcast.models` imports from here, never the reverse (converting
a checkpoint into a folder builds a model: :func:`hcast.models.convert_checkpoint`).
"""
from hcast.weights.builder import as_pretrained_cfg, build_model_with_hcast_cfg, resolve_checkpoint_file
from hcast._io import atomic_write, remove_stale_temporaries, write_json
from hcast.weights.folder import (
    load_checkpoint, read_model_config, save_checkpoint, save_for_hf,
)
from hcast.weights.gdrive import (
    DEFAULT_GDRIVE_URL_TEMPLATE, GDRIVE_URL_TEMPLATE_ENV, download_gdrive_checkpoint, gdrive_cache_path,
)
from hcast.weights.original import (
    ORIGINAL_FORMATS, OriginalFormat, guess_model_name, rename_level_heads, strip_prefixes, unwrap_state_dict,
)
from hcast.weights.safe_load import (
    SAFE_CHECKPOINT_GLOBALS, UnsafeCheckpointError, check_cached_file, checkpoint_safe_globals, load_checkpoint_file,
)

__all__ = [
    # safe_load
    "SAFE_CHECKPOINT_GLOBALS",
    "UnsafeCheckpointError",
    "check_cached_file",
    "checkpoint_safe_globals",
    "load_checkpoint_file",
    # original
    "ORIGINAL_FORMATS",
    "OriginalFormat",
    "guess_model_name",
    "rename_level_heads",
    "strip_prefixes",
    "unwrap_state_dict",
    # gdrive
    "DEFAULT_GDRIVE_URL_TEMPLATE",
    "GDRIVE_URL_TEMPLATE_ENV",
    "download_gdrive_checkpoint",
    "gdrive_cache_path",
    # builder
    "as_pretrained_cfg",
    "build_model_with_hcast_cfg",
    "resolve_checkpoint_file",
    # folder
    "atomic_write",
    "load_checkpoint",
    "read_model_config",
    "remove_stale_temporaries",
    "save_checkpoint",
    "save_for_hf",
    "write_json",
]
