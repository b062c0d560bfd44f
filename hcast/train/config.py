"""The settings of a fine-tuning run, in one dataclass that round-trips through JSON.

:class:`FinetuneConfig`'s defaults are a short, light fine-tuning run (what ``hcast
finetune`` did before recipes existed); :mod:`hcast.train.recipes` holds the H-CAST
authors' settings per benchmark, the CAST authors' segmentation fine-tuning and the
jobs'. ``hcast finetune --recipe NAME`` starts from a recipe and lets any flag override
it; the resolved config is saved as ``finetune_config.json`` next to the model, so a run
can be repeated exactly.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

__all__ = ["FinetuneConfig"]

_SUPERPIXEL_MODES = ("loader", "device", "cache")
_TASKS = ("classification", "segmentation")
_PRECISIONS = ("fp32", "bf16", "fp16", "auto")


@dataclass
class FinetuneConfig:
    """Every hyper-parameter of a fine-tuning run (see docs/training.md for each recipe's values).

    The task:

    Attributes:
        task: ``"classification"`` (H-CAST / CAST / Hier-ViT heads on a taxonomy: per-level
            cross-entropy + tree-path KL, FPA) or ``"segmentation"`` (a CAST segmenter:
            pixel cross-entropy with ``ignore_index``, mIoU); :mod:`hcast.train.tasks`.
        ignore_index: segmentation: the label without a loss or a score (255).
        segmentation_head: segmentation: the head ``hcast finetune`` builds on the encoder
            (:class:`hcast.models.segmentation_heads.CASTSegmenter`: ``"softmax"``, SPML's, the
            VOC recipe; ``"mask_transformer"``, Segmenter's, ADE20K; ``"linear"``).

    Optimisation (``timm.optim.create_optimizer_v2``; a cosine schedule with a linear
    warm-up via ``timm.scheduler.CosineLRScheduler``, or a poly decay, stepped per update;
    :func:`hcast.train.create_optimizer_and_scheduler`):

    Attributes:
        epochs: passes over the training set.
        steps: optimizer updates of the whole run (the segmentation recipes count
            iterations, e.g. VOC's 30k); when set, the run takes the epochs it needs and
            ends after ``steps`` updates, and ``epochs`` is not used.
        batch_size: images per process and step.
        lr: peak learning rate. With ``lr_base_batch`` set it is scaled by
            ``batch_size * world_size / lr_base_batch`` (DeiT's linear scaling, which the
            H-CAST authors kept: ``deit/main_suppix_hier.py``, 512).
        lr_base_batch: the global batch size ``lr`` is given for; ``None``: no scaling.
        min_lr: learning rate at the end of the cosine.
        warmup_epochs: linear warm-up length, in epochs (fractions allowed).
        warmup_steps: the warm-up in updates instead (``None``: ``warmup_epochs``).
        sched: ``"cosine"`` (to ``min_lr``, after the warm-up) or ``"poly"``
            (``lr * (1 - t / total) ** poly_power``, warm-up included in ``t``:
            :class:`hcast.train.optim.PolyLR`).
        poly_power: the poly exponent (0.9).
        warmup_lr: learning rate at the first update.
        weight_decay: AdamW's decoupled weight decay (not on norms, biases, position
            embeddings: timm's ``param_groups_weight_decay``).
        opt: a ``timm.optim`` optimizer name (``"adamw"``; ``"momentum"``: SGD with
            momentum, no Nesterov, as the CAST authors' segmentation fine-tuning).
        momentum: the momentum of SGD-like optimizers.
        head_lr_scale: segmentation: learning-rate multiplier of the head (SPML: 10).
        clip_grad: max global gradient norm; ``None``/0: no clipping.
        kl_weight: weight of H-CAST's tree-path KL term.
        label_smoothing: smoothing of every level's targets.
        mixup, cutmix: Beta alphas of mixup / cutmix (0: off); hierarchical, every level.
        mixup_prob: probability of mixing a batch.
        mixup_switch_prob: probability of cutmix instead of mixup when both are on.
        ema_decay: decay of an EMA of the weights per update (``timm.utils.ModelEmaV3``);
            0: no EMA.
        ema_eval: validate (and choose the best epoch) with the EMA weights, as timm's
            ``train.py`` does; the authors validated the raw weights (False).
        repeated_aug: repeats of each image per epoch (``timm``'s ``RepeatAugSampler``,
            DeiT's repeated augmentation); 0 or 1: off.
        drop_path: stochastic depth rate given to the model when ``hcast finetune`` builds it
            (``drop_path_rate``); ``None``: the model's. A model you build yourself takes
            its own.

    Data pipeline (``timm.data.create_transform``; ``None`` fields take the model's
    ``pretrained_cfg``):

    Attributes:
        input_size: image side in pixels.
        scale_min: smallest area fraction of the random resized crop (largest: 1).
        hflip: probability of a horizontal flip.
        auto_augment: a timm auto-augment policy, e.g. ``"rand-m9-mstd0.5-inc1"``
            (RandAugment); ``None``: off.
        color_jitter: color jitter strength; timm skips it when ``auto_augment`` is set.
        train_interpolation: ``"bilinear"``, ``"bicubic"`` or ``"random"``.
        reprob, remode, recount: random erasing probability, mode (``"pixel"``: normal
            noise per pixel) and count, after normalisation.
        eval_crop_pct: validation resizes the short side to ``size / eval_crop_pct`` and
            takes the center crop (the authors: 0.875); ``None``: the whole image squashed
            to the input size, no crop (small images such as Fashion-MNIST's).
        eval_mean, eval_std: per-channel normalisation of validation images, and of the
            saved model folder's data config (what ``hcast evaluate`` then uses); ``None``: the
            model's, as in training. The H-CAST authors evaluate iNat21 with iNat's own
            statistics while training with ImageNet's (``hcast-inat21``).
        superpixels: where superpixels are computed: ``"loader"`` (DataLoader workers, on
            the augmented image, as the original), ``"device"`` (batched ``torch_slic``
            on the training device) or ``"cache"`` (once, before training: flip-only
            augmentation, ``scale_min=1``).
        superpixel_method, num_segments: ``None``: the model's ``pretrained_cfg``.

    Run settings:

    Attributes:
        precision: autocast of the forward pass: ``"fp32"`` (none), ``"bf16"``, ``"fp16"``
            (with a ``GradScaler``) or ``"auto"``: bf16 on CUDA (fp16 on GPUs without bf16)
            and on CPUs with native bf16 (AVX-512 BF16 / AMX), fp32 elsewhere
            (:func:`hcast.precision.resolve_precision`, ``training=True``). The loss, farthest point
            sampling and the superpixel means stay in float32 / float64.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``.
        workers: DataLoader worker processes per process.
        seed: seeds every epoch's randomness (with the epoch and the rank), so a resumed
            run replays the epochs an uninterrupted one would have run.
        max_steps: stop each epoch after this many steps (quick runs).
        time_budget: minutes for the training loop (on ``budget_clock``); the schedule is
            shortened to fit after timing the first updates. ``None``: no limit.
        budget_clock: ``"wall"`` (the clock) or ``"cpu"`` (CPU seconds of this process,
            user + system: the work a machine does in ``budget / cores`` when nothing else
            runs on it, so a budget means the same on a machine shared with other jobs).
        val_every: validate (and keep the best model) every this many epochs; 0: only
            after the last (the segmentation recipes: the final model, as the authors').
        fill_budget: with ``time_budget``, also lengthen the run past ``epochs`` so that
            the cosine ends with the budget (a faster machine trains longer instead of
            stopping early); the epoch count then follows from the measured step time.
        attention: the SDPA backend of the training steps: ``"auto"`` (on CPUs, measure
            the default and the math backend on the run's first steps and keep the faster;
            :class:`hcast.train.AttentionBackendChooser`; PyTorch's choice on GPUs),
            ``"default"`` or ``"math"``.
        progress: tqdm bars (only when stderr is a terminal).
        recipe: the recipe this config started from (a label, for the saved JSON).
    """

    task: str = "classification"
    ignore_index: int = 255
    segmentation_head: str = "softmax"
    epochs: int = 10
    steps: Optional[int] = None
    batch_size: int = 64
    lr: float = 1e-3
    lr_base_batch: Optional[int] = None
    min_lr: float = 1e-5
    warmup_epochs: float = 1.0
    warmup_steps: Optional[int] = None
    warmup_lr: float = 1e-5
    sched: str = "cosine"
    poly_power: float = 0.9
    weight_decay: float = 0.05
    opt: str = "adamw"
    momentum: float = 0.9
    head_lr_scale: float = 1.0
    clip_grad: Optional[float] = 1.0
    kl_weight: float = 0.5
    label_smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    ema_decay: float = 0.0
    ema_eval: bool = False
    repeated_aug: int = 0
    drop_path: Optional[float] = None
    input_size: Optional[int] = None
    scale_min: float = 0.7
    hflip: float = 0.5
    auto_augment: Optional[str] = None
    color_jitter: Optional[float] = None
    train_interpolation: str = "bilinear"
    reprob: float = 0.0
    remode: str = "pixel"
    recount: int = 1
    eval_crop_pct: Optional[float] = None
    eval_mean: Optional[Tuple[float, float, float]] = None
    eval_std: Optional[Tuple[float, float, float]] = None
    superpixels: str = "loader"
    superpixel_method: Optional[str] = None
    num_segments: Optional[int] = None
    precision: str = "auto"
    device: str = "auto"
    workers: int = 2
    seed: int = 0
    max_steps: Optional[int] = None
    time_budget: Optional[float] = None
    budget_clock: str = "wall"
    fill_budget: bool = False
    val_every: int = 1
    attention: str = "auto"
    progress: bool = True
    recipe: Optional[str] = field(default=None)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check values that would otherwise fail deep inside a run.

        Raises:
            ValueError: naming the field, the value and what is expected.
        """
        def need(ok: bool, name: str, expected: str) -> None:
            if not ok:
                raise ValueError(f"{name}: expected {expected}, got {getattr(self, name)!r}.")

        def finite(name: str) -> bool:  # NaN and inf fail every comparison below or deep inside a run
            value = getattr(self, name)
            return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)
                                     and math.isfinite(value))

        for name in ("lr", "min_lr", "warmup_lr", "warmup_epochs", "weight_decay", "clip_grad", "kl_weight",
                     "label_smoothing", "mixup", "cutmix", "mixup_prob", "mixup_switch_prob", "ema_decay",
                     "drop_path", "scale_min", "hflip", "color_jitter", "reprob", "eval_crop_pct", "time_budget",
                     "poly_power", "momentum", "head_lr_scale"):
            need(finite(name), name, "a finite number")
        need(self.task in _TASKS, "task", f"one of {_TASKS}")
        need(self.epochs >= 1, "epochs", "at least 1")
        need(self.steps is None or self.steps >= 1, "steps", "None or at least 1 update")
        need(self.warmup_steps is None or self.warmup_steps >= 0, "warmup_steps", "None or >= 0 updates")
        need(self.sched in ("cosine", "poly"), "sched", "'cosine' or 'poly'")
        need(self.poly_power > 0, "poly_power", "a positive exponent")
        need(0.0 <= self.momentum < 1.0, "momentum", "a momentum in [0, 1)")
        need(self.head_lr_scale > 0, "head_lr_scale", "a positive multiplier")
        need(self.budget_clock in ("wall", "cpu"), "budget_clock", "'wall' or 'cpu'")
        need(isinstance(self.val_every, int) and self.val_every >= 0, "val_every", "0 (only after the last epoch) "
             "or a number of epochs")
        need(isinstance(self.ignore_index, int), "ignore_index", "an integer label")
        need(self.segmentation_head in ("softmax", "mask_transformer", "linear"), "segmentation_head",
             "'softmax', 'mask_transformer' or 'linear'")
        need(self.batch_size >= 1, "batch_size", "at least 1")
        need(self.lr > 0, "lr", "a positive learning rate")
        need(self.lr_base_batch is None or self.lr_base_batch > 0, "lr_base_batch", "None or a positive batch size")
        need(self.min_lr >= 0 and self.warmup_lr >= 0, "min_lr", "min_lr and warmup_lr >= 0")
        need(self.warmup_epochs >= 0, "warmup_epochs", ">= 0")
        need(self.weight_decay >= 0, "weight_decay", "a weight decay >= 0")
        # clip_grad_norm_ with a negative max norm multiplies the gradients by a negative factor: ascent
        need(self.clip_grad is None or self.clip_grad >= 0, "clip_grad", "None or 0 (off) or a positive max norm")
        need(self.kl_weight >= 0, "kl_weight", "a weight >= 0")
        need(0.0 <= self.label_smoothing < 1.0, "label_smoothing", "a smoothing in [0, 1)")
        need(self.drop_path is None or 0.0 <= self.drop_path < 1.0, "drop_path", "None or a rate in [0, 1)")
        need(0.0 <= self.mixup_prob <= 1.0, "mixup_prob", "a probability in [0, 1]")
        need(0.0 <= self.mixup_switch_prob <= 1.0, "mixup_switch_prob", "a probability in [0, 1]")
        need(self.color_jitter is None or self.color_jitter >= 0, "color_jitter", "None or a strength >= 0")
        need(self.recount >= 1, "recount", "at least 1")
        # numpy seeds take 0 .. 2**32 - 1; the rank is added to it
        need(isinstance(self.seed, int) and 0 <= self.seed < 2 ** 31, "seed", "an integer in [0, 2**31)")
        need(self.input_size is None or self.input_size >= 1, "input_size", "None or a positive image side in pixels")
        need(self.num_segments is None or self.num_segments >= 1, "num_segments",
             "None (the model's) or a positive number of superpixels")
        need(self.max_steps is None or self.max_steps >= 1, "max_steps", "None or at least 1")
        need(0.0 < self.scale_min <= 1.0, "scale_min", "an area fraction in (0, 1]")
        need(0.0 <= self.hflip <= 1.0, "hflip", "a probability in [0, 1]")
        need(0.0 <= self.reprob <= 1.0, "reprob", "a probability in [0, 1]")
        need(self.eval_crop_pct is None or 0.0 < self.eval_crop_pct <= 1.0, "eval_crop_pct", "None or in (0, 1]")
        for name in ("eval_mean", "eval_std"):
            value = getattr(self, name)
            if value is not None:
                values = tuple(value) if isinstance(value, (list, tuple)) else ()
                need(len(values) == 3 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                              for v in values), name, "None or three numbers (R, G, B)")
                setattr(self, name, tuple(float(v) for v in values))
        need(self.eval_std is None or min(self.eval_std) > 0, "eval_std", "positive standard deviations")
        need((self.eval_mean is None) == (self.eval_std is None), "eval_mean", "eval_mean and eval_std set together")
        need(0.0 <= self.ema_decay < 1.0, "ema_decay", "0 (off) or a decay in (0, 1)")
        need(self.repeated_aug >= 0, "repeated_aug", "0 (off) or a repeat count")
        need(self.mixup >= 0 and self.cutmix >= 0, "mixup", "mixup and cutmix alphas >= 0")
        if (self.mixup > 0 or self.cutmix > 0) and self.batch_size % 2:
            raise ValueError(f"batch_size: expected an even batch size with mixup/cutmix (timm's Mixup pairs each "
                             f"image with its mirror in the batch), got {self.batch_size}.")
        need(self.superpixels in _SUPERPIXEL_MODES, "superpixels", f"one of {_SUPERPIXEL_MODES}")
        need(self.precision in _PRECISIONS, "precision", f"one of {_PRECISIONS}")
        need(self.workers >= 0, "workers", ">= 0")
        need(self.time_budget is None or self.time_budget > 0, "time_budget", "None or positive minutes")
        need(self.attention in ("auto", "default", "math"), "attention", "one of ('auto', 'default', 'math')")
        if self.superpixels == "cache" and self.scale_min != 1.0:
            raise ValueError(
                f"superpixels='cache' needs flip-only augmentation (scale_min=1), got scale_min={self.scale_min:g}: "
                "cached superpixels cannot follow random crops. Set scale_min=1 (--scale-min 1), or "
                "superpixels='loader' to keep the crops.")
        if self.superpixels == "cache" and (self.auto_augment or self.reprob > 0 or self.color_jitter):
            raise ValueError(
                "superpixels='cache' computes superpixels once, before any augmentation but a flip; "
                f"auto_augment={self.auto_augment!r}, color_jitter={self.color_jitter!r} and reprob={self.reprob:g} "
                "need superpixels='loader' (computed on the augmented image, as the H-CAST authors do).")

    def to_dict(self) -> Dict[str, Any]:
        """The config as a JSON-serialisable dict (field order kept)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "FinetuneConfig":
        """A config from :meth:`to_dict`'s output (e.g. a saved ``finetune_config.json``).

        Raises:
            ValueError: for a key that is not a field (a typo would otherwise be ignored).
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"FinetuneConfig: unknown field(s) {unknown}; the fields are {sorted(names)}.")
        return cls(**dict(values))

    def replace(self, **changes: Any) -> "FinetuneConfig":
        """A copy with ``changes`` applied (validated; unknown names raise ``ValueError``)."""
        return self.from_dict({**self.to_dict(), **changes})

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON."""
        return json.dumps(self.to_dict(), indent=2)
