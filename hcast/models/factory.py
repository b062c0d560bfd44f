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
from typing import Any, Optional, Union

import timm
from torch import nn

__all__ = ["FromPretrainedMixin", "from_pretrained"]

_SCHEMES = ("hf-hub:", "hf_hub:", "local-dir:")


def _checkpoint_file_kwargs(path: Path, model_name: Optional[str], kwargs: dict) -> tuple:
    """(architecture, create_model kwargs) for an original-format or hcast checkpoint file."""
    from hcast.weights.original import guess_model_name, head_counts, strip_prefixes, unwrap_state_dict
    from hcast.weights.safe_load import load_checkpoint_file

    state_dict = strip_prefixes(unwrap_state_dict(load_checkpoint_file(path)))
    if model_name is None:
        model_name = guess_model_name(state_dict)
    counts = head_counts(state_dict)
    if kwargs.get("level_classes") is None and kwargs.get("taxonomy") is None and "num_classes" not in kwargs:
        if len(counts) > 1:
            kwargs["level_classes"] = counts
        else:
            kwargs["num_classes"] = counts[0] if counts else 0
    levels = kwargs.get("level_classes") or getattr(kwargs.get("taxonomy"), "num_classes", None)
    num_classes = kwargs.get("num_classes", levels[0] if levels else None)
    # num_classes in the cfg too, or timm's builder would drop a head of another size than the tag's
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {}, file=str(path))
    if num_classes is not None:
        overlay.setdefault("num_classes", num_classes)
    kwargs["pretrained_cfg_overlay"] = overlay
    return model_name, kwargs


def _resolve(name_or_id: Union[str, os.PathLike], model_name: Optional[str], kwargs: dict) -> tuple:
    """(name timm.create_model takes, its kwargs)."""
    if isinstance(name_or_id, os.PathLike) or (isinstance(name_or_id, str) and Path(name_or_id).exists()):
        path = Path(name_or_id)
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise FileNotFoundError(f"name_or_id: folder {str(path)!r} has no config.json; expected a folder "
                                        f"written by hcast.models.save_for_hf (or `hcast convert` / `hcast push`).")
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
    if name_or_id.count("/") == 1 and not name_or_id.startswith((".", "/")):
        return "hf-hub:" + name_or_id, kwargs
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
            ``num_classes``, ``output_level``, ``features_only``, ...). For a file
            without ``level_classes`` / ``num_classes``, the checkpoint's head sizes
            decide.

    Returns:
        the model (``nn.Module``), in train mode as timm returns it.

    Raises:
        ValueError: ``name_or_id`` is none of the accepted forms, or the architecture of
            a file cannot be guessed (pass ``model_name``).
        FileNotFoundError: a path that does not exist, or a folder without config.json.
        TypeError: the model is not an ``expected_class``.
        hcast.models.UnsafeCheckpointError: a pickle that needs code to unpickle.
    """
    kwargs.setdefault("pretrained", True)
    name, kwargs = _resolve(name_or_id, model_name, dict(kwargs))
    if model_name is not None and not name.startswith(_SCHEMES) and not Path(str(name_or_id)).is_file():
        raise ValueError(f"model_name is only for checkpoint files; {name_or_id!r} names its architecture itself.")
    model = timm.create_model(name, **kwargs)
    if expected_class is not None and not isinstance(model, expected_class):
        raise TypeError(f"{name_or_id!r} is a {type(model).__name__}, not a {expected_class.__name__}; use "
                        f"hcast.from_pretrained({str(name_or_id)!r}) or {type(model).__name__}.from_pretrained.")
    return model


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
