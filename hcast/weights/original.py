"""The original repositories' checkpoint formats, in one table.

Everything hcast knows about how the authors' code saved its weights lives here:
which top-level entry holds the weights (DeiT's ``model``, MoCo v3's ``state_dict``),
the key prefixes to remove (DDP's ``module.``, MoCo's ``base_encoder.``), what is
training state rather than model (MoCo's momentum encoder, predictor and projection
MLP), the classifier names (``head``, ``family_head``, ``manufacturer_head``, finest
level first), CAST's key layout, and how to tell an architecture from its keys.

The model files' ``checkpoint_filter_fn`` call these functions; adding a new original
format means adding a row to :data:`ORIGINAL_FORMATS` (and, for a new key layout, a
mapping function next to :func:`cast_keys_to_hcast`).

Sources: github:twke18/CAST (``cast_models/cast_deit.py`` trained with DeiT's
``main.py``, ``cast_models/cast.py`` trained with MoCo v3's ``main_moco.py``) and
github:ngocquanai/HiOT at b1a222b (``cast_models/cast_deit_hier.py``,
``deit/models_hier.py``, ``deit/main_*hier.py``).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import torch

__all__ = [
    "OriginalFormat",
    "ORIGINAL_FORMATS",
    "DDP_PREFIX",
    "LEVEL_HEADS",
    "unwrap_state_dict",
    "strip_prefixes",
    "rename_level_heads",
    "cast_keys_to_hcast",
    "cast_seg_keys_to_hcast",
    "has_level_heads",
    "head_counts",
    "guess_model_name",
]


@dataclasses.dataclass(frozen=True)
class OriginalFormat:
    """How one original training script saved a model.

    Attributes:
        name: short name of the format.
        source: the repository and script that write it.
        weights_key: the checkpoint entry holding the state dict (the rest is training
            state: optimizer, epoch, ``args``).
        encoder_prefix: key prefix of the model's own weights when the checkpoint holds
            more than one network (MoCo's ``base_encoder.``); when any key has it, only
            those keys are kept, without it. ``None``: the checkpoint is one network.
        other_modules: key prefixes of networks saved beside the model (dropped).
        encoder_drop: key prefixes, inside the encoder, of parts that are not the
            backbone (MoCo's projection MLP ``head.``, not a classifier).
        level_heads: classifier names, finest taxonomy level first.
    """
    name: str
    source: str
    weights_key: str
    encoder_prefix: Optional[str] = None
    other_modules: Tuple[str, ...] = ()
    encoder_drop: Tuple[str, ...] = ()
    level_heads: Tuple[str, ...] = ()


#: DDP wraps the model as ``model.module``: every key of a checkpoint saved from the
#: wrapper starts with it.
DDP_PREFIX = "module."

#: The H-CAST authors' classifier names, finest level first (``head`` is also DeiT's and
#: CAST's one classifier). hcast keeps them as ``heads.0``, ``heads.1``, ``heads.2``.
LEVEL_HEADS = ("head", "family_head", "manufacturer_head")

#: The table: one row per original format. Checkpoint entries are tried in this order.
ORIGINAL_FORMATS: Tuple[OriginalFormat, ...] = (
    OriginalFormat(
        name="deit",
        source="DeiT's main.py: github:twke18/CAST cast_models/cast_deit.py (CAST supervised); "
               "github:ngocquanai/HiOT deit/main_*hier.py (H-CAST, Hier-ViT)",
        weights_key="model",  # beside model_ema, which the original evaluation never reads
        level_heads=LEVEL_HEADS,
    ),
    OriginalFormat(
        name="moco_v3",
        source="MoCo v3's main_moco.py: github:twke18/CAST cast_models/cast.py (CAST self-supervised)",
        weights_key="state_dict",
        encoder_prefix="base_encoder.",
        other_modules=("momentum_encoder.", "predictor."),
        encoder_drop=("head.",),
    ),
)


def unwrap_state_dict(checkpoint: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
    """Return the model weights of a checkpoint in the original repositories' format.

    Takes the first :attr:`OriginalFormat.weights_key` of :data:`ORIGINAL_FORMATS` that
    the checkpoint has (``checkpoint["model"]`` from DeiT / H-CAST training scripts,
    ``checkpoint["state_dict"]`` from MoCo v3); a dict holding only tensors is returned
    as is. ``model_ema`` is deliberately ignored: the original evaluation and
    fine-tuning code read ``model`` (timm's own ``load_state_dict`` would prefer the EMA
    copy). Key prefixes are left to :func:`strip_prefixes`.

    Raises:
        TypeError: ``checkpoint`` is not a mapping.
        ValueError: no weights found; the message lists the top-level keys.
    """
    if not isinstance(checkpoint, Mapping):
        raise TypeError(
            f"checkpoint: expected a dict (a state dict, or one holding 'model' or 'state_dict'), "
            f"got {type(checkpoint).__name__}."
        )
    for key in dict.fromkeys(f.weights_key for f in ORIGINAL_FORMATS):
        inner = checkpoint.get(key)
        if isinstance(inner, Mapping):
            return dict(inner)
    if all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return dict(checkpoint)
    raise ValueError(
        f"checkpoint: found no weights; expected a 'model' or 'state_dict' entry or a flat dict of tensors, "
        f"got top-level keys {sorted(map(str, checkpoint))[:20]}. Pass the entry that holds the weights."
    )


def strip_prefixes(state_dict: Mapping[str, torch.Tensor], *, ddp_only: bool = False,
                   keep_projector: bool = False) -> Dict[str, torch.Tensor]:
    """Keys of the model alone: wrapper prefixes removed, training-only networks dropped.

    Removes DDP's ``module.``; drops every format's :attr:`~OriginalFormat.other_modules`
    (MoCo's momentum encoder and predictor); when keys carry a format's
    :attr:`~OriginalFormat.encoder_prefix` (MoCo's ``base_encoder.``), keeps only those,
    without the prefix, and drops that format's :attr:`~OriginalFormat.encoder_drop`
    (MoCo's projection MLP ``head.*``).

    Args:
        state_dict: a flat state dict (see :func:`unwrap_state_dict`).
        ddp_only: only remove DDP's ``module.`` prefix and keep every key (Hier-ViT's
            filter: its checkpoints come from DeiT's script alone).
        keep_projector: keep the encoder's :attr:`~OriginalFormat.encoder_drop` parts
            (MoCo's projection MLP ``head.*``), for a model that uses them as its head
            (``cast_seg_*`` with ``head_type='moco'``).

    Returns:
        A new dict; values are the same tensors.
    """
    keys = {(k[len(DDP_PREFIX):] if k.startswith(DDP_PREFIX) else k): v for k, v in state_dict.items()}
    if ddp_only:
        return keys
    others = tuple(p for f in ORIGINAL_FORMATS for p in f.other_modules)
    keys = {k: v for k, v in keys.items() if not k.startswith(others)} if others else keys
    for fmt in ORIGINAL_FORMATS:
        prefix = fmt.encoder_prefix
        if prefix and any(k.startswith(prefix) for k in keys):
            return {k[len(prefix):]: v for k, v in keys.items()
                    if k.startswith(prefix)
                    and (keep_projector or not k[len(prefix):].startswith(fmt.encoder_drop))}
    return keys


def _level_head_names() -> Dict[str, int]:
    """Original classifier name -> level index (finest first), over all formats."""
    names: Dict[str, int] = {}
    for fmt in ORIGINAL_FORMATS:
        for index, name in enumerate(fmt.level_heads):
            names.setdefault(name, index)
    return names


def rename_level_heads(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename H-CAST / Hier-ViT's original head keys to hcast's per-level heads.

    The authors' code names the heads ``head`` (finest level), ``family_head`` and
    ``manufacturer_head`` (coarser levels, :data:`LEVEL_HEADS`); hcast keeps them in
    ``heads.0``, ``heads.1``, ``heads.2``, finest first. Other keys pass through
    unchanged.
    """
    names = _level_head_names()
    renamed = {}
    for key, value in state_dict.items():
        for name, index in names.items():
            if key.startswith(name + "."):
                key = f"heads.{index}." + key[len(name) + 1:]
                break
        renamed[key] = value
    return renamed


# CAST's graph pooling: the original attribute names -> hcast's (GraphPooling).
_CAST_POOL_RENAMES = (
    ("centroid_fc.", "assign."),
    ("fc1.0.", "fc1_norm."),
    ("fc1.1.", "fc1."),
    ("fc2.0.", "fc2_norm."),
    ("fc2.1.", "fc2."),
)
# Original keys a CAST backbone has no place for: MoCo's pe_token (joined to pos_embed),
# DeiT's distillation token and head, pre-logits.
_CAST_UNUSED_KEYS = ("pe_token", "pre_logits", "dist_token")
_CAST_UNUSED_PREFIXES = ("head_dist.",)


def cast_keys_to_hcast(state_dict: Mapping[str, torch.Tensor], depths: Sequence[int],
                       keep_last_update: bool = False) -> Dict[str, torch.Tensor]:
    """Rename original CAST keys to hcast's layout (:class:`hcast.models.cast.CAST`).

    ``blocksK.N`` -> ``stages.{K-1}.blocks.{N - first index of stage K}`` (slicing an
    ``nn.Sequential`` keeps the global block index N; the duplicate ``blocks.N`` copies of
    the same modules are dropped; ``cast_seg.py``'s per-stage ``blocksK.{0, 1, ...}``
    keep their local index), ``poolK.pool_block.centroid_fc`` ->
    ``stages.{K-1}.pool.assign``, ``fc1.0/fc1.1/fc2.0/fc2.1`` ->
    ``fc1_norm/fc1/fc2_norm/fc2``, the last stage's unused ``fc1``/``fc2`` dropped, MoCo's
    ``pe_token`` joined to the front of its ``pos_embed``, the coarser level heads
    (``family_head``, ``manufacturer_head``) and DeiT's distillation keys dropped. A state
    dict already in hcast's layout (``stages.*`` keys) is returned as a copy.

    Args:
        state_dict: a flat state dict without prefixes (:func:`strip_prefixes`).
        depths: blocks per stage of the model.
        keep_last_update: keep the last pooling's ``fc1``/``fc2`` (renamed as the
            others'): the segmentation encoder (``cast_seg.py``) updates its class token
            with them.
    """
    if any(k.startswith("stages.") for k in state_dict):
        return dict(state_dict)
    has_stage_blocks = any(re.match(r"blocks\d+\.", k) for k in state_dict)
    starts = [sum(depths[:i]) for i in range(len(depths))]
    # Slicing an nn.Sequential keeps the global block indices (cast.py, cast_deit.py,
    # cast_seg_deit.py: blocks2.3 is stage 2's first block); cast_seg.py builds a new
    # Sequential per stage, with local indices (blocks2.0). Global indices are never below
    # the stage's first, so a smaller one means local.
    first_index: Dict[int, int] = {}
    for key in state_dict:
        m = re.match(r"blocks(\d+)\.(\d+)\.", key)
        if m:
            stage = int(m.group(1)) - 1
            first_index[stage] = min(first_index.get(stage, int(m.group(2))), int(m.group(2)))
    coarser_heads = tuple(name + "." for name in _level_head_names() if name != "head")
    out = {}
    for key, value in state_dict.items():
        m = re.match(r"blocks(\d+)\.(\d+)\.(.*)", key)
        if m:
            stage = int(m.group(1)) - 1
            offset = 0 if first_index[stage] < starts[stage] else starts[stage]
            out[f"stages.{stage}.blocks.{int(m.group(2)) - offset}.{m.group(3)}"] = value
            continue
        m = re.match(r"blocks\.(\d+)\.(.*)", key)
        if m:
            if has_stage_blocks:
                continue  # the duplicate registration of the same modules
            index = int(m.group(1))
            stage = max(i for i, s in enumerate(starts) if s <= index)
            out[f"stages.{stage}.blocks.{index - starts[stage]}.{m.group(2)}"] = value
            continue
        m = re.match(r"pool(\d+)\.pool_block\.(.*)", key)
        if m:
            stage, rest = int(m.group(1)) - 1, m.group(2)
            if stage == len(depths) - 1 and rest.startswith(("fc1.", "fc2.")) and not keep_last_update:
                continue  # the last pooling's centroid update feeds nothing
            for old, new in _CAST_POOL_RENAMES:
                if rest.startswith(old):
                    rest = new + rest[len(old):]
                    break
            out[f"stages.{stage}.pool.{rest}"] = value
            continue
        if key in _CAST_UNUSED_KEYS or key.startswith(coarser_heads + _CAST_UNUSED_PREFIXES):
            continue
        out[key] = value
    if "pe_token" in state_dict and "pos_embed" in out:
        out["pos_embed"] = torch.cat([state_dict["pe_token"].reshape(1, 1, -1).to(out["pos_embed"]),
                                      out["pos_embed"]], dim=1)
    return out


# The segmentation encoder's fusion (cast_models/modules.py BlockFusion): original -> hcast.
_CAST_SEG_RENAMES = (
    ("block_fusion.proj_blocks.0.norm.", "fusion.norm."),
    ("block_fusion.proj_blocks.2.", "fusion.proj."),
)


def cast_seg_keys_to_hcast(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename the original segmentation encoder's fusion keys
    (``block_fusion.proj_blocks.0.norm.*`` BatchNorm1d, ``block_fusion.proj_blocks.2.*``
    Linear; github:twke18/CAST ``cast_models/modules.py``) to hcast's
    :class:`hcast.models.cast_seg.BlockFusion` (``fusion.norm``, ``fusion.proj``); other
    keys pass through (apply after :func:`cast_keys_to_hcast`)."""
    out = {}
    for key, value in state_dict.items():
        for old, new in _CAST_SEG_RENAMES:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    return out


def has_level_heads(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether a checkpoint holds per-level heads: a coarser original head
    (``family_head``, ...) or hcast's ``heads.*``; a plain ``head`` alone is one classifier."""
    prefixes = ("heads.",) + tuple(name + "." for name in _level_head_names() if name != "head")
    return any(k.startswith(prefixes) for k in state_dict)


def head_counts(state_dict: Mapping[str, torch.Tensor]) -> Tuple[int, ...]:
    """Class count of each classifier in a checkpoint, finest first (``()`` if none).

    Reads the original names (:data:`LEVEL_HEADS`) or hcast's ``heads.{level}``.
    """
    counts = []
    for index, name in enumerate(LEVEL_HEADS):
        weight = state_dict.get(f"{name}.weight", state_dict.get(f"heads.{index}.weight"))
        if weight is None or weight.ndim != 2:
            break
        counts.append(int(weight.shape[0]))
    return tuple(counts)


def guess_model_name(state_dict: Mapping[str, torch.Tensor]) -> str:
    """The hcast architecture a checkpoint in the original layout was trained as.

    CAST-like checkpoints (``blocksK.``/``poolK.`` or hcast's ``stages.``) give
    ``cast_*`` / ``hcast_*`` by width (384: small, 768: base) and first-stage depth
    (6: ``_deep``), ``cast_seg_*`` when they hold the segmentation encoder's fusion; ViT checkpoints with level heads give ``hier_vit_small``.

    Raises:
        ValueError: no known architecture matches; pass ``model_name``.
    """
    state_dict = strip_prefixes(state_dict)
    hierarchical = len(head_counts(state_dict)) > 1
    cls = state_dict.get("cls_token")
    width = int(cls.shape[-1]) if cls is not None else None
    keys = list(state_dict)
    if any(re.match(r"(blocks\d+|pool\d+|stages)\.", k) for k in keys):
        size = {192: "tiny", 384: "small", 768: "base"}.get(width)
        first = {int(m.group(1)) for k in keys if (m := re.match(r"blocks1\.(\d+)\.", k))}
        if not first:
            first = {int(m.group(1)) for k in keys if (m := re.match(r"stages\.0\.blocks\.(\d+)\.", k))}
        deep = len(first) == 6
        if size is not None and any(k.startswith(("block_fusion.", "fusion.")) for k in keys) and not deep:
            return f"cast_seg_{size}"  # the segmentation encoder (cast_seg.py / cast_seg_deit.py)
        if size is not None and not ((hierarchical or size == "tiny") and deep):
            return f"{'hcast' if hierarchical else 'cast'}_{size}{'_deep' if deep else ''}"
    elif hierarchical and width in (192, 384) and "patch_embed.proj.weight" in state_dict:
        return "hier_vit_tiny" if width == 192 else "hier_vit_small"
    raise ValueError(
        f"model_name: could not tell the architecture of this checkpoint (width {width}, "
        f"{'hierarchical' if hierarchical else 'flat'} heads); pass model_name, e.g. 'hcast_small' or 'cast_base'.")
