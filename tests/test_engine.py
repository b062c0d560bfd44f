"""The training / evaluation engine: a real (tiny) H-CAST on Fashion-MNIST, metrics,
atomic checkpoints and timm-loadable model folders."""
from __future__ import annotations

import json

import pytest
import timm
import torch
from torch.utils.data import DataLoader

import hcast  # noqa: F401  (registers the models)
from hcast import train as engine
from hcast.data import FashionMNIST, WithSuperpixels, create_transform, stratified_indices
from hcast.data.fashion_mnist import DEBIAN_FASHION_MNIST_DIR
from hcast.hierarchy import fashion_mnist_taxonomy
from hcast.hierarchy.losses import HCASTLoss

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)",
)]



# A small H-CAST that trains in seconds on 32x32 images (4x4 grid, 16 superpixels).
TINY = dict(embed_dim=32, depths=(1, 1, 1, 1), num_heads=2, img_size=32)


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    return timm.create_model("hcast_tiny", level_classes=(10, 5), **TINY)


def fashion_loader(num: int, split: str = "train", batch_size: int = 16, train: bool = False, seed: int = 0):
    from hcast.ops import SuperpixelTransform

    labels = FashionMNIST(split=split).targets
    tf = WithSuperpixels(create_transform(32, is_training=train), SuperpixelTransform(num_segments=16, method="slic"))
    ds = FashionMNIST(split=split, transform=tf, indices=stratified_indices(labels, num, seed=seed))
    return DataLoader(ds, batch_size=batch_size, shuffle=False)


def test_train_one_epoch_lowers_the_loss_on_real_images():
    model = tiny_model()
    taxonomy = fashion_mnist_taxonomy()
    loader = fashion_loader(32, batch_size=16)
    batches = list(loader)  # the same two batches every epoch
    criterion = HCASTLoss(kl_weight=0.5)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def loss_on_batches():
        # Train mode: BatchNorm's batch statistics, as in the steps being tested (its running
        # statistics after 40 steps on 32 images are another matter, and differ with the thread
        # count); the same dropout masks before and after.
        model.train()
        torch.manual_seed(1)
        paths = taxonomy.paths()
        with torch.no_grad():
            return sum(
                float(criterion(list(model.forward_levels(x, s)), engine.level_targets(y, paths)))
                for (x, s), y in batches
            ) / len(batches)

    before = loss_on_batches()
    for epoch in range(20):
        stats = engine.train_one_epoch(model, batches, criterion, optimizer, taxonomy, torch.device("cpu"),
                                       epoch=epoch, clip_grad=1.0, progress=False)
    after = loss_on_batches()
    assert stats["steps"] == 2 and stats["num_updates"] == 2 and stats["images_per_s"] > 0
    assert after < 0.8 * before, (before, after)


def test_train_one_epoch_with_mixup_and_device_superpixels():
    from hcast.hierarchy.mixup import HierarchicalMixup
    from hcast.ops import superpixels

    model = tiny_model()
    taxonomy = fashion_mnist_taxonomy()
    images = [(x, y) for (x, _), y in fashion_loader(16, batch_size=8)]  # no loader superpixels
    calls = []

    def device_superpixels(x):
        calls.append(x.shape)
        return superpixels(x, num_segments=16, method="torch_slic")

    mixup = HierarchicalMixup(mixup_alpha=0.8, cutmix_alpha=1.0, level_classes=taxonomy.num_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 ** step)
    stats = engine.train_one_epoch(model, images, HCASTLoss(), optimizer, taxonomy, torch.device("cpu"),
                                   scheduler=sched, mixup=mixup, superpixel_fn=device_superpixels, progress=False)
    assert calls == [(8, 3, 32, 32)] * 2
    assert stats["steps"] == 2 and torch.isfinite(torch.tensor(stats["loss"]))
    assert stats["lr"] == pytest.approx(1e-3 * 0.25)
    # superpixels from the loader: cutmix pastes the partner's ids with the image box
    cutmix = HierarchicalMixup(mixup_alpha=0.0, cutmix_alpha=1.0, level_classes=taxonomy.num_classes)
    seen = []
    model.register_forward_pre_hook(lambda m, inputs: seen.append(inputs[1].clone()))
    batches = list(fashion_loader(16, batch_size=8))
    engine.train_one_epoch(model, batches, HCASTLoss(), optimizer, taxonomy, torch.device("cpu"), mixup=cutmix,
                           progress=False)
    assert len(seen) == 2 and seen[0].shape == (8, 32, 32)
    assert any(not torch.equal(a, b) for a, ((_, b), _) in zip(seen, batches))  # ids were cut and pasted


