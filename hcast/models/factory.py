"""``from_pretrained``: one call for every place hcast weights live, through timm.

Everything goes through ``timm.create_model(..., pretrained=True)`` and hcast's builder,
so a model loaded here is the model timm users get (the same filters, the same safe
unpickling, the same Google Drive and Hugging Face Hub caches). What this module adds is
only the step from "what the user has" to "what timm takes":

=========================================  ===============================================
``name_or_id``                             passed to ``timm.create_model`` as
=========================================  ===============================================
registry name, with or without tag         itself (``"hcast_small.living17"``)
(``"cast_small.deit_in1k"``)
``"hf-hub:owner/repo"`` / ``"local-dir:"`` itself
``"owner/repo"`` (a Hub repository id)     ``"hf-hub:owner/repo"``
an existing folder                         ``"local-dir:FOLDER"`` (``save_for_hf`` /
                                           ``hcast push`` / ``hcast convert`` output)
an existing file (``.pth``, ``.pth.tar``,  the architecture (``model_name`` or guessed from
``.bin``, ``.safetensors``)                the weights) with the file as
                                           ``pretrained_cfg_overlay=dict(file=...)``: the
                                           original CAST / H-CAST / Hier-ViT checkpoints
                                           (``model`` / ``state_dict`` dicts, MoCo's
                                           ``module.base_encoder.`` prefix) or hcast's own
=========================================  ===============================================
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import timm
from torch import nn

__all__ = ["FromPretrainedMixin", "convert_checkpoint", "from_pretrained", "resolve_source"]

_SCHEMES = ("hf-hub:", "hf_hub:", "local-dir:")


def _checkpoint_file_kwargs(path: Path, model_name: Optional[str], kwargs: dict) -> tuple:
    """(architecture, create_model kwargs) for an original-format or hcast checkpoint file.

    The architecture is ``model_name`` or guessed from the weights; class counts, levels
    and settings are the builder's one rule (:func:`hcast.weights.heads.plan_heads`: the
    file's heads, not a default tag's)."""
    if model_name is None:
        from hcast.weights.original import guess_model_name, strip_prefixes, unwrap_state_dict
        from hcast.weights.safe_load import load_checkpoint_file

        model_name = guess_model_name(strip_prefixes(unwrap_state_dict(load_checkpoint_file(path))))
    kwargs["pretrained_cfg_overlay"] = dict(kwargs.pop("pretrained_cfg_overlay", None) or {}, file=str(path))
    return model_name, kwargs


def resolve_source(name_or_id: Union[str, os.PathLike], model_name: Optional[str], kwargs: dict) -> tuple:
    """(name ``timm.create_model`` takes, its kwargs) for a registry name or tag, a Hub id,
    a folder or a checkpoint file: the one place a model source is resolved
    (:func:`from_pretrained`, :func:`convert_checkpoint` and the ``hcast`` command use it).

    Raises:
        ValueError, FileNotFoundError, TypeError: as :func:`from_pretrained`.
    """
    if isinstance(name_or_id, os.PathLike) or (isinstance(name_or_id, str) and Path(name_or_id).exists()):
        path = Path(name_or_id)
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise FileNotFoundError(f"name_or_id: folder {str(path)!r} has no config.json; expected a folder "
                                        f"written by hcast.weights.save_for_hf (or `hcast convert` / `hcast push`).")
            return "local-dir:" + str(path.resolve()), kwargs
        if path.is_file():
            return _checkpoint_file_kwargs(path, model_name, kwargs)
        raise FileNotFoundError(f"name_or_id: {str(path)!r} does not exist.")
    if not isinstance(name_or_id, str) or not name_or_id:
        raise TypeError(f"name_or_id must be a model name, hub id, folder or file path, got {name_or_id!r}.")
    if name_or_id.startswith(_SCHEMES):
        return name_or_id, kwargs
    architecture = name_or_id.split(".", 1)[0]
    if timm.is_model(architecture):
        return name_or_id, kwargs
    if name_or_id.count("/") == 1 and not name_or_id.startswith((".", "/", "~")):
        return "hf-hub:" + name_or_id, kwargs
    if os.sep in name_or_id or name_or_id.startswith((".", "~")):
        raise FileNotFoundError(f"name_or_id: {name_or_id!r} does not exist: it is neither an existing folder, a "
                                f"checkpoint file, a hub id ('owner/repo', 'hf-hub:owner/repo') nor a registered "
                                f"model name (timm.list_models('*cast*')).")
    raise ValueError(
        f"name_or_id: {name_or_id!r} is no registered model (e.g. 'hcast_small.living17'; see "
        f"timm.list_models('*cast*')), Hub id ('owner/repo' or 'hf-hub:owner/repo'), existing folder or "
        f"checkpoint file.")


def from_pretrained(name_or_id: Union[str, os.PathLike], *, model_name: Optional[str] = None,
                    expected_class: Optional[type] = None, **kwargs: Any) -> nn.Module:
    """A pretrained hcast model from a registry tag, the Hugging Face Hub, a folder or a file.

    Every form ends in ``timm.create_model(name, pretrained=True, **kwargs)``: one
    loading path (the table in this module's docstring says what each form becomes).

    Args:
        name_or_id: ``"cast_small.deit_in1k"``, ``"hcast_small.living17"``,
            ``"hf-hub:owner/repo"``, ``"owner/repo"``, a folder written by
            ``save_for_hf``, or a checkpoint file in the original repositories' format
            or hcast's.
        model_name: the architecture of a checkpoint file (default: guessed from its
            weights, :func:`hcast.weights.original.guess_model_name`); needed for ``cast_tiny``-
            or ``hcast_tiny``-sized files and other widths.
        expected_class: raise unless the model is an instance of it (the model classes'
            ``from_pretrained`` classmethods pass themselves).
        **kwargs: more ``timm.create_model`` arguments (``level_classes``,
            ``num_classes``, ``features_only``, ...). For a file without
            ``level_classes`` / ``num_classes``, the checkpoint's head sizes decide
            (:mod:`hcast.weights.heads`).

    Returns:
        the model (``nn.Module``), in train mode as timm returns it.

    Raises:
        ValueError: ``name_or_id`` is none of the accepted forms, or the architecture of
            a file cannot be guessed (pass ``model_name``).
        FileNotFoundError: a path that does not exist, or a folder without config.json.
        TypeError: the model is not an ``expected_class``.
        hcast.weights.UnsafeCheckpointError: a pickle that needs code to unpickle.
    """
    kwargs.setdefault("pretrained", True)
    name, kwargs = resolve_source(name_or_id, model_name, dict(kwargs))
    if model_name is not None and not name.startswith(_SCHEMES) and not Path(str(name_or_id)).is_file():
        raise ValueError(f"model_name is only for checkpoint files; {name_or_id!r} names its architecture itself.")
    model = timm.create_model(name, **kwargs)
    if expected_class is not None and not isinstance(model, expected_class):
        raise TypeError(f"{name_or_id!r} is a {type(model).__name__}, not a {expected_class.__name__}; use "
                        f"hcast.from_pretrained({str(name_or_id)!r}) or {type(model).__name__}.from_pretrained.")
    return model


def convert_checkpoint(
        src: Union[str, os.PathLike],
        out_dir: Union[str, os.PathLike],
        model_name: Optional[str] = None,
        level_classes: Optional[Sequence[int]] = None,
        taxonomy: Any = None,
        *,
        overwrite: bool = False,
        **model_kwargs: Any,
) -> Path:
    """Turn a checkpoint file into a timm hub folder (config.json + model.safetensors).

    What ``hcast convert`` runs: the model is built with :func:`from_pretrained` (so the
    model's ``checkpoint_filter_fn`` maps the keys and the builder's one head rule applies,
    here without new heads: every classifier of the file must load) and written with
    :func:`hcast.weights.save_for_hf`. The folder loads with
    ``timm.create_model("local-dir:FOLDER", pretrained=True)`` and, once uploaded,
    ``"hf-hub:ORG/NAME"``.

    Args:
        src: checkpoint file: the original repositories' ``.pth`` (loaded with
            ``weights_only=True``, :func:`hcast.weights.load_checkpoint_file`) or hcast's
            ``.safetensors``.
        out_dir: folder to create, written to a temporary folder next to it and renamed
            into place when complete (:func:`hcast.weights.atomic_write`).
        model_name: hcast model name, optionally with the pretrained tag the file is
            (``"hcast_small.living17"`` keeps that tag's taxonomy and settings); default
            :func:`hcast.weights.original.guess_model_name`.
        level_classes: class count per level, finest first; default the checkpoint's heads.
        taxonomy: :class:`hcast.hierarchy.Taxonomy` (or its dict, or a JSON file) stored in
            ``config.json["taxonomy"]``; its finest names become timm's ``label_names``.
        overwrite: replace an existing non-empty ``out_dir`` (atomically).
        **model_kwargs: more ``timm.create_model`` arguments (e.g. ``img_size``).

    Returns:
        ``out_dir`` as a Path.

    Raises:
        FileExistsError: ``out_dir`` exists, is not empty, and ``overwrite`` is False.
        ValueError: class counts (argument, taxonomy) that do not fit the checkpoint's heads,
            or an architecture that cannot be guessed.
        hcast.weights.UnsafeCheckpointError: the pickle needs unsafe globals.
    """
    from hcast._io import atomic_write
    from hcast.weights.folder import _as_taxonomy, save_for_hf

    src, out_dir = Path(src), Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise FileExistsError(f"out_dir: {str(out_dir)!r} exists and is not empty; pass overwrite=True to replace it.")
    if not src.is_file():
        raise FileNotFoundError(f"src: {str(src)!r} is not a checkpoint file.")
    taxonomy = _as_taxonomy(taxonomy)
    kwargs = dict(model_kwargs)
    if level_classes is not None:
        kwargs["level_classes"] = tuple(int(c) for c in level_classes)
    if taxonomy is not None:
        kwargs["taxonomy"] = taxonomy
    model = from_pretrained(src, model_name=model_name, fresh_heads=False, **kwargs)
    with atomic_write(out_dir, folder=True, overwrite=overwrite) as tmp:
        save_for_hf(model, tmp, taxonomy=getattr(model, "taxonomy", None))
    return out_dir


class FromPretrainedMixin:
    """Gives a model class ``from_pretrained``, as Hugging Face users expect: the
    :func:`from_pretrained` loading path, checked to return an instance of that class."""

    @classmethod
    def from_pretrained(cls, name_or_id: Union[str, os.PathLike], **kwargs: Any) -> nn.Module:
        """A pretrained model of this class: :func:`hcast.from_pretrained` (registry tag,
        ``hf-hub:`` id, Hub repo id, folder, or original checkpoint file), through
        ``timm.create_model``.

        Raises:
            TypeError: ``name_or_id`` holds another kind of model.
        """
        return from_pretrained(name_or_id, expected_class=cls, **kwargs)
