"""The ``hcast`` command: fine-tune, evaluate, predict, convert and push.

::

    hcast finetune --model hcast_tiny --data fashion-mnist --output runs/fmnist
    hcast evaluate runs/fmnist fashion-mnist --json metrics.json
    hcast predict runs/fmnist shirt.png --segment shirt_segments.png
    hcast convert hcast_living17.pth runs/living17 --model hcast_small
    hcast push runs/fmnist my-user/hcast-tiny-fashion-mnist
    hcast finetune --recipe garment-scenes --data garment-scenes --output runs/garments
    hcast segment runs/garments photo.png --out segments
    hcast evaluate runs/voc voc2012 --data-root /data --split val

MODEL arguments take a timm model name (``hcast_small``), a hub id
(``hf-hub:user/repo``) or a folder written by ``hcast finetune`` / ``hcast convert``
(``config.json`` + ``model.safetensors``; loaded with
``timm.create_model("local-dir:FOLDER", pretrained=True)``).
Every sub-command has ``--help``. Under ``torchrun --nproc_per_node=N hcast finetune ...``
the training runs with DDP (gloo on CPU, nccl on GPU); rank 0 prints and writes.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

__all__ = ["main", "build_parser", "load_model", "load_model_for_inference", "load_taxonomy", "UsageError"]



# ----------------------------------------------------------------------------- user errors


class UsageError(ValueError):
    """Bad input from the person running ``hcast``: printed as one line, exit status 2.

    Everything else (a bug in hcast or a library it calls) keeps its traceback and exits with 1.
    """


@contextlib.contextmanager
def user_input(what: str, flags: Optional[Dict[str, str]] = None) -> Iterator[None]:
    """Treat ``ValueError`` / ``OSError`` raised while reading ``what`` (an argument, a file, a folder
    the user named) as a :class:`UsageError` naming ``what``.

    ``flags`` maps the field a library message starts with (``"input_size: ..."``) to the flag
    the user typed (``"--input-size"``), which then names the error instead of ``what``.

    Only the steps that read what the user passed run under it (loading the model, the taxonomy,
    the dataset, a checkpoint); errors from the training loop or the model's forward keep their
    traceback.
    """
    try:
        yield
    except UsageError:
        raise
    except (ValueError, OSError) as e:
        # an OSError's own words without its "[Errno N]" prefix
        message = (e.strerror if isinstance(e, OSError) and e.strerror else str(e)) or type(e).__name__
        field_name = message.split(":", 1)[0]
        if flags and field_name in flags:
            raise UsageError(flags[field_name] + message[len(field_name):]) from e
        if isinstance(e, OSError) and e.filename and str(e.filename) not in message:
            message = f"{e.filename}: {message}"
        raise UsageError(message if message.startswith(what) else f"{what}: {message}") from e


def _check_output(path: Optional[str], flag: str, folder: bool = False) -> None:
    """Refuse, before any work, an output the write at the end would fail on (a folder given
    for a file, a file for a folder, a path under a file): `hcast._io.check_output_path`."""
    from hcast._io import check_output_path

    if path:
        with user_input(flag):
            check_output_path(path, folder=folder)


# ----------------------------------------------------------------------------- model loading


def _resolve_model(source: str, kwargs: Optional[Dict[str, Any]] = None) -> Tuple[str, Dict[str, Any]]:
    """``(name, kwargs)`` for ``timm.create_model`` from what the user named: a registry name
    or tag, an ``hf-hub:`` / Hub id, a model folder or a checkpoint file, resolved by
    :func:`hcast.models.factory.resolve_source` (the one place a model source is resolved).

    Raises:
        UsageError: a folder without ``config.json``, a path that does not exist, a file
            whose architecture cannot be guessed, or a string that is none of the above.
    """
    from hcast.models.factory import resolve_source

    try:
        return resolve_source(os.path.expanduser(source), None, dict(kwargs or {}))
    except (ValueError, FileNotFoundError, TypeError) as error:
        raise UsageError(f"model: {error}") from None


def _read_config(name: str) -> Dict[str, Any]:
    """The ``config.json`` of a local folder or hub repo (empty for a registry name), read by
    :func:`hcast.weights.read_model_config` so that a broken file is named."""
    from hcast.weights import read_model_config

    if name.startswith(("local-dir:", "hf-hub:", "hf_hub:")):
        return read_model_config(name)
    return {}


def load_taxonomy(path: Optional[str] = None, config: Optional[Dict[str, Any]] = None, data: Optional[str] = None,
                  data_root: Optional[str] = None):
    """The taxonomy from ``--taxonomy FILE``, else a model's config, else the benchmark's
    ``data`` names (read from ``data_root`` where hcast ships none), else Fashion-MNIST's.

    Returns ``None`` when none of these applies.
    """
    from hcast.data import benchmark_dataset_name, create_benchmark_dataset, is_fashion_mnist
    from hcast.hierarchy import BENCHMARK_TAXONOMIES, Taxonomy, benchmark_taxonomy, fashion_mnist_taxonomy

    if path:
        if not Path(path).is_file():
            raise UsageError(f"taxonomy: {path!r} is not a file; pass a JSON file written by Taxonomy.save.")
        with user_input(f"taxonomy {path!r}"):
            return Taxonomy.load(path)
    if config and config.get("taxonomy"):
        return Taxonomy.from_dict(config["taxonomy"])
    benchmark = benchmark_dataset_name(data) if data is not None else None
    if benchmark in BENCHMARK_TAXONOMIES:
        return benchmark_taxonomy(benchmark)
    if benchmark is not None and data_root is not None:
        return create_benchmark_dataset(benchmark, data_root, "test").taxonomy
    if data is not None and is_fashion_mnist(data):
        return fashion_mnist_taxonomy()
    return None


def load_model(source: str, device: str = "cpu", taxonomy_path: Optional[str] = None,
               replace_taxonomy: bool = False, **kwargs: Any):
    """Build ``source`` with timm and find its taxonomy.

    Args:
        source: a timm name, an ``hf-hub:`` id, a folder with ``config.json``, or a
            checkpoint file (the original repositories' format or hcast's).
        device: where to put the model (it is returned in eval mode).
        taxonomy_path: a taxonomy JSON file; it must agree with the taxonomy the model stores
            (its config's, or its tag's): same classes per level, parents and class names.
        replace_taxonomy: let ``taxonomy_path`` replace a stored taxonomy it disagrees with
            (``--replace-taxonomy``): its names then label the model's outputs.
        kwargs: more ``timm.create_model`` arguments (e.g. ``pretrained=True``).

    Returns:
        ``(model, taxonomy or None, config dict)``.

    Raises:
        UsageError: a taxonomy file that disagrees with the stored one (a reordered file would
            relabel every prediction) unless ``replace_taxonomy``; one whose classes per level
            differ from the model's heads, always.
    """
    import timm

    import hcast  # noqa: F401  (registers the models)

    name, kwargs = _resolve_model(source, kwargs)
    config = _read_config(name)
    taxonomy = load_taxonomy(taxonomy_path, config)
    if kwargs.get("pretrained") is None:
        # a folder, hub repo or file is its weights; a registry name starts from scratch unless asked
        kwargs["pretrained"] = name.startswith(("local-dir:", "hf-hub:", "hf_hub:")) or "pretrained_cfg_overlay" in kwargs
    model = timm.create_model(name, **kwargs)
    stored = getattr(model, "taxonomy", None)
    if config.get("taxonomy"):
        from hcast.hierarchy import Taxonomy

        with user_input(f"model {source!r}"):
            stored = Taxonomy.from_dict(config["taxonomy"])
    if taxonomy_path and taxonomy is not None:
        heads = getattr(model, "level_classes", None)
        if heads is not None and tuple(heads) != tuple(taxonomy.num_classes):
            raise UsageError(f"--taxonomy {taxonomy_path!r}: it has {tuple(taxonomy.num_classes)} classes per level but "
                             f"the model's heads have {tuple(heads)}; pass the taxonomy the model was trained on.")
        difference = stored.disagreement(taxonomy, "in the model", "in the file") if stored is not None else None
        if difference and not replace_taxonomy:
            raise UsageError(f"--taxonomy {taxonomy_path!r} disagrees with the taxonomy the model stores ({difference}); "
                             "its names would relabel the model's outputs. Drop --taxonomy to use the model's, or pass "
                             "--replace-taxonomy if the file is meant to replace it.")
    if taxonomy is None:
        taxonomy = stored
    return model.to(device).eval(), taxonomy, config


def _superpixel_transform(model: Any, args: argparse.Namespace) -> Any:
    """The :class:`hcast.ops.SuperpixelTransform` of ``model``'s images (un-normalised with its
    data config), or ``None`` for a patch model (Hier-ViT) that reads no superpixels. Method
    and count come from the arguments, else the model's config, checked against the input
    size before any image is read (:func:`hcast.data.resolve_superpixel_settings`).

    Raises:
        UsageError: a count the method or the model's feature grid cannot take (SEEDS would
            crash or hang in OpenCV; a crafted config's 100,000 tokens would exhaust memory).
    """
    from hcast.data import resolve_superpixel_settings
    from hcast.ops import SuperpixelTransform
    from hcast.train import uses_superpixels

    if not uses_superpixels(model):
        return None
    flag = "--num-segments" if getattr(args, "num_segments", None) else "superpixels"
    with user_input(flag):
        method, num_segments = resolve_superpixel_settings(
            model, getattr(args, "superpixel_method", None), getattr(args, "num_segments", None),
            getattr(args, "input_size", None))
    data_cfg = _data_config(model)
    return SuperpixelTransform(num_segments=num_segments, method=method, mean=data_cfg["mean"], std=data_cfg["std"])


def _data_config(model: Any) -> Dict[str, Any]:
    from timm.data import resolve_data_config

    return resolve_data_config({}, model=model)


def _is_registry_name(source: str) -> bool:
    schemes = ("hf-hub:", "hf_hub:", "local-dir:")
    if source.startswith(schemes) or Path(source).expanduser().exists():
        return False
    return not _resolve_model(source)[0].startswith(schemes)


def load_model_for_inference(source: str, device: str, taxonomy_path: Optional[str], pretrained: bool,
                             replace_taxonomy: bool = False):
    """:func:`load_model` for ``evaluate`` / ``predict``: a registry name loads its tag's weights.

    A registry name (``hcast_small.living17``, ``cast_small``) is built with
    ``pretrained=True`` unless ``pretrained`` is False (``--no-pretrained``); weights that
    cannot be had (offline without a cached copy, a failed download, no released weights)
    end the command with a message saying so and what to do, never with random weights.

    Returns:
        ``(model, taxonomy or None, config, weights)`` with ``weights`` a line saying which
        weights were loaded.
    """
    from timm.models import get_pretrained_cfg

    import hcast  # noqa: F401  (registers the models)

    if not _is_registry_name(source):
        model, taxonomy, config = load_model(source, device=device, taxonomy_path=taxonomy_path,
                                             replace_taxonomy=replace_taxonomy)
        return model, taxonomy, config, f"weights: {source}"
    if not pretrained:
        model, taxonomy, config = load_model(source, device=device, taxonomy_path=taxonomy_path,
                                             replace_taxonomy=replace_taxonomy, pretrained=False)
        return model, taxonomy, config, "weights: RANDOM (--no-pretrained): the scores below are not a trained model's"
    cfg = get_pretrained_cfg(source)
    if cfg is None or not cfg.has_weights:
        raise UsageError(f"{source!r} has no released weights; pass a tagged name (e.g. "
                         "hcast_small.living17), a folder or an hf-hub: id, or --no-pretrained for random weights.")
    try:
        model, taxonomy, config = load_model(source, device=device, taxonomy_path=taxonomy_path,
                                             replace_taxonomy=replace_taxonomy, pretrained=True)
    except (OSError, ImportError) as e:  # offline without a cached copy, failed download, gdown missing
        raise UsageError(f"cannot load the weights of {source!r}: {e}\n"
                         "Download them once with network access (they are cached), or pass --no-pretrained to "
                         "run with random weights.") from None
    source_cfg = model.pretrained_cfg
    where = (f"Google Drive {source_cfg['gdrive_id']}" if source_cfg.get("gdrive_id")
             else source_cfg.get("hf_hub_id") or source_cfg.get("file") or source_cfg.get("url") or "?")
    note = "" if source_cfg.get("num_classes") is not None else " (backbone only: the classifier is freshly initialised)"
    return model, taxonomy, config, f"weights: {source_cfg.get('architecture', source)}.{source_cfg.get('tag')} from {where}{note}"


# ----------------------------------------------------------------------------- finetune


def _optional(kind: Any):
    """An argparse type that reads ``none`` as ``None`` (e.g. ``--eval-crop-pct none``)."""
    def parse(text: str) -> Any:
        return None if text.lower() in ("none", "null", "off") else kind(text)

    parse.__name__ = kind.__name__
    return parse


def _add_finetune(sub: argparse._SubParsersAction) -> None:
    from hcast.train import FinetuneConfig, list_recipes

    defaults = FinetuneConfig()
    p = sub.add_parser(
        "finetune",
        help="fine-tune a hierarchical classifier (a benchmark, an image folder, Fashion-MNIST) or a CAST segmenter",
        description=(
            "Fine-tune an H-CAST (or Hier-ViT) model with hcast.train.finetune: timm's data pipeline (random resized "
            "crop, flip, RandAugment, random erasing), superpixels of the augmented image, hierarchical "
            "mixup/cutmix, EMA, repeated augmentation, AdamW with a cosine schedule, the H-CAST loss (per-level CE + "
            "tree-path KL). --recipe NAME starts from a named preset (the H-CAST authors' runs, docs/training.md); "
            "any flag overrides it; --print-config shows the result and exits. Writes OUTPUT/config.json + "
            "model.safetensors (the best epoch by validation FPA; timm-loadable with "
            "timm.create_model('local-dir:OUTPUT', pretrained=True)), OUTPUT/checkpoint-latest.pth (for --resume), "
            "taxonomy.json, finetune_config.json (the resolved config), log.jsonl and learning_curves.png. "
            "A segmentation recipe (--recipe cast-seg-voc, cast-seg-ade20k, garment-scenes; --task segmentation) trains "
            "a CAST segmenter with pixel cross-entropy instead and writes a segmenter folder that `hcast segment` and "
            "`hcast evaluate` load. Run under torchrun for DDP."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )

    def add(group: Any, flag: str, help: str, *aliases: str, **kw: Any) -> None:
        # config flags: absent unless given (argparse.SUPPRESS), so a recipe's value stays unless overridden
        dest = kw.pop("dest", flag.lstrip("-").replace("-", "_"))
        default = getattr(defaults, dest)
        group.add_argument(flag, *aliases, dest=dest, default=argparse.SUPPRESS,
                           help=f"{help} (config.{dest}; default without a recipe: {default})", **kw)

    g = p.add_argument_group("recipe")
    g.add_argument("--recipe", default=None, choices=list_recipes(),
                   help="start from a named preset: every hyper-parameter of the H-CAST authors' run on a benchmark, "
                        "Hier-ViT's, or the main job's (fashion-mnist); flags override it")
    g.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    g = p.add_argument_group("task")
    add(g, "--task", "classification (a hierarchical classifier on a taxonomy) or segmentation (a CAST segmenter: "
        "pixel cross-entropy, mIoU; --data garment-scenes, voc2012, voc2012-aug or ade20k)",
        choices=("classification", "segmentation"))
    add(g, "--segmentation-head", "segmentation: the head on the encoder (softmax: SPML's, mask_transformer: "
        "Segmenter's, linear)", choices=("softmax", "mask_transformer", "linear"))
    add(g, "--ignore-index", "segmentation: the label without a loss or a score", type=int)
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default=None, help="timm model name, hf-hub: id or folder (default: the recipe's, "
                   "else hcast_tiny)")
    g.add_argument("--pretrained", action="store_true", default=None,
                   help="start from the model's pretrained weights (a recipe for a benchmark sets it)")
    g.add_argument("--no-pretrained", action="store_false", dest="pretrained", help="start from random weights")
    g.add_argument("--model-kwargs", nargs="*", default=[], metavar="KEY=VALUE",
                   help="more timm.create_model arguments, e.g. drop_rate=0.1 depths='[1,1,1,1]' (values read as JSON when they parse)")
    g.add_argument("--initial-checkpoint", default=None, help="a checkpoint file to start from (original format or safetensors)")
    g.add_argument("--data", default=None, help="a benchmark (breeds-living17, breeds-nonliving26, breeds-entity13, "
                   "breeds-entity30, cub200, fgvc-aircraft, inat21-mini, imagenet-1k, cifar100), 'fashion-mnist' or a "
                   "folder with one sub-folder per fine class (required unless --print-config)")
    g.add_argument("--data-root", default=None,
                   help="a benchmark's folder in its native layout; Fashion-MNIST: a folder with the IDX files")
    g.add_argument("--taxonomy", default=None, help="taxonomy JSON (Taxonomy.save); default for fashion-mnist: 10 garments -> 5 groups")
    g.add_argument("--output", "-o", default=None, help="output folder (required unless --print-config)")
    g.add_argument("--train-samples", type=int, default=None, help="class-balanced training subset size (default: all)")
    g.add_argument("--val-samples", type=int, default=None, help="validation subset size (fashion-mnist default 1000, held out of train)")
    g.add_argument("--val-fraction", type=float, default=0.1, help="image folder without train/ val/: share held out")
    add(g, "--input-size", "image side in pixels (none: the model's)", type=_optional(int))
    g = p.add_argument_group("augmentation (timm.data.create_transform)")
    add(g, "--scale-min", "random resized crop: smallest area fraction", type=float)
    add(g, "--hflip", "horizontal flip probability", type=float)
    add(g, "--auto-augment", "timm auto-augment policy, e.g. rand-m9-mstd0.5-inc1 (none: off)", "--aa",
        type=_optional(str))
    add(g, "--color-jitter", "color jitter strength (timm skips it under --auto-augment)", type=_optional(float))
    add(g, "--train-interpolation", "bilinear | bicubic | random", type=str)
    add(g, "--reprob", "random erasing probability", type=float)
    add(g, "--remode", "random erasing mode (pixel | rand | const)", type=str)
    add(g, "--recount", "random erasing count", type=int)
    add(g, "--eval-crop-pct", "validation center crop fraction (none: the whole image, no crop)", type=_optional(float))
    add(g, "--mixup", "mixup alpha (0: off)", type=float)
    add(g, "--cutmix", "cutmix alpha (0: off)", type=float)
    add(g, "--mixup-prob", "probability of mixing a batch", type=float)
    add(g, "--mixup-switch-prob", "probability of cutmix instead of mixup", type=float)
    add(g, "--repeated-aug", "repeats per image per epoch (timm RepeatAugSampler; 0: off)", type=int)
    g = p.add_argument_group("superpixels")
    add(g, "--superpixels", "compute superpixels in the DataLoader workers on the augmented image, batched on the "
        "training device (torch_slic), or once before training and kept in memory (cache: flip-only augmentation, "
        "--scale-min 1)", choices=("loader", "device", "cache"))
    add(g, "--superpixel-method", "seeds | slic | torch_slic (none: the model's)", type=_optional(str))
    add(g, "--num-segments", "superpixels per image (none: the model's)", type=_optional(int))
    g = p.add_argument_group("optimisation")
    add(g, "--epochs", "passes over the training set", type=int)
    add(g, "--steps", "optimizer updates of the whole run instead of --epochs (the segmentation recipes' iterations)",
        type=_optional(int))
    add(g, "--batch-size", "images per process and step", "-b", type=int)
    add(g, "--lr", "peak learning rate", type=float)
    add(g, "--lr-base-batch", "scale --lr by global batch / this (DeiT; none: no scaling)", type=_optional(int))
    add(g, "--min-lr", "learning rate at the end of the cosine", type=float)
    add(g, "--warmup-epochs", "linear warm-up length in epochs", type=float)
    add(g, "--warmup-steps", "linear warm-up length in updates instead (none: --warmup-epochs)", type=_optional(int))
    add(g, "--sched", "per-update schedule: cosine (to --min-lr after the warm-up) or poly", choices=("cosine", "poly"))
    add(g, "--poly-power", "exponent of the poly schedule", type=float)
    add(g, "--warmup-lr", "learning rate at the first update", type=float)
    add(g, "--weight-decay", "AdamW weight decay", type=float)
    add(g, "--eval-mean", "normalisation mean of validation images and of the saved model (none: the model's)",
        type=float, nargs=3, metavar=("R", "G", "B"))
    add(g, "--eval-std", "normalisation std of validation images and of the saved model (none: the model's)",
        type=float, nargs=3, metavar=("R", "G", "B"))
    add(g, "--opt", "timm.optim optimizer name (momentum: SGD with momentum)", type=str)
    add(g, "--momentum", "momentum of SGD-like optimizers", type=float)
    add(g, "--head-lr-scale", "segmentation: learning-rate multiplier of the head", type=float)
    add(g, "--clip-grad", "max gradient norm (0 or none: off)", type=_optional(float))
    add(g, "--kl-weight", "weight of H-CAST's tree-path KL term", type=float)
    add(g, "--label-smoothing", "label smoothing of every level", "--smoothing", type=float)
    add(g, "--drop-path", "stochastic depth rate (none: the model's)", type=_optional(float))
    add(g, "--ema-decay", "EMA of the weights per update (timm ModelEmaV3; 0: off)", type=float)
    g.add_argument("--ema-eval", dest="ema_eval", action="store_true", default=argparse.SUPPRESS,
                   help="validate and keep the best epoch with the EMA weights (timm's train.py) instead of the raw ones")
    add(g, "--precision", "autocast: fp32, bf16, fp16, or auto: bf16 on CUDA (fp16 on GPUs without bf16) and on "
        "CPUs with native bf16 (AVX-512 BF16 / AMX), fp32 elsewhere", choices=("fp32", "bf16", "fp16", "auto"))
    g = p.add_argument_group("run")
    add(g, "--device", "auto | cpu | cuda", type=str)
    add(g, "--workers", "DataLoader worker processes per process", type=int)
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    add(g, "--seed", "seed of every epoch's randomness (with the epoch and rank)", type=int)
    g.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="resume from OUTPUT/checkpoint-latest.pth (or the given file)")
    add(g, "--max-steps", "stop each epoch after this many steps (quick runs)", type=_optional(int))
    add(g, "--time-budget", "wall-clock limit in minutes of the training loop (updates + per-epoch evaluation): "
        "after timing the first updates, the schedule is shortened to fit if needed", metavar="MINUTES",
        type=_optional(float))
    add(g, "--budget-clock", "what --time-budget counts: wall (the clock) or cpu (CPU time of this process: the same "
        "work on a machine shared with other jobs)", choices=("wall", "cpu"))
    add(g, "--val-every", "validate every N epochs (0: only after the last)", type=int)
    g.add_argument("--fill-budget", dest="fill_budget", action="store_true", default=argparse.SUPPRESS,
                   help="with --time-budget: lengthen the run past --epochs so the cosine ends with the budget")
    add(g, "--attention", "SDPA backend of the training steps: auto (CPU: the faster of default and math, "
        "measured on the first steps), default, math", choices=("auto", "default", "math"))
    g.add_argument("--no-progress", dest="progress", action="store_false", default=argparse.SUPPRESS,
                   help="no progress bars (they show only on a terminal anyway)")
    p.set_defaults(func=cmd_finetune)


_NOT_CONFIG = {"recipe", "print_config", "model", "pretrained", "model_kwargs", "initial_checkpoint", "data",
               "data_root", "taxonomy", "output", "train_samples", "val_samples", "val_fraction", "threads", "resume",
               "func", "command"}


def resolve_finetune_config(args: argparse.Namespace) -> Tuple[Any, Dict[str, Any], Dict[str, str]]:
    """The run ``hcast finetune`` was asked for: the recipe (if any) with the flags given on top.

    Returns:
        ``(config, settings, sources)``: the :class:`hcast.train.FinetuneConfig`; the model and
        data settings (``model``, ``pretrained``, ``train_samples``, ``val_samples``); and, per
        config field, where its value came from (the recipe's source, ``"flag"`` or
        ``"default"``).

    Raises:
        UsageError: for a value the config rejects.
    """
    from hcast.train import FinetuneConfig, get_recipe

    given = {k: v for k, v in vars(args).items() if k not in _NOT_CONFIG}
    if given.get("clip_grad") == 0:
        given["clip_grad"] = None
    recipe = get_recipe(args.recipe) if args.recipe else None
    base = recipe.config.to_dict() if recipe else FinetuneConfig().to_dict()
    try:
        config = FinetuneConfig.from_dict({**base, **given})
    except ValueError as e:  # "lr: expected ..." names the field: name the flag the user typed
        message = str(e)
        field_name = message.split(":", 1)[0]
        if field_name in given:
            raise UsageError("--" + field_name.replace("_", "-") + message[len(field_name):]) from None
        raise UsageError(f"finetune: {message}") from None
    sources = {name: ("flag" if name in given else (recipe.sources.get(name, f"recipe {recipe.name}") if recipe
                                                    else "default")) for name in base}
    settings = {
        "model": args.model or (recipe.model if recipe else "hcast_tiny"),
        "pretrained": args.pretrained if args.pretrained is not None else (
            recipe.pretrained and not args.model if recipe else False),
        "train_samples": args.train_samples if args.train_samples is not None else (recipe.data.get("train_samples")
                                                                                    if recipe else None),
        "val_samples": args.val_samples if args.val_samples is not None else (recipe.data.get("val_samples")
                                                                              if recipe else None),
        # GarmentScenes' generator settings (garments per image, scale) a segmentation recipe fixes
        "scenes": dict(recipe.data.get("scenes", {})) if recipe else {},
    }
    return config, settings, sources


def _build_model_for_finetune(source: str, pretrained: bool, args: argparse.Namespace, config: Any, task: Any):
    """The model ``hcast finetune`` trains, and the constructor arguments to store with it
    (``None``: the task's default). Classification: heads for the taxonomy's levels (heads
    that do not fit the weights start fresh, and a warning names them:
    ``hcast.weights.heads``). Segmentation: the encoder without its classifier and
    ``config.segmentation_head`` for the task's classes
    (:class:`hcast.models.segmentation_heads.CASTSegmenter`)."""
    import timm

    import hcast  # noqa: F401

    name, kwargs = _resolve_model(source)
    kwargs.update(pretrained=pretrained or bool(args.initial_checkpoint) or "pretrained_cfg_overlay" in kwargs)
    if args.initial_checkpoint:
        kwargs["pretrained_cfg_overlay"] = dict(file=str(args.initial_checkpoint))
    if config.drop_path:
        kwargs["drop_path_rate"] = config.drop_path
    given = parse_kwargs(args.model_kwargs)
    if config.input_size:
        kwargs["img_size"] = config.input_size
    if config.task == "segmentation":
        from hcast.models.segmentation_heads import CASTSegmenter

        encoder = timm.create_model(name, num_classes=0, **{**kwargs, **given})
        model_args = {**given, **({"img_size": config.input_size} if config.input_size else {})}
        return CASTSegmenter(encoder, task.num_classes, config.segmentation_head), model_args
    kwargs["level_classes"] = tuple(task.taxonomy.num_classes)
    return timm.create_model(name, **{**kwargs, **given}), None


def _finetune_task(args: argparse.Namespace, config: Any) -> Any:
    """The task of ``hcast finetune``: classification on the taxonomy of ``--taxonomy`` /
    the data, or segmentation on the classes of ``--data`` (garment-scenes, voc2012,
    voc2012-aug, ade20k)."""
    from hcast.train import ClassificationTask, SegmentationTask

    if config.task == "segmentation":
        from hcast.data.dataset_factory import segmentation_dataset_name

        name = segmentation_dataset_name(args.data)
        if _is_garment_scenes(args.data):
            from hcast.data.garment_scenes import GARMENT_SCENE_CLASSES

            classes = GARMENT_SCENE_CLASSES
        elif name is not None:
            from hcast.data.segmentation import ADE20K_NUM_CLASSES, VOC_CLASSES

            classes = [str(i) for i in range(ADE20K_NUM_CLASSES)] if name == "ade20k" else VOC_CLASSES
        else:
            raise UsageError(f"--data {args.data!r}: segmentation fine-tuning reads garment-scenes, voc2012, "
                             "voc2012-aug or ade20k.")
        return SegmentationTask(len(classes), list(classes), ignore_index=config.ignore_index,
                                convention="spml" if name in ("voc2012", "voc2012-aug") else "mmseg")
    taxonomy = load_taxonomy(args.taxonomy, data=args.data, data_root=args.data_root)
    if taxonomy is None:
        raise UsageError("--taxonomy FILE is required for an image folder (see `hcast finetune --help`).")
    return ClassificationTask(taxonomy)


def _is_garment_scenes(data: str) -> bool:
    return str(data).lower().replace("_", "-") in ("garment-scenes", "garmentscenes")


def _finetune_datasets(args: argparse.Namespace, settings: Dict[str, Any], config: Any, task: Any):
    """``(train_set, val_set)`` of ``hcast finetune``: the benchmark / image folder /
    Fashion-MNIST splits (``hcast.data.create_train_val_datasets``, untransformed: the
    task adds timm's transforms), or segmentation items (normalised image tensors and label
    maps: GarmentScenes built in memory; VOC / ADE20K read with random scaled crops of
    ``--input-size`` for training and padded crops of it for validation)."""
    if config.task == "classification":
        from hcast.data import create_train_val_datasets

        return create_train_val_datasets(
            args.data, None, None, taxonomy=task.taxonomy, train_samples=settings["train_samples"],
            val_samples=settings["val_samples"], val_fraction=args.val_fraction, seed=config.seed,
            data_root=args.data_root)
    if _is_garment_scenes(args.data):
        import torch

        from hcast.data.garment_scenes import GarmentScenes

        size = config.input_size or 64
        sets = [GarmentScenes(split, settings[f"{split}_samples"] or default, size, seed=config.seed,
                              fashion_root=args.data_root, **settings["scenes"])
                for split, default in (("train", 4000), ("val", 500))]
        return [torch.utils.data.TensorDataset(*scenes.tensors()) for scenes in sets]
    from hcast.data import create_dataset
    from hcast.data.segmentation import SegmentationTransform

    if not config.input_size:
        raise UsageError("--input-size: segmentation fine-tuning on VOC / ADE20K needs the crop size (512 in the "
                         "recipes).")
    crop = config.input_size
    train = create_dataset(args.data, args.data_root, "train", SegmentationTransform(
        train=True, crop_size=crop, flip=config.hflip > 0, ignore_index=config.ignore_index),
        num_samples=settings["train_samples"], seed=config.seed)
    val = create_dataset(args.data, args.data_root, "val", SegmentationTransform(
        train=True, crop_size=crop, scale_range=None, flip=False, ignore_index=config.ignore_index),
        num_samples=settings["val_samples"], seed=config.seed)
    return train, val


def parse_kwargs(items: Sequence[str]) -> Dict[str, Any]:
    """``["a=1", "b=[1,2]", "c=gelu"]`` -> ``{"a": 1, "b": [1, 2], "c": "gelu"}`` (JSON when it parses).

    Raises:
        ValueError: for an item without ``=``.
    """
    out: Dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--model-kwargs: expected KEY=VALUE items, got {item!r}.")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cmd_finetune(args: argparse.Namespace) -> int:
    """``hcast finetune``: parse, build the task, the model and the datasets, check what the
    user named (superpixels, resume checkpoint) before anything is read or written, then
    :func:`hcast.train.finetune`."""
    import torch

    from hcast.train import (check_batch_size, check_resume, destroy_distributed, finetune, init_distributed,
                             resume_checkpoint_path, superpixel_settings)

    config, settings, sources = resolve_finetune_config(args)
    if args.print_config:
        print(json.dumps({**settings, "recipe": args.recipe, "config": config.to_dict(), "sources": sources}, indent=2))
        return 0
    for flag, value in (("--data", args.data), ("--output", args.output)):
        if not value:
            raise UsageError(f"{flag} is required (unless --print-config); see `hcast finetune --help`.")
    _check_output(args.output, "--output", folder=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    from hcast.train.outputs import CHECKPOINT_NAME

    out = Path(args.output)
    resume = resume_checkpoint_path(args.resume, out) if args.resume else None
    if resume is not None and not resume.is_file():
        raise UsageError(f"--resume: no checkpoint at {str(resume)!r}; pass a file written by `hcast finetune` "
                         f"(OUTPUT/{CHECKPOINT_NAME}).")
    ctx = init_distributed(config.device)
    task = _finetune_task(args, config)
    _seed_everything(config.seed + ctx.rank)
    with user_input(f"model {settings['model']!r}"):
        model, model_args = _build_model_for_finetune(settings["model"], settings["pretrained"], args, config, task)
    with user_input(f"data {args.data!r}"):
        train_set, val_set = _finetune_datasets(args, settings, config, task)
    try:  # finetune() checks it too; here before the superpixel settings and the checkpoint are read
        check_batch_size(len(train_set), config, ctx.world_size)
    except ValueError as e:
        raise UsageError(str(e).replace("batch_size", "--batch-size")) from None
    with user_input("--num-segments" if config.num_segments else "superpixels",
                    {"input_size": "--input-size"}):  # before any image is read
        superpixel_settings(model, config, task)
    try:
        with user_input(f"--resume {str(resume)!r}" if resume else "finetune", {"resume": "--resume"}):
            if resume is not None:  # a broken checkpoint, or one of another taxonomy, is the user's file: name it
                from hcast.weights import load_checkpoint

                check_resume(load_checkpoint(resume, map_location="cpu"), resume, model, task)
        try:
            finetune(model, train_set, val_set, task, config, output=out, resume=resume, model_args=model_args)
        except ValueError as e:  # the checkpoint checks finetune() runs before training
            if not str(e).startswith("resume:"):
                raise
            raise UsageError(str(e).replace("resume:", "--resume:", 1)) from None
    finally:
        destroy_distributed()
    return 0


# ----------------------------------------------------------------------------- evaluate


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="per-level accuracy, FPA, TICE and mistake severity of a model on a dataset",
        description=(
            "Evaluate MODEL on DATA with plain (per-level argmax) and consistent (best taxonomy path) decoding: "
            "per-level accuracy, full-path accuracy (FPA), tree-based inconsistency error (TICE) and mistake "
            "severity (mean LCA height of fine-level mistakes). Prints a table; --json writes the numbers."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL",
                   help="timm name (a tagged one such as hcast_small.living17 loads its released weights), "
                        "hf-hub: id or folder written by finetune")
    p.add_argument("data", metavar="DATA",
                   help="a benchmark (breeds-living17, breeds-nonliving26, breeds-entity13, breeds-entity30, cub200, "
                        "fgvc-aircraft, inat21-mini, imagenet-1k, cifar100; its folder in --data-root), "
                        "'fashion-mnist' or an image folder (its test/ or val/ sub-folder if present)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"),
                   help="benchmarks: val and test both give the split the H-CAST authors report on")
    p.add_argument("--taxonomy", default=None, help="taxonomy JSON (default: the model's, the benchmark's, or "
                   "Fashion-MNIST's); it must agree with the taxonomy the model stores unless --replace-taxonomy")
    p.add_argument("--replace-taxonomy", action="store_true",
                   help="let --taxonomy replace the model's stored taxonomy although they disagree")
    p.add_argument("--data-root", default=None,
                   help="a benchmark's folder in its native layout; Fashion-MNIST: a folder with the IDX files")
    p.add_argument("--no-pretrained", action="store_true",
                   help="a registry MODEL with random weights instead of its released ones (the output says so)")
    p.add_argument("--num-samples", type=int, default=None, help="class-balanced subset size (default: all)")
    p.add_argument("--batch-size", "-b", type=int, default=256)
    p.add_argument("--max-tokens", type=int, default=None,
                   help="CAST / H-CAST: evaluate in the fixed-budget mode, N superpixel tokens per image with padded "
                        "ones masked out (each image's logits independent of its batch; N above the largest id); "
                        "0: the original mode (tokens padded to the batch's largest id, attended to). "
                        "Default: the model's own (max_tokens in its config, else the original mode)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="auto")
    _add_precision(p)
    p.add_argument("--json", dest="json_out", default=None, metavar="OUT", help="write the metrics as JSON")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--miou", dest="miou_convention", default=None, choices=("mmseg", "spml"),
                   help="segmentation data (voc2012, voc2012-aug, ade20k): the mean-IoU convention (default: spml "
                        "for VOC, as CAST's VOC numbers; mmseg for ADE20K); MODEL is then a segmenter folder written by "
                        "hcast finetune (a segmentation recipe) or hcast.train.segmentation.save_segmenter, or a "
                        "cast_seg_* name")
    p.add_argument("--slide", type=int, nargs=2, default=None, metavar=("CROP", "STRIDE"),
                   help="segmentation data: sliding-window inference (Segmenter's ADE20K / Context protocol: 512 341) "
                        "instead of whole images")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    import torch
    from torch.utils.data import DataLoader

    from hcast import train as engine
    from hcast.data import (SkipUnreadable, WithSuperpixels, benchmark_dataset_name, collate_readable, create_dataset,
                            create_eval_transform)

    _check_output(args.json_out, "--json")
    if args.threads:
        torch.set_num_threads(args.threads)
    from hcast.data.dataset_factory import segmentation_dataset_name

    if segmentation_dataset_name(args.data) is not None:
        return _evaluate_segmentation(args)
    ctx = engine.init_distributed(args.device)
    with user_input(f"model {args.model!r}"):
        model, taxonomy, _, weights = load_model_for_inference(args.model, str(ctx.device), args.taxonomy,
                                                               not args.no_pretrained, args.replace_taxonomy)
    benchmark = benchmark_dataset_name(args.data)
    if taxonomy is None and benchmark is None:
        taxonomy = load_taxonomy(data=args.data)
    if taxonomy is None and benchmark is None:
        raise UsageError(f"no taxonomy for {args.model!r}; pass --taxonomy FILE.")
    tf = create_eval_transform(model)
    sp = _superpixel_transform(model, args)
    if args.max_tokens is not None:
        _set_token_budget(model, args.max_tokens, args.model, sp.num_segments if sp is not None else None)
    if sp is not None:  # a patch model (Hier-ViT) reads the images alone
        tf = WithSuperpixels(tf, sp)
    with user_input(f"data {args.data!r}"):
        dataset = create_dataset(args.data, args.data_root, split=args.split, transform=tf, taxonomy=taxonomy,
                                 num_samples=args.num_samples)
    if benchmark is not None:
        # the benchmark's tree (checked equal to the model's) with its class names, which the model may lack
        taxonomy = getattr(dataset, "dataset", dataset).taxonomy
    # an unreadable image is left out of the metrics with a warning naming it (hcast.data.images)
    loader = DataLoader(SkipUnreadable(dataset), batch_size=args.batch_size, num_workers=args.workers,
                        sampler=engine.ShardSampler(len(dataset), ctx.rank, ctx.world_size), collate_fn=collate_readable)
    start = time.perf_counter()
    model, amp_dtype = _inference_model(model, args, ctx.device)
    try:
        metrics = engine.evaluate(model, loader, taxonomy, ctx.device, amp_dtype=amp_dtype,
                                  progress=ctx.is_main and not args.no_progress)
    except ValueError as e:
        # SLIC may return a few more superpixels than asked for: ids above --max-tokens are the flag's
        if not args.max_tokens or "max_tokens" not in str(e):
            raise
        raise UsageError(f"--max-tokens {args.max_tokens}: {e}") from None
    metrics.update(model=args.model, data=str(args.data), split=args.split, seconds=time.perf_counter() - start,
                   weights=weights)
    if ctx.is_main:
        print(f"{args.model} on {args.data} ({args.split}):")
        print(weights)
        print(engine.format_metrics_table(metrics), flush=True)
        skipped = len(dataset) - metrics["num_samples"]
        if skipped:
            print(f"hcast evaluate: {skipped} of {len(dataset)} images could not be read (named above) and are left "
                  "out of these numbers; replace or remove them.", file=sys.stderr)
        if args.json_out:
            engine.write_json(metrics, args.json_out)
            print(f"metrics written to {args.json_out}")
    engine.destroy_distributed()
    return 0


def _set_token_budget(model: Any, max_tokens: int, name: str, num_segments: Optional[int] = None) -> None:
    """``--max-tokens``: the fixed-budget mode (N >= 1) or the original mode (0).

    Raises:
        UsageError: a model without superpixel tokens; N < 0; N above one token per input pixel
            (:func:`hcast.ops.superpixels.max_token_budget`: refused before anything is
            allocated); N below the ``num_segments`` superpixels each image gets (the ids
            would not fit).
    """
    from hcast.ops.superpixels import max_token_budget

    if not hasattr(model, "max_tokens"):
        raise UsageError(f"--max-tokens: {name!r} ({type(model).__name__}) has no superpixel tokens; "
                         "the flag is for CAST and H-CAST models.")
    if max_tokens < 0:
        raise UsageError(f"--max-tokens: expected 0 (the original mode) or a token budget >= 1, got {max_tokens}.")
    height, width = _data_config(model)["input_size"][-2:]
    ceiling = max_token_budget(height, width)
    if max_tokens > ceiling:
        raise UsageError(f"--max-tokens: expected at most {ceiling} (one token per pixel of the model's {height}x{width} "
                         f"inputs; a larger budget only pads), got {max_tokens}; pass the images' superpixel count "
                         f"({num_segments or 'the model num_segments'}) or a little more, or 0 for the original mode.")
    if max_tokens and num_segments and max_tokens < num_segments:
        raise UsageError(f"--max-tokens: {max_tokens} is below the {num_segments} superpixels each image gets (the "
                         f"budget must be above the largest superpixel id); pass --max-tokens {num_segments} or more, "
                         "or 0 for the original mode.")
    model.max_tokens = max_tokens or None


# ----------------------------------------------------------------------------- precision (evaluate, predict)


def _add_precision(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", default=None, choices=("fp32", "bf16", "auto"),
                   help="the model through hcast.optimize_for_inference: fp32, bf16 (weights cast once), or auto: "
                        "bf16 on CUDA and on CPUs with native bf16 (AVX-512 BF16 / AMX), fp32 elsewhere "
                        "(default: auto)")


def _inference_model(model: Any, args: argparse.Namespace, device: Any) -> Tuple[Any, Any]:
    """``(model to run, autocast dtype or None)``: --precision goes through
    :func:`hcast.optimize_for_inference` (prints the path it chose)."""
    from hcast.inference import optimize_for_inference

    return optimize_for_inference(model, args.precision or "auto", verbose=True), None


# ----------------------------------------------------------------------------- predict


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="the top taxonomy path of images, with names and probabilities per level",
        description=(
            "Predict the most probable taxonomy path (consistent decoding) of each IMAGE and print, per level, "
            "the class name and its probability. --segment OUT.png draws the image, its superpixels and the "
            "model's four grouping levels (one row per image)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", help="timm name, hf-hub: id or folder written by finetune")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="image files")
    p.add_argument("--taxonomy", default=None, help="taxonomy JSON (default: the model's); it must agree with the "
                   "taxonomy the model stores unless --replace-taxonomy")
    p.add_argument("--replace-taxonomy", action="store_true",
                   help="let --taxonomy replace the model's stored taxonomy although they disagree (its names label "
                        "the outputs)")
    p.add_argument("--no-pretrained", action="store_true",
                   help="a registry MODEL with random weights instead of its released ones (the output says so)")
    p.add_argument("--top-k", type=int, default=1, help="also list the k best paths")
    p.add_argument("--segment", default=None, metavar="OUT.png", help="write the segmentation picture")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", dest="json_out", default=None, metavar="OUT", help="write the predictions as JSON")
    _add_precision(p)
    p.set_defaults(func=cmd_predict)


def _load_images(paths: Sequence[str], model: Any, sp: Any):
    """(images, their superpixels by ``sp`` or None without it (a patch model), data_cfg, paths read)."""
    import torch

    from hcast.data import UnreadableImageError, create_eval_transform, load_image

    data_cfg = _data_config(model)
    tf = create_eval_transform(model)
    images, read = [], []
    for path in paths:
        if not Path(path).is_file():
            print(f"hcast predict: skipped {path!r}: no such file.", file=sys.stderr)
            continue
        try:  # hcast's one image reader: 16-bit images scaled, an unreadable file named and skipped
            images.append(tf(load_image(path)))
        except UnreadableImageError as e:
            print(f"hcast predict: skipped {path!r}: not an image PIL can read ({e}).", file=sys.stderr)
            continue
        read.append(path)
    if not images:
        return None, None, data_cfg, read
    batch = torch.stack(images)
    segments = None if sp is None else torch.stack([sp(im) for im in images])
    return batch, segments, data_cfg, read


def cmd_predict(args: argparse.Namespace) -> int:
    from hcast import train as engine
    from hcast.train import predict_paths

    _check_output(args.json_out, "--json")
    _check_output(args.segment, "--segment")
    device = engine.resolve_device(args.device)
    with user_input(f"model {args.model!r}"):
        model, taxonomy, _, weights = load_model_for_inference(args.model, str(device), args.taxonomy,
                                                               not args.no_pretrained, args.replace_taxonomy)
    if taxonomy is None:
        raise UsageError(f"no taxonomy for {args.model!r}; pass --taxonomy FILE.")
    print(weights)
    if args.segment and not hasattr(model, "forward_segments"):
        raise UsageError(f"--segment: {args.model!r} ({type(model).__name__}) does not segment images; "
                         "use a CAST or H-CAST model.")
    images, segments, data_cfg, read = _load_images(args.images, model, _superpixel_transform(model, args))
    if images is None:
        raise UsageError(f"none of the {len(args.images)} IMAGE arguments could be read (see above).")
    import torch

    fast, dtype = _inference_model(model, args, device)
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        results = predict_paths(fast, images.to(device), None if segments is None else segments.to(device),
                                taxonomy, top_k=args.top_k)
    for path, rows in zip(read, results):
        print(f"{path}:")
        for rank, row in enumerate(rows, 1):
            parts = [f"{lv['level']}: {lv['name']} ({100 * lv['probability']:.1f}%)" for lv in row["levels"]]
            print(f"  {rank}. " + "  ->  ".join(parts) + f"   [path p={row['score']:.3f}]")
    if args.json_out:
        engine.write_json([{"image": p, "paths": r} for p, r in zip(read, results)], args.json_out)
    if args.segment:
        from hcast.visualize import save_segmentation_figure

        seg = model.forward_segments(images.to(device), segments.to(device))
        titles = ["predicted: " + " / ".join(lv["name"] for lv in rows[0]["levels"]) for rows in results]
        save_segmentation_figure(images, seg["superpixels"].cpu(), [m.cpu() for m in seg["segmentations"]],
                                 args.segment, mean=data_cfg["mean"], std=data_cfg["std"],
                                 titles=[f"{Path(p).name}: {t}" for p, t in zip(read, titles)])
        print(f"segmentation picture written to {args.segment}")
    if len(read) < len(args.images):
        print(f"hcast predict: {len(args.images) - len(read)} of {len(args.images)} images skipped.", file=sys.stderr)
        return 2
    return 0


# ----------------------------------------------------------------------------- convert / push


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="turn an original CAST/H-CAST checkpoint into a timm model folder",
        description=(
            "Convert a checkpoint in the original repositories' format (a .pth holding 'model' or 'state_dict') "
            "into OUTPUT/config.json + model.safetensors, loadable with timm.create_model('local-dir:OUTPUT', pretrained=True) "
            "and uploadable with `hcast push`."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="the original .pth file")
    p.add_argument("output", metavar="OUTPUT", help="output folder")
    p.add_argument("--model", default=None, help="architecture, e.g. hcast_small (default: guessed by the converter)")
    p.add_argument("--taxonomy", default=None, help="taxonomy JSON to store with the weights")
    p.add_argument("--level-classes", type=int, nargs="+", default=None, metavar="N",
                   help="classes per level, finest first (default: read from the checkpoint's heads)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUTPUT folder")
    p.set_defaults(func=cmd_convert)


def cmd_convert(args: argparse.Namespace) -> int:
    from hcast.models import convert_checkpoint

    taxonomy = load_taxonomy(args.taxonomy) if args.taxonomy else None
    with user_input(f"checkpoint {args.checkpoint!r}"):
        out = convert_checkpoint(args.checkpoint, args.output, model_name=args.model, level_classes=args.level_classes,
                                 taxonomy=taxonomy, overwrite=args.overwrite)
    print(f"converted {args.checkpoint} -> {out} (timm.create_model('local-dir:{out}', pretrained=True))")
    return 0


def _add_push(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "push",
        help="upload a model folder to the Hugging Face Hub (timm format)",
        description=(
            "Upload MODEL (usually a folder written by finetune or convert) to REPO_ID with "
            "timm.models.push_to_hf_hub: config.json (architecture, level classes, taxonomy, superpixel "
            "settings) + model.safetensors + a model card. Uses your huggingface_hub login (or --token); "
            "HF_ENDPOINT selects another hub server."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", help="folder, timm name or hf-hub: id")
    p.add_argument("repo_id", metavar="REPO_ID", help="e.g. my-user/hcast-tiny-fashion-mnist")
    p.add_argument("--token", default=None)
    p.add_argument("--private", action="store_true")
    p.add_argument("--revision", default=None)
    p.add_argument("--commit-message", default="Add hcast model")
    p.set_defaults(func=cmd_push)


def cmd_push(args: argparse.Namespace) -> int:
    from timm.models import push_to_hf_hub

    with user_input(f"model {args.model!r}"):
        model, taxonomy, config = load_model(args.model)
    model_config: Dict[str, Any] = {}
    if taxonomy is not None:
        model_config["taxonomy"] = taxonomy.to_dict()
        if taxonomy.names[0] is not None:
            model_config["label_names"] = list(taxonomy.names[0])
    model_args = config.get("model_args") or None
    model_card = {"tags": ["image-classification", "timm", "hcast", "hierarchical-classification"],
                  "license": "mit", "library_name": "timm"}
    url = push_to_hf_hub(model, args.repo_id, commit_message=args.commit_message, token=args.token,
                         revision=args.revision, private=args.private, model_config=model_config,
                         model_args=model_args, model_card=model_card, safe_serialization=True)
    print(f"pushed {args.model} to {args.repo_id}: {url}")
    return 0


# ----------------------------------------------------------------------------- export


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write a CAST / H-CAST model as one graph: ONNX or a torch.export program",
        description=(
            "Export MODEL taking (images (B,3,H,W) float32, segments (B,H,W) int64) with a dynamic batch "
            "dimension, in the fixed-budget mode (--max-tokens superpixel tokens, padded ones masked out) and "
            "without value checks. Superpixels are computed outside the graph; see docs/deployment.md."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", help="timm name, hf-hub: id or folder written by finetune")
    p.add_argument("--format", default="onnx", choices=("onnx", "torch-export"))
    p.add_argument("--output", "-o", required=True, metavar="FILE", help="the file to write (.onnx or .pt2)")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="superpixel token budget, above the largest id (default: the model's num_segments, 196)")
    p.add_argument("--img-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="input size of the graph (default: the model's)")
    p.add_argument("--no-pretrained", action="store_true", help="a registry MODEL with random weights")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from hcast.export import export_model, prepare_for_export

    _check_output(args.output, "--output")  # before the model is loaded and exported
    with user_input(f"model {args.model!r}"):
        model, _, _, weights = load_model_for_inference(args.model, "cpu", None, not args.no_pretrained)
    from hcast.models import CAST

    if not isinstance(model, CAST):
        raise UsageError(f"{args.model!r} is a {type(model).__name__}; export takes CAST / H-CAST "
                         "models (a Hier-ViT exports as any timm ViT, with torch.export or torch.onnx directly).")
    img_size = tuple(args.img_size) if args.img_size else None
    with user_input("export", {"max_tokens": "--max-tokens", "img_size": "--img-size"}):
        prepare_for_export(model, args.max_tokens, img_size)  # the budget and size, checked before exporting
    try:
        path = export_model(model, args.output, args.format, max_tokens=args.max_tokens, img_size=img_size)
    except OSError as e:  # writing the file (a full disk, a read-only folder): name the file
        message = e.strerror or str(e)
        raise UsageError(f"--output: {message}" if str(args.output) in message
                         else f"--output {args.output!r}: {message}") from e
    print(weights)
    print(f"exported {args.model} as {args.format} to {path}")
    return 0


# ----------------------------------------------------------------------------- benchmark


def _add_benchmark(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "benchmark",
        help="images/s of each inference path of MODEL on this machine, and its agreement with fp32 eager",
        description=(
            "Time MODEL on scikit-image's sample photos through each inference path (fp32 eager, bf16 autocast, "
            "hcast.optimize_for_inference, optionally compiled), round-robin, superpixels computed beforehand as a "
            "data loader would; print images/s, top-1 agreement and the largest relative difference of the "
            "outputs from fp32 eager, with the CPU's capability flags and the load average."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", help="timm name, hf-hub: id or folder written by finetune")
    p.add_argument("--batch-size", "-b", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3, help="timed rounds (the best counts)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--compile", action="store_true", help="also time the inductor-compiled paths (minutes)")
    p.add_argument("--no-pretrained", action="store_true", help="a registry MODEL with random weights")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_benchmark)


def _sample_photos(batch: int, size: Tuple[int, int], mean: Sequence[float], std: Sequence[float]) -> Any:
    """(B, 3, H, W) float32 normalised scikit-image sample photos, cycled to ``batch``."""
    import numpy as np
    import torch
    from skimage import data as skdata
    from skimage.transform import resize

    sources = (skdata.astronaut, skdata.coffee, skdata.chelsea, skdata.rocket, skdata.immunohistochemistry)
    imgs = [resize(sources[i % len(sources)](), size, anti_aliasing=True) for i in range(batch)]
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float()
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def cmd_benchmark(args: argparse.Namespace) -> int:
    import torch

    from hcast.inference import benchmark_inference
    from hcast.precision import describe_cpu

    if args.batch_size < 1:
        raise UsageError(f"--batch-size: expected an int >= 1, got {args.batch_size}.")
    if args.repeats < 1:
        raise UsageError(f"--repeats: expected an int >= 1, got {args.repeats}.")
    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads: expected an int >= 1, got {args.threads}.")
        torch.set_num_threads(args.threads)
    with user_input(f"model {args.model!r}"):
        model, _, _, weights = load_model_for_inference(args.model, args.device, None, not args.no_pretrained)
    cfg = _data_config(model)
    images = _sample_photos(args.batch_size, tuple(cfg["input_size"][-2:]), cfg["mean"], cfg["std"])
    images = images.to(args.device)
    segments = model.superpixels(images) if callable(getattr(model, "superpixels", None)) else None
    print(weights)
    print(describe_cpu())
    print(f"load average (1, 5, 15 min): {' '.join(Path('/proc/loadavg').read_text().split()[:3])}"
          if Path("/proc/loadavg").exists() else "load average: unknown")
    print(f"{args.model}, batch {args.batch_size}, {tuple(images.shape[-2:])}, {torch.get_num_threads()} threads, "
          f"superpixels computed beforehand; best of {args.repeats} round-robin rounds", flush=True)
    rows = benchmark_inference(model.eval(), images, segments, repeats=args.repeats, compile=args.compile)
    width = max(len(r["path"]) for r in rows)
    print(f"{'path':<{width}}  {'images/s':>9}  {'vs fp32':>7}  {'top-1 agr.':>10}  {'rel. diff':>9}")
    base = rows[0]["images_per_s"]
    for r in rows:
        print(f"{r['path']:<{width}}  {r['images_per_s']:9.2f}  {r['images_per_s'] / base:6.2f}x  "
              f"{100 * r['top1_agreement']:9.1f}%  {r['max_rel_diff']:9.2e}")
    for r in rows:
        print(f"  {r['path']}: {r['detail']}")
    return 0


# ----------------------------------------------------------------------------- entry point


def _evaluate_segmentation(args: argparse.Namespace) -> int:
    """``hcast evaluate`` on a segmentation dataset: per-class IoU and mIoU, single scale."""
    from torch.utils.data import Subset

    from hcast.data import create_dataset
    from hcast.data.dataset_factory import segmentation_dataset_name
    from hcast.train.segmentation import evaluate_segmentation_dataset, load_segmenter
    from hcast._io import write_json

    name = segmentation_dataset_name(args.data)
    with user_input(f"model {args.model!r}"):
        model, class_names = load_segmenter(args.model, "cpu" if args.device == "auto" else args.device)
    with user_input(f"data {args.data!r}"):
        dataset = create_dataset(name, args.data_root, split=args.split)
    if model.num_classes != dataset.num_classes:
        raise UsageError(f"model {args.model!r} has {model.num_classes} classes, {name} has {dataset.num_classes}; "
                         f"evaluate a segmenter trained on {name}.")
    if args.num_samples:
        dataset = Subset(dataset, range(min(args.num_samples, len(dataset))))
    convention = args.miou_convention or ("spml" if name.startswith("voc") else "mmseg")
    names = list(getattr(getattr(dataset, "dataset", dataset), "classes", class_names))
    with user_input(f"data {args.data!r}"):  # a bad label file is named by the loader
        metric = evaluate_segmentation_dataset(model, dataset, model.num_classes, names, convention,
                                               progress=not args.no_progress, window=args.slide)
    mode = f"sliding {args.slide[0]}/{args.slide[1]}" if args.slide else "whole images"
    print(f"{args.model} on {name} ({args.split}, {len(dataset)} images, single scale, {mode}):")
    print(metric.table())
    scores = metric.compute()
    print(f"mIoU: {100 * float(scores['miou']):.1f}")
    if args.json_out:
        write_json(dict(model=args.model, data=name, split=args.split, convention=convention,
                        miou=float(scores["miou"]), iou=dict(zip(names, map(float, scores["iou"]))),
                        pixel_accuracy=float(scores["pixel_accuracy"])), args.json_out)
        print(f"metrics written to {args.json_out}")
    return 0


def _add_segment(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "segment",
        help="per-pixel label maps and a picture (image, hierarchical segments, semantic map) for images",
        description=("Segment IMAGEs with MODEL (a segmenter folder written by `hcast finetune` on a segmentation "
                     "recipe or hcast.train.segmentation.save_segmenter, "
                     "e.g. by scripts/segmentation_job.sh, or a cast_seg_* timm name): writes OUT/<name>_labels.png "
                     "(uint8 class ids per pixel) and OUT/<name>_segmentation.png (the image, CAST's hierarchical "
                     "segments, the semantic map with a legend)."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL")
    p.add_argument("images", metavar="IMAGE", nargs="+")
    p.add_argument("--out", default="segments", help="output folder")
    p.add_argument("--size", type=int, default=None, help="resize so the longer side is SIZE pixels (default: as is)")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=cmd_segment)


def cmd_segment(args: argparse.Namespace) -> int:
    import torch

    from hcast.train.segmentation import load_segmenter, segment_images

    if args.threads:
        torch.set_num_threads(args.threads)
    with user_input(f"model {args.model!r}"):
        model, class_names = load_segmenter(args.model)
    for path in args.images:
        if not Path(path).is_file():
            raise UsageError(f"image {path!r}: no such file.")
    with user_input("images"):
        results = segment_images(model, class_names, args.images, args.out, args.size)
    for r in results:
        print(f"{r['image']}: {', '.join(r['classes'])} -> {r['labels']}, {r['picture']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``hcast`` argument parser (sub-commands finetune, evaluate, predict, convert, push, export,
    benchmark)."""
    from hcast import __version__

    parser = argparse.ArgumentParser(
        prog="hcast",
        description="CAST and H-CAST for timm: fine-tune, evaluate, predict, convert and push hierarchical classifiers.",
    )
    parser.add_argument("--version", action="version", version=f"hcast {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in (_add_finetune, _add_evaluate, _add_predict, _add_convert, _add_push, _add_export,
                _add_benchmark, _add_segment):
        add(sub)
    return parser


class _WriteWatch:
    """``sys.stdout`` while ``main`` runs: the stream itself, recording the ``OSError`` a write
    or flush raised (``>/dev/full``, a closed pipe), so that ``main`` can tell it from others."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.error = stream, None

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        try:
            self.stream.flush()
        except OSError as e:
            self.error = e
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``hcast`` command with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    2 with one line on stderr for the user's mistakes (:class:`UsageError`); 1 with one line
    when standard output cannot be written (``>/dev/full``: no traceback, and an exit
    flush that cannot fail again; a closed pipe such as ``| head`` ends quietly).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    watch = _WriteWatch(sys.stdout) if sys.stdout is not None else None
    if watch is not None:
        sys.stdout = watch  # type: ignore[assignment]
    try:
        status = int(args.func(args) or 0)
        if watch is not None:
            watch.flush()  # a write error of buffered output is reported here, not at exit
        return status
    except UsageError as e:
        # the user's mistake: one line; anything else is a bug and keeps its traceback (exit 1)
        print(f"hcast {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if watch is None or watch.error is not e:
            raise
        try:  # Python's recipe for a broken stdout: point it at devnull, so the flush at exit cannot fail again
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, watch.stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):  # not a file descriptor (captured in tests)
            pass
        if e.errno != errno.EPIPE and sys.stderr is not None:
            print(f"hcast {args.command}: error: cannot write to standard output: {e.strerror or e}; "
                  "redirect it to a file or device with space.", file=sys.stderr)
        return 1
    finally:
        if watch is not None and sys.stdout is watch:
            sys.stdout = watch.stream


if __name__ == "__main__":
    sys.exit(main())
