"""Files hcast writes and reads back: model folders, training checkpoints, JSON results.

Every file is written through :func:`hcast._io.atomic_write` (re-exported by
:mod:`hcast.weights`), the one way hcast writes a file or a folder.
* :func:`save_for_hf`: a model folder in timm's hub format (``config.json`` +
  ``model.safetensors``) that ``timm.create_model("local-dir:FOLDER", pretrained=True)``
  and, once uploaded, ``"hf-hub:ORG/NAME"`` load, with a hierarchical model's taxonomy.
* :func:`save_checkpoint` / :func:`load_checkpoint`: training checkpoints for
  ``--resume``; :func:`write_json`: metrics and predictions.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import torch
from torch import nn

from hcast._io import PathLike, _temporary, atomic_write
from hcast.weights.safe_load import load_checkpoint_file


_logger = logging.getLogger(__name__)

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "save_for_hf",
]


def save_checkpoint(state: Dict[str, Any], path: PathLike) -> Path:
    """``torch.save(state)`` to ``path`` atomically (see :func:`atomic_write`).

    A crash or exception during the write leaves the previous file at ``path`` intact; a
    full disk raises ``OSError(errno.ENOSPC)`` saying so.
    """
    path = Path(path)
    with atomic_write(path, description="checkpoint") as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """Load a training checkpoint written by :func:`save_checkpoint` (``weights_only``: no pickled code).

    Read with :func:`hcast.weights.load_checkpoint_file`.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: the file is empty, truncated or not a checkpoint (the message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: {str(path)!r} does not exist; check --resume or the output folder.")
    return load_checkpoint_file(path, map_location=map_location)


def read_model_config(source: PathLike) -> Dict[str, Any]:
    """The ``config.json`` of a model folder or hub repo, checked, with errors that name the file.

    Args:
        source: a model folder, its ``config.json``, ``local-dir:FOLDER`` or
            ``hf-hub:ORG/NAME[@REVISION]`` (downloaded with ``hf_hub_download``).

    Returns:
        The parsed JSON object: ``architecture``, ``model_args``, ``pretrained_cfg``,
        ``taxonomy`` ... as :func:`save_for_hf` writes them.

    Raises:
        FileNotFoundError: no ``config.json`` there.
        ValueError: the file is empty, truncated, not UTF-8, not JSON, nested too deeply,
            or not an object with the fields' expected types, or its ``model_args.max_tokens``
            is above one token per input pixel; the message names the file and, for a hub
            cache entry, how to remove it.
    """
    from hcast.weights.safe_load import cache_hint

    name = str(source)
    if name.startswith(("hf-hub:", "hf_hub:")):
        from huggingface_hub import hf_hub_download

        repo_id, _, revision = name.split(":", 1)[1].partition("@")
        path = Path(hf_hub_download(repo_id, "config.json", revision=revision or None))
    else:
        path = Path(name[len("local-dir:"):] if name.startswith("local-dir:") else name)
        if path.is_dir():
            path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"config.json: {str(path)!r} does not exist; pass a folder written by save_for_hf, "
                                f"`hcast finetune` or `hcast convert`.")

    def bad(what: str) -> ValueError:
        return ValueError(f"{str(path)!r} is not a usable model config.json: {what}. Write it again with "
                          f"hcast.weights.save_for_hf (or `hcast convert`).{cache_hint(path)}")

    raw = path.read_bytes()
    if not raw.strip():
        raise bad("the file is empty")
    try:
        config = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise bad(f"it is not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise bad(f"invalid JSON at line {e.lineno}, column {e.colno} ({e.msg}; truncated?)") from None
    except RecursionError:
        raise bad("JSON nested too deeply") from None
    if not isinstance(config, dict):
        raise bad(f"expected a JSON object, got {type(config).__name__}")
    for key, kind in (("architecture", str), ("model_args", dict), ("pretrained_cfg", dict), ("taxonomy", dict),
                      ("num_classes", int), ("label_names", list)):
        if config.get(key) is not None and not isinstance(config[key], kind):
            raise bad(f"'{key}' must be a JSON {'string' if kind is str else kind.__name__}, got "
                      f"{type(config[key]).__name__}")
    problem = _token_budget_problem(config)
    if problem:
        raise bad(problem)
    return config


def _token_budget_problem(config: Mapping[str, Any]) -> Optional[str]:
    """What is wrong with a config's superpixel token budget (``model_args.max_tokens``), or
    ``None``: it must be an int from the superpixel count its images get
    (``pretrained_cfg.num_segments``) to one token per pixel of the model's input
    (:func:`hcast.ops.superpixels.max_token_budget`), checked before anything is allocated."""
    from hcast.ops.superpixels import max_token_budget  # a sibling package; imported where needed

    budget = (config.get("model_args") or {}).get("max_tokens")
    if budget is None:
        return None
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        return f"model_args.max_tokens must be null or a token budget >= 1, got {budget!r}"
    size = (config.get("model_args") or {}).get("img_size")
    if size is None:
        size = (config.get("pretrained_cfg") or {}).get("input_size", (3, 224, 224))
    sides = [size, size] if isinstance(size, int) else list(size)[-2:] if isinstance(size, (list, tuple)) else []
    if len(sides) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sides):
        return f"the input size {size!r} is not a positive image size"
    ceiling = max_token_budget(*sides)
    if budget > ceiling:
        return (f"model_args.max_tokens={budget} is more than one token per pixel of its {sides[0]}x{sides[1]} inputs "
                f"(at most {ceiling}); hcast refuses it before allocating anything. Set max_tokens to the superpixel "
                f"count (pretrained_cfg.num_segments) or a little more, or null")
    segments = (config.get("pretrained_cfg") or {}).get("num_segments")
    if isinstance(segments, int) and not isinstance(segments, bool) and budget < segments:
        return (f"model_args.max_tokens={budget} is below the pretrained_cfg.num_segments={segments} superpixels its "
                f"images get (the budget must be above the largest superpixel id); set max_tokens to {segments} or "
                "more, or null")
    return None


