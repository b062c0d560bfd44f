"""Convert original CAST / H-CAST / Hier-ViT checkpoints into timm's hub format.

:func:`convert_checkpoint` is what ``hcast convert`` runs: it reads a checkpoint the
original code saved (a ``.pth`` dict holding ``model`` or ``state_dict``, original key
names, MoCo's ``module.base_encoder.`` prefix) safely, builds the hcast model with it
through ``timm.create_model(..., pretrained_cfg_overlay=dict(file=...))`` (so exactly
the model's ``checkpoint_filter_fn`` does the key mapping), and writes a folder with
``config.json`` (architecture, model arguments, level class counts, superpixel
settings, the taxonomy if given) and ``model.safetensors``. The folder loads with
``timm.create_model("local-dir:FOLDER", pretrained=True)`` and, once uploaded,
``timm.create_model("hf-hub:ORG/NAME", pretrained=True)``.
"""
from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch

from hcast.models._hub import load_checkpoint_file, save_for_hf, unwrap_state_dict

_logger = logging.getLogger(__name__)

__all__ = ["convert_checkpoint", "guess_model_name"]

PathLike = Union[str, os.PathLike]

# the original code's classifier names, finest level first
_ORIGINAL_HEADS = ("head", "family_head", "manufacturer_head")