def test_evaluate_matches_the_functional_metrics():
    from hcast.hierarchy import metrics as M
    from hcast.hierarchy.decoding import argmax_decode, consistent_decode

    model = tiny_model(seed=1).eval()
    taxonomy = fashion_mnist_taxonomy()
    loader = fashion_loader(40, split="test", batch_size=16)
    result = engine.evaluate(model, loader, taxonomy, torch.device("cpu"))
    logits, fine = [], []
    with torch.no_grad():
        for (x, s), y in loader:
            logits.append(model.forward_levels(x, s))
            fine.append(y)
    logits = [torch.cat([lg[level] for lg in logits]) for level in range(2)]
    targets = engine.level_targets(torch.cat(fine), taxonomy.paths())
    plain = argmax_decode(logits)
    assert result["num_samples"] == 40
    assert result["level_names"] == list(taxonomy.level_names)
    assert result["plain"]["fpa"] == pytest.approx(M.full_path_accuracy(plain, targets))
    assert result["plain"]["tice"] == pytest.approx(M.tree_inconsistency_error(plain, taxonomy))
    assert result["plain"]["level_accuracy"] == pytest.approx(M.level_accuracy(plain, targets))
    consistent = consistent_decode(logits, taxonomy)
    assert result["consistent"]["fpa"] == pytest.approx(M.full_path_accuracy(consistent, targets))
    assert result["consistent"]["tice"] == 0.0
    table = engine.format_metrics_table(result)
    assert "consistent" in table and "FPA" in table and "40 images" in table