# ----------------------------------------------------------------------------- model folders


# keyword arguments of hcast's builder that timm.create_model records in model._model_args
_LOADING_ARGS = ("fresh_heads", "pretrained_strict", "cache_dir")


def save_for_hf(
        model: nn.Module,
        save_directory: PathLike,
        taxonomy: Any = None,
        model_config: Optional[Mapping[str, Any]] = None,
        model_args: Optional[Mapping[str, Any]] = None,
        **kwargs: Any,
) -> Path:
    """Save ``config.json`` + ``model.safetensors`` that ``timm.create_model("hf-hub:...")`` loads.

    :func:`timm.models.save_for_hf` with safetensors, plus hcast's conventions for
    hierarchical models: the taxonomy (argument, or the model's ``taxonomy``) is stored
    as ``config.json["taxonomy"]`` (:meth:`hcast.hierarchy.Taxonomy.to_dict`; read it
    back with ``Taxonomy.from_dict``), the finest level's class names as timm's
    ``label_names``, and ``model_args`` get ``level_classes`` instead of the
    (non-JSON) Taxonomy object. The pretrained cfg's hcast keys (superpixel method and
    count, level classes) are written with it, as timm writes every cfg key. Upload
    the folder with ``huggingface_hub.upload_folder``, or call
    :func:`timm.models.push_to_hf_hub` with the same ``model_config``/``model_args``.

    Each file is written with :func:`atomic_write`, weights first and ``config.json``
    last, so an interrupted save into a folder that already holds a model leaves the
    previous, complete pair, or the new weights with a config describing the same
    architecture; other files in the folder are left alone.

    Returns:
        ``save_directory`` as a Path.
    """
    from timm.models import save_for_hf as timm_save_for_hf

    model_config = dict(model_config or {})
    model_args = dict(model_args or {})
    # timm.create_model records its keyword arguments as model._model_args (timm 1.0.31 does) and
    # save_for_hf writes them: a Taxonomy argument there must be replaced by JSON.
    recorded = getattr(model, "_model_args", {})
    if any(k in recorded for k in _LOADING_ARGS):
        # how the weights were loaded (fresh_heads=True when fine-tuning, ...) is not an
        # argument of the architecture: a folder that recorded it would not load back
        recorded = model._model_args = {k: v for k, v in recorded.items() if k not in _LOADING_ARGS}
    if taxonomy is None:
        taxonomy = model_args.get("taxonomy", recorded.get("taxonomy", getattr(model, "taxonomy", None)))
    if isinstance(taxonomy, Mapping):
        from hcast.hierarchy import Taxonomy  # a sibling package; imported where needed

        taxonomy = Taxonomy.from_dict(taxonomy)
    if "taxonomy" in recorded or "taxonomy" in model_args:
        model_args["taxonomy"] = None  # JSON null: create_model drops None arguments
    if len(getattr(model, "level_classes", ())) > 1:  # the heads the weights hold, whatever built the model
        model_args.setdefault("level_classes", list(model.level_classes))
    if taxonomy is not None:
        model_args.setdefault("level_classes", list(taxonomy.num_classes))
        model_config.setdefault("taxonomy", taxonomy.to_dict())
        if taxonomy.names[0] is not None:
            model_config.setdefault("label_names", list(taxonomy.names[0]))
    kwargs.setdefault("safe_serialization", True)
    folder = Path(save_directory)
    with _temporary(folder / "save", folder=True) as staging:
        timm_save_for_hf(model, str(staging), model_config=model_config, model_args=model_args, **kwargs)
        for name in sorted(os.listdir(staging), key=lambda n: n == "config.json"):  # config last
            with atomic_write(folder / name) as tmp:
                os.replace(staging / name, tmp)
    return folder


def _as_taxonomy(taxonomy: Any):
    if taxonomy is None:
        return None
    from hcast.hierarchy import Taxonomy  # a sibling package; imported where needed

    if isinstance(taxonomy, Taxonomy):
        return taxonomy
    if isinstance(taxonomy, Mapping):
        return Taxonomy.from_dict(taxonomy)
    if isinstance(taxonomy, (str, os.PathLike)):
        return Taxonomy.load(taxonomy)
    raise TypeError(f"taxonomy: expected a Taxonomy, its to_dict() or a JSON file path, got {type(taxonomy).__name__}.")