def _strip_prefixes(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Keys without DDP's ``module.`` and MoCo's ``base_encoder.`` (only to inspect them)."""
    out = {}
    moco = any(k.startswith(("module.base_encoder.", "base_encoder.")) for k in state_dict)
    for key, value in state_dict.items():
        key = key[len("module."):] if key.startswith("module.") else key
        if moco:
            if not key.startswith("base_encoder."):
                continue
            key = key[len("base_encoder."):]
        out[key] = value
    return out


def _head_counts(state_dict: Mapping[str, torch.Tensor]) -> Tuple[int, ...]:
    """Class count of each classifier in the checkpoint, finest first (``()`` if none)."""
    counts = []
    for index, name in enumerate(_ORIGINAL_HEADS):
        weight = state_dict.get(f"{name}.weight", state_dict.get(f"heads.{index}.weight"))
        if weight is None or weight.ndim != 2:
            break
        counts.append(int(weight.shape[0]))
    return tuple(counts)


def guess_model_name(state_dict: Mapping[str, torch.Tensor]) -> str:
    """The hcast architecture a checkpoint in the original layout was trained as.

    CAST-like checkpoints (``blocksK.``/``poolK.`` or hcast's ``stages.``) give
    ``cast_*`` / ``hcast_*`` by width (384: small, 768: base) and first-stage depth
    (6: ``_deep``); ViT checkpoints with level heads give ``hier_vit_small``.

    Raises:
        ValueError: no known architecture matches; pass ``model_name``.
    """
    state_dict = _strip_prefixes(state_dict)
    hierarchical = len(_head_counts(state_dict)) > 1
    cls = state_dict.get("cls_token")
    width = int(cls.shape[-1]) if cls is not None else None
    keys = list(state_dict)
    if any(re.match(r"(blocks\d+|pool\d+|stages)\.", k) for k in keys):
        size = {384: "small", 768: "base"}.get(width)
        first = {int(m.group(1)) for k in keys if (m := re.match(r"blocks1\.(\d+)\.", k))}
        if not first:
            first = {int(m.group(1)) for k in keys if (m := re.match(r"stages\.0\.blocks\.(\d+)\.", k))}
        deep = len(first) == 6
        if size is not None and not (hierarchical and deep):
            return f"{'hcast' if hierarchical else 'cast'}_{size}{'_deep' if deep else ''}"
    elif hierarchical and width == 384 and "patch_embed.proj.weight" in state_dict:
        return "hier_vit_small"
    raise ValueError(
        f"model_name: could not tell the architecture of this checkpoint (width {width}, "
        f"{'hierarchical' if hierarchical else 'flat'} heads); pass model_name, e.g. 'hcast_small' or 'cast_base'.")


def _as_taxonomy(taxonomy: Any):
    if taxonomy is None:
        return None
    from hcast.hierarchy import Taxonomy

    if isinstance(taxonomy, Taxonomy):
        return taxonomy
    if isinstance(taxonomy, Mapping):
        return Taxonomy.from_dict(taxonomy)
    if isinstance(taxonomy, (str, os.PathLike)):
        return Taxonomy.load(taxonomy)
    raise TypeError(f"taxonomy: expected a Taxonomy, its to_dict() or a JSON file path, got {type(taxonomy).__name__}.")


def _check_heads_loaded(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Every classifier of the checkpoint ended up in the model (the filters keep a head's
    initialisation when shapes differ: here that would silently lose weights)."""
    own = model.state_dict()
    for index, name in enumerate(_ORIGINAL_HEADS):
        src = state_dict.get(f"{name}.weight", state_dict.get(f"heads.{index}.weight"))
        if src is None:
            break
        dst_key = next((k for k in (f"heads.{index}.weight", f"{name}.weight") if k in own), None)
        if dst_key is None:
            continue
        if own[dst_key].shape != src.shape:
            raise ValueError(
                f"level_classes: the checkpoint's {name} has {src.shape[0]} classes but the model's level {index} has "
                f"{own[dst_key].shape[0]}; pass level_classes (or a taxonomy) matching the checkpoint.")
        if not torch.equal(own[dst_key], src.to(own[dst_key].dtype)):
            raise RuntimeError(f"the checkpoint's {name} was not loaded into {dst_key}; please report this.")


def convert_checkpoint(
        src: PathLike,
        out_dir: PathLike,
        model_name: Optional[str] = None,
        level_classes: Optional[Sequence[int]] = None,
        taxonomy: Any = None,
        *,
        overwrite: bool = False,
        **model_kwargs: Any,
) -> Path:
    """Turn an original-format checkpoint into a timm hub folder (config.json + model.safetensors).

    Args:
        src: checkpoint file: the original repositories' ``.pth`` (``model`` or
            ``state_dict`` inside; loaded with ``weights_only=True``, see
            :func:`hcast.models._hub.load_checkpoint_file`) or hcast's ``.safetensors``.
        out_dir: folder to create. Written to a temporary folder next to it and renamed
            into place when complete: never half-written.
        model_name: hcast model name, optionally with a pretrained tag whose cfg to keep
            (``"hcast_small"``, ``"hcast_small.living17"``, ``"cast_small"``,
            ``"hier_vit_small"``); default :func:`guess_model_name`.
        level_classes: class count per level, finest first; default from the checkpoint's
            heads (``head``, ``family_head``, ``manufacturer_head``) or the taxonomy.
        taxonomy: :class:`hcast.hierarchy.Taxonomy` (or its dict, or a JSON file) stored in
            ``config.json["taxonomy"]``; its finest names become timm's ``label_names``.
        overwrite: replace an existing non-empty ``out_dir`` (atomically).
        **model_kwargs: more ``timm.create_model`` arguments (e.g. ``img_size``).

    Returns:
        ``out_dir`` as a Path.

    Raises:
        FileExistsError: ``out_dir`` exists, is not empty, and ``overwrite`` is False.
        ValueError: level counts disagree (argument, taxonomy, checkpoint), or the
            architecture cannot be guessed.
        hcast.models._hub.UnsafeCheckpointError: the pickle needs unsafe globals.
    """
    import timm

    import hcast.models  # noqa: F401  (registers the models)

    src, out_dir = Path(src), Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise FileExistsError(f"out_dir: {str(out_dir)!r} exists and is not empty; pass overwrite=True to replace it.")
    taxonomy = _as_taxonomy(taxonomy)
    state_dict = _strip_prefixes(unwrap_state_dict(load_checkpoint_file(src)))
    counts = _head_counts(state_dict)
    if taxonomy is not None:
        if level_classes is not None and tuple(level_classes) != tuple(taxonomy.num_classes):
            raise ValueError(f"level_classes: got {tuple(level_classes)}, but the taxonomy has "
                             f"{tuple(taxonomy.num_classes)} classes per level; pass one of them.")
        level_classes = tuple(taxonomy.num_classes)
    if level_classes is None and len(counts) > 1:
        level_classes = counts
    if model_name is None:
        model_name = guess_model_name(state_dict)
    kwargs = dict(model_kwargs)
    if level_classes is not None and len(level_classes) > 1:
        kwargs["level_classes"] = tuple(int(c) for c in level_classes)
        num_classes = kwargs["level_classes"][0]
    else:
        num_classes = int(level_classes[0]) if level_classes else (counts[0] if counts else 0)
        kwargs.setdefault("num_classes", num_classes)
    # num_classes in the cfg too, or timm's builder would drop a head of another size than the tag's
    overlay = dict(file=str(src), num_classes=num_classes)
    model = timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    _check_heads_loaded(model, state_dict)
    if taxonomy is not None:
        model.taxonomy = taxonomy

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".incomplete", dir=out_dir.parent))
    try:
        save_for_hf(model, tmp, taxonomy=taxonomy)
        if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
            if not overwrite:
                raise FileExistsError(f"out_dir: {str(out_dir)!r} appeared while converting; not replacing it.")
            old = out_dir.with_name(f".{out_dir.name}.{secrets.token_hex(4)}.old")
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
        else:
            os.replace(tmp, out_dir)  # also over an empty folder
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _logger.info(f"Converted {str(src)!r} ({model_name}) to {str(out_dir)!r}")
    return out_dir