def test_shard_sampler_reads_every_index_once():
    shards = [list(engine.ShardSampler(11, r, 3)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(11))
    assert [len(engine.ShardSampler(11, r, 3)) for r in range(3)] == [4, 4, 3]
    with pytest.raises(ValueError, match="rank"):
        engine.ShardSampler(4, 2, 2)


def test_training_precision(monkeypatch):
    cpu = torch.device("cpu")
    from hcast.precision import resolve_precision

    assert resolve_precision("fp32", cpu, training=True) is None
    assert resolve_precision("bf16", cpu, training=True) is torch.bfloat16
    assert resolve_precision("fp16", cpu, training=True) is torch.float16
    monkeypatch.setattr("hcast.precision.cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", cpu, verbose=False, training=True) is torch.bfloat16
    monkeypatch.setattr("hcast.precision.cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", cpu, verbose=False, training=True) is None
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("off", cpu, training=True)
    with pytest.raises(ValueError, match="precision"):
        engine.FinetuneConfig(precision="fp8")


def test_checkpoint_write_crash_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint-latest.pth"
    engine.save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)
    real_save = torch.save

    def crashing_save(obj, f, *args, **kwargs):
        # write part of a checkpoint, then die as a full disk or a kill would
        real_save({"epoch": 2, "w": torch.zeros(1000)}, f, *args, **kwargs)
        with open(f, "r+b") as fh:
            fh.truncate(100)
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(OSError, match="No space"):
        engine.save_checkpoint({"epoch": 2, "w": torch.zeros(1000)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    state = engine.load_checkpoint(path)
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-latest.pth"]  # no temp file left behind
    engine.save_checkpoint({"epoch": 3}, path)
    assert engine.load_checkpoint(path)["epoch"] == 3
    with pytest.raises(FileNotFoundError, match="resume"):
        engine.load_checkpoint(tmp_path / "missing.pth")


def test_model_folder_reloads_through_timm_local_dir(tmp_path):
    model = tiny_model(seed=2).eval()
    taxonomy = fashion_mnist_taxonomy()
    engine.save_model_folder(model, tmp_path / "run", taxonomy, model_args={"level_classes": [10, 5]},
                             extra_config={"pretrained_cfg": {"superpixel_method": "slic", "num_segments": 16}})
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["architecture"] == "hcast_tiny"
    assert config["label_names"][0] == "T-shirt/top"
    assert config["taxonomy"] == taxonomy.to_dict()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json", "model.safetensors"]
    reloaded = timm.create_model(f"local-dir:{tmp_path / 'run'}", pretrained=True).eval()
    assert reloaded.pretrained_cfg["superpixel_method"] == "slic"
    assert reloaded.pretrained_cfg["num_segments"] == 16
    (x, s), _ = next(iter(fashion_loader(4, split="test", batch_size=4)))
    with torch.no_grad():
        for a, b in zip(model.forward_levels(x, s), reloaded.forward_levels(x, s)):
            torch.testing.assert_close(a, b)


def test_time_budget_shortens_the_cosine_to_fit():
    from timm.scheduler import CosineLRScheduler

    clock = [0.0]
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    scheduler = CosineLRScheduler(optimizer, t_initial=90, lr_min=1e-5, warmup_t=10, warmup_lr_init=1e-5,
                                  warmup_prefix=True, t_in_epochs=False)
    budget = engine.TimeBudget(60, 100, scheduler, warmup_updates=10, reserve_updates=5, calibration_updates=10,
                               skip=2, clock=lambda: clock[0])
    for update in range(1, 101):
        clock[0] += 1.0  # one second per update
        scheduler.step_update(update)
        if budget(update):
            break
    # measured 1 s/update at update 12: 60 s - 5 s reserved - 12 s spent leaves 43 updates
    assert budget.seconds_per_update == pytest.approx(1.0)
    assert update == budget.total_updates == 55
    assert scheduler.t_initial == 45  # the cosine now ends at the new last update
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-5, rel=1e-3)
    roomy = engine.TimeBudget(1000, 30, calibration_updates=5, skip=1, clock=lambda: clock[0])
    stops = []
    for update in range(1, 31):
        clock[0] += 1.0
        stops.append(roomy(update))
    assert stops.index(True) == 29 and roomy.total_updates == 30  # enough time: the plan stands
    with pytest.raises(ValueError, match="seconds"):
        engine.TimeBudget(0, 10)


def test_time_budget_follows_a_machine_that_slows_down():
    from timm.scheduler import CosineLRScheduler

    clock = [0.0]
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    scheduler = CosineLRScheduler(optimizer, t_initial=195, lr_min=1e-5, warmup_t=5, warmup_lr_init=1e-5,
                                  warmup_prefix=True, t_in_epochs=False)
    budget = engine.TimeBudget(100, 200, scheduler, warmup_updates=5, calibration_updates=10, skip=2,
                               replan_every=10, clock=lambda: clock[0])
    for update in range(1, 201):
        clock[0] += 0.4 if update <= 30 else 1.2  # the machine gets three times slower
        scheduler.step_update(update)
        if budget(update):
            break
    assert budget.shortened and update == budget.total_updates < 200
    assert clock[0] <= 100 + 1.2  # within the budget (one update of slack)
    # re-planned on the way, so the learning rate annealed instead of being cut mid-cosine
    assert optimizer.param_groups[0]["lr"] < 0.1 * 1e-3


class _TwoLevelLinear(torch.nn.Module):
    """Per-level logits (10 garments, 5 groups) from the flattened image: the loop's contract
    without a superpixel model."""

    def __init__(self):
        super().__init__()
        self.fine, self.coarse = torch.nn.Linear(3 * 32 * 32, 10), torch.nn.Linear(3 * 32 * 32, 5)

    def forward(self, images):
        x = images.flatten(1)
        return self.fine(x), self.coarse(x)


@pytest.mark.parametrize("stderr", ["closed", "not a terminal"])
def test_train_one_epoch_without_a_terminal_or_a_stderr(stderr, monkeypatch):
    """Progress bars asked for, but stderr is None (`2>&-`, some launchers: isatty() on None
    crashed) or a log file (the bar's postfix was set on the plain loader at step 5); an
    all-unreadable batch (None) is skipped and an odd batch (an unreadable image left out)
    loses one image to mixup's pairing."""
    import io
    import sys

    from hcast.hierarchy.mixup import HierarchicalMixup

    data = FashionMNIST(split="train", transform=create_transform(32), indices=list(range(28)))
    images = torch.stack([data[i][0] for i in range(28)])
    labels = torch.as_tensor([data[i][1] for i in range(28)])
    batches = [(images[i:i + 4], labels[i:i + 4]) for i in range(0, 24, 4)] + [None, (images[24:27], labels[24:27])]
    monkeypatch.setattr(sys, "stderr", None if stderr == "closed" else io.StringIO())
    torch.manual_seed(0)
    model, taxonomy = _TwoLevelLinear(), fashion_mnist_taxonomy()
    mixup = HierarchicalMixup(mixup_alpha=0.8, cutmix_alpha=0.0, level_classes=taxonomy.num_classes)
    stats = engine.train_one_epoch(model, batches, HCASTLoss(), torch.optim.SGD(model.parameters(), lr=0.01),
                                   taxonomy, torch.device("cpu"), mixup=mixup, progress=True)
    assert stats["steps"] == 7 and stats["num_updates"] == 7  # six full batches, the odd one as two images
    assert stats["images_per_s"] > 0 and torch.isfinite(torch.tensor(stats["loss"]))


def test_train_one_epoch_with_progress_and_stderr_a_file(tmp_path):
    """The issue's case as users hit it: a job whose stderr is a file (not a terminal) calls
    train_one_epoch(progress=True) from Python; it must run to its last step (the bar's postfix
    used to be set on the plain loader at step 5)."""
    import subprocess
    import sys

    code = (
        "import torch\n"
        "from hcast.hierarchy import HCASTLoss, fashion_mnist_taxonomy\n"
        "from hcast.train import train_one_epoch\n"
        "torch.manual_seed(0)\n"
        "model = torch.nn.Linear(12, 15)\n"
        "class Levels(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__(); self.net = model\n"
        "    def forward(self, x):\n"
        "        out = self.net(x.flatten(1)); return out[:, :10], out[:, 10:]\n"
        "m = Levels()\n"
        "batches = [(torch.randn(4, 3, 2, 2), torch.randint(0, 10, (4,))) for _ in range(12)]\n"
        "stats = train_one_epoch(m, batches, HCASTLoss(), torch.optim.SGD(m.parameters(), lr=0.01),\n"
        "                        fashion_mnist_taxonomy(), torch.device('cpu'), progress=True)\n"
        "print('steps', stats['steps'])\n")
    log = tmp_path / "stderr.log"
    with open(log, "w") as stderr:
        out = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=stderr, text=True,
                             timeout=300)
    assert out.returncode == 0, log.read_text()[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "steps 12"
