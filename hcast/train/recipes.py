"""Named fine-tuning recipes: the H-CAST authors' runs per benchmark, the main job's, and
the segmentation recipes (``task="segmentation"``): the CAST authors' VOC (SPML) and
ADE20K (Segmenter) fine-tuning, ``cast-seg-voc`` / ``cast-seg-ade20k``, and the 2-core
segmentation job's ``garment-scenes`` (scripts/segmentation_job.py runs it).

Every value says where it comes from. "main_suppix_hier.py" is ``deit/main_suppix_hier.py``
and "README" the H-CAST authors' README in github:ngocquanai/HiOT at b1a222b (their last
commit); "main_hier.py" is ``deit/main_hier.py`` there (Hier-ViT). Their runs fine-tune an
ImageNet-pretrained CAST-small (``--finetune best_checkpoint.pth``) or DeiT-S for Hier-ViT.

What differs from their code, by design (docs/training.md):

* their cosine is stepped per epoch with the warm-up inside it (timm's
  ``create_scheduler``); here it is stepped per update with the warm-up before it;
* ``color_jitter=0.3`` is recorded as they set it, but timm (theirs and ours) skips color
  jitter whenever RandAugment is on, so it has no effect;
* repeated augmentation (their ``RASampler``, 3 repeats) only ran under
  ``--distributed``: on for BREEDS and iNat21 (4-GPU ``torchrun`` in the README), off for
  CUB and Aircraft (one-GPU ``python`` commands).

>>> from hcast.train import get_recipe
>>> get_recipe("hcast-breeds").config.lr
0.001
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List

from hcast.train.config import FinetuneConfig

__all__ = ["Recipe", "RECIPES", "get_recipe", "list_recipes"]


@dataclass(frozen=True)
class Recipe:
    """A named preset: the config, the model it was made for, and each value's source.

    Attributes:
        name: e.g. ``"hcast-breeds"``.
        description: one line.
        config: the :class:`FinetuneConfig`.
        model: the timm name the run starts from (``hcast finetune`` uses it when
            ``--model`` is not given).
        pretrained: start from the model's pretrained weights.
        data: ``hcast finetune`` data settings the recipe fixes (``train_samples``,
            ``val_samples``; ``scenes``: GarmentScenes' ``garments`` and ``scale``), empty for
            the full benchmark.
        sources: field name -> where its value comes from.
    """

    name: str
    description: str
    config: FinetuneConfig
    model: str
    pretrained: bool
    data: Dict[str, Any] = field(default_factory=dict)
    sources: Dict[str, str] = field(default_factory=dict)


_MAIN = "main_suppix_hier.py"
_HIER = "main_hier.py"

# the H-CAST authors' training, shared by every benchmark (main_suppix_hier.py defaults
# unless a README command overrides them)
_HCAST = dict(
    epochs=(100, "README (--epochs 100)"),
    batch_size=(256, "README (--batch-size 256, per GPU)"),
    lr=(5e-4, f"{_MAIN} --lr default"),
    lr_base_batch=(512, f"{_MAIN}: lr * batch_size * world_size / 512 unless --unscale-lr"),
    min_lr=(1e-5, f"{_MAIN} --min-lr default"),
    warmup_epochs=(5, f"{_MAIN} --warmup-epochs default"),
    warmup_lr=(1e-6, f"{_MAIN} --warmup-lr default"),
    weight_decay=(0.05, f"{_MAIN} --weight-decay default"),
    opt=("adamw", f"{_MAIN} --opt default"),
    clip_grad=(None, f"{_MAIN} --clip-grad default (none)"),
    kl_weight=(0.5, "README (--globalkl --gk_weight 0.5)"),
    label_smoothing=(0.1, f"{_MAIN} --smoothing default"),
    mixup=(0.8, f"{_MAIN} --mixup default"),
    cutmix=(1.0, f"{_MAIN} --cutmix default"),
    mixup_prob=(1.0, f"{_MAIN} --mixup-prob default"),
    mixup_switch_prob=(0.5, f"{_MAIN} --mixup-switch-prob default"),
    ema_decay=(0.99996, f"{_MAIN} --model-ema on by default, --model-ema-decay default"),
    ema_eval=(False, f"{_MAIN}: validates and keeps the best of the raw weights"),
    repeated_aug=(3, f"{_MAIN} --repeated-aug on by default (RASampler, 3 repeats) under --distributed"),
    drop_path=(0.1, f"{_MAIN} --drop-path default"),
    input_size=(224, f"{_MAIN} --input-size default"),
    scale_min=(0.08, "deit/dataset/datasets.py build_transform: timm create_transform's default scale"),
    hflip=(0.5, "timm create_transform default"),
    auto_augment=("rand-m9-mstd0.5-inc1", f"{_MAIN} --aa default"),
    color_jitter=(0.3, f"{_MAIN} --color-jitter default (skipped by timm under RandAugment)"),
    train_interpolation=("bicubic", f"{_MAIN} --train-interpolation default"),
    reprob=(0.25, f"{_MAIN} --reprob default"),
    remode=("pixel", f"{_MAIN} --remode default"),
    recount=(1, f"{_MAIN} --recount default"),
    eval_crop_pct=(0.875, f"{_MAIN} --eval-crop-ratio default"),
    superpixels=("loader", "deit/dataset/*_seeds.py: SEEDS in the data loader, on the augmented image"),
    superpixel_method=("seeds", "deit/dataset/*_seeds.py (OpenCV SEEDS)"),
    num_segments=(196, "README (--num-superpixels 196)"),
    seed=(0, f"{_MAIN} --seed default"),
)


# the CAST authors' segmentation fine-tuning (github:twke18/CAST): SPML on VOC, Segmenter on ADE20K
_SPML = "scripts/spml/finetune_cast.sh (SPML's VOC fine-tuning of CAST)"
_SEGMENTER = "scripts/segmenter/train_ade20k_cast.sh (Segmenter's ADE20K fine-tuning of CAST)"
_SEGMENTATION = dict(
    task=("segmentation", "semantic segmentation: pixel cross-entropy, mIoU"),
    sched=("poly", "SPML / Segmenter: poly decay, power 0.9, per iteration"),
    poly_power=(0.9, "SPML / Segmenter"),
    opt=("momentum", "SGD with momentum 0.9 (no Nesterov)"),
    momentum=(0.9, "SPML / Segmenter"),
    input_size=(512, "crop 512"),
    hflip=(0.5, "random horizontal flip"),
    clip_grad=(None, "no gradient clipping"),
    label_smoothing=(0.0, "plain cross-entropy"),
    val_every=(0, "the final model is evaluated, after training"),
    superpixels=("device", "superpixels of the augmented crop, computed per batch"),
    attention=("default", "PyTorch's SDPA choice"),
)


def _recipe(name: str, description: str, model: str, pretrained: bool, base: Dict[str, tuple],
            data: Dict[str, Any] = None, **overrides: tuple) -> Recipe:
    values = {**base, **overrides}
    config = FinetuneConfig(recipe=name, **{k: v for k, (v, _) in values.items()})
    return Recipe(name=name, description=description, config=config, model=model, pretrained=pretrained,
                  data=dict(data or {}), sources={k: src for k, (_, src) in values.items()})


RECIPES: Dict[str, Recipe] = {r.name: r for r in [
    _recipe("hcast-breeds", "H-CAST on BREEDS (Entity-13/30, Living-17, Non-Living-26), 4 GPUs x 256",
            "hcast_small.deit_in1k", True, _HCAST,
            lr=(1e-3, "README BREEDS command (--lr 0.001)"),
            warmup_lr=(1e-4, "README BREEDS command (--warmup-lr 0.0001)")),
    _recipe("hcast-cub", "H-CAST on CUB-200-2011, 1 GPU x 256", "hcast_small.deit_in1k", True, _HCAST,
            repeated_aug=(0, "README CUB command runs without --distributed: no RASampler")),
    _recipe("hcast-aircraft", "H-CAST on FGVC-Aircraft, 1 GPU x 256", "hcast_small.deit_in1k", True, _HCAST,
            lr=(1e-3, "README Aircraft command (--lr 0.001)"),
            warmup_lr=(1e-4, "README Aircraft command (--warmup-lr 0.0001)"),
            repeated_aug=(0, "README Aircraft command runs without --distributed: no RASampler")),
    _recipe("hcast-inat21", "H-CAST on iNat21-Mini, 4 GPUs x 256", "hcast_small.deit_in1k", True, _HCAST,
            eval_mean=((0.466, 0.471, 0.380), "deit/dataset/datasets.py build_transform: evaluation of INAT "
                       "normalises with iNat's statistics (training keeps timm's ImageNet default)"),
            eval_std=((0.195, 0.194, 0.192), "deit/dataset/datasets.py build_transform (INAT)")),
    _recipe("hier-vit", "Hier-ViT (DeiT-S with per-level heads), the authors' baseline on every benchmark",
            "hier_vit_small.fb_in1k", True, _HCAST,
            lr=(5e-4, f"{_HIER} --lr default (README Hier-ViT commands set none)"),
            warmup_lr=(1e-6, f"{_HIER} --warmup-lr default"),
            kl_weight=(0.0, "README Hier-ViT commands: no --globalkl (per-level cross-entropy only)"),
            superpixel_method=(None, "Hier-ViT reads square patches: no superpixels"),
            num_segments=(None, "Hier-ViT reads square patches: no superpixels")),
    _recipe("fashion-mnist", "the main job: hcast_tiny from scratch on 18k Fashion-MNIST images, 2 CPU cores, "
            "under 10 minutes", "hcast_tiny", False, {}, data={"train_samples": 18000, "val_samples": 500},
            epochs=(2, "main job (scripts/main_job.sh): what fits 10 minutes on 2 cores"),
            batch_size=(64, "main job"),
            lr=(6e-4, "main job: 2e-3 landed at 76-79% FPA, 6e-4 at 82-83% (docs/training.md#measured)"),
            min_lr=(1e-5, "main job"),
            warmup_epochs=(0.2, "main job"),
            weight_decay=(0.05, "main job (as the authors)"),
            scale_min=(1.0, "main job: flip-only, so superpixels are cached once"),
            superpixels=("cache", "main job: SEEDS once, before training (hcast.data.SuperpixelCache)"),
            superpixel_method=("seeds", "main job (as the authors)"),
            num_segments=(49, "main job: 64x64 inputs, one superpixel per 8x8 cell"),
            time_budget=(9.0, "main job: fine-tuning under 10 minutes"),
            fill_budget=(True, "main job: the cosine runs to the end of the budget, so a faster CPU learns longer "
                         "instead of stopping early (issue 24)"),
            progress=(False, "main job: a log, not a terminal")),
    _recipe("cast-seg-voc", "CAST segmenter fine-tuned on Pascal VOC 2012 train+ (SPML), 30k iterations x 4",
            "cast_seg_small.moco_coco_ep399", True, _SEGMENTATION,
            steps=(30000, f"{_SPML}: 30k iterations"), batch_size=(4, f"{_SPML}: batch 4"),
            lr=(3e-3, f"{_SPML}: lr 3e-3"), weight_decay=(1e-4, f"{_SPML}: weight decay 1e-4"),
            warmup_steps=(100, f"{_SPML}: 100 warm-up iterations"),
            head_lr_scale=(10.0, f"{_SPML}: the classifier at 10x the learning rate"),
            segmentation_head=("softmax", f"{_SPML}: SoftmaxClassifier")),
    _recipe("cast-seg-ade20k", "CAST segmenter fine-tuned on ADE20K (Segmenter), 64 epochs x 8",
            "cast_seg_small.deit_in1k", True, _SEGMENTATION,
            epochs=(64, f"{_SEGMENTER}: 64 epochs"), batch_size=(8, f"{_SEGMENTER}: batch 8"),
            lr=(1e-3, f"{_SEGMENTER}: lr 1e-3"), weight_decay=(0.0, f"{_SEGMENTER}: no weight decay"),
            warmup_steps=(0, f"{_SEGMENTER}: no warm-up"),
            segmentation_head=("mask_transformer", f"{_SEGMENTER}: mask transformer decoder")),
    _recipe("garment-scenes", "the segmentation job: a small CAST segmenter from scratch on GarmentScenes "
            "(Fashion-MNIST garments on photographs), 2 CPU cores", "cast_seg_tiny", False, _SEGMENTATION,
            data={"train_samples": 4000, "val_samples": 500, "scenes": {"garments": (1, 2), "scale": (0.45, 0.8)}},
            steps=(3000, "segmentation job: the plan the CPU budget shortens"),
            batch_size=(32, "segmentation job"), opt=("adamw", "segmentation job"),
            lr=(2e-3, "segmentation job"), weight_decay=(0.05, "segmentation job"),
            warmup_steps=(20, "segmentation job"), input_size=(64, "segmentation job: 64x64 scenes"),
            superpixels=("cache", "segmentation job: SEEDS once, before training, flipped with the images"),
            scale_min=(1.0, "segmentation job: flip-only, so superpixels are cached once"),
            superpixel_method=("seeds", "segmentation job"), num_segments=(49, "segmentation job"),
            time_budget=(14.0, "segmentation job: 840 CPU seconds = 7 minutes of 2 idle cores"),
            budget_clock=("cpu", "segmentation job: the same work on a machine shared with other jobs"),
            precision=("fp32", "segmentation job"), progress=(False, "segmentation job: a log, not a terminal")),
]}


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name`` (see :data:`RECIPES`).

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    if name not in RECIPES:
        raise ValueError(f"recipe: unknown recipe {name!r}; choose one of {', '.join(RECIPES)}.")
    return RECIPES[name]


def list_recipes() -> List[str]:
    """The recipe names, in :data:`RECIPES` order."""
    return list(RECIPES)
