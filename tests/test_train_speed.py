"""Faster fine-tuning: the SDPA backend chosen from the run's own steps, and a schedule
that fills its time budget (issue 24)."""
from __future__ import annotations

import pytest
import timm
import torch

import hcast  # noqa: F401  (registers the models)
from hcast import train as engine
from hcast.hierarchy.losses import HCASTLoss
from hcast.hierarchy.taxonomy import Taxonomy
from hcast.train.loop import AttentionBackendChooser


def test_time_budget_extends_the_cosine_to_the_end_of_the_budget():
    from timm.scheduler import CosineLRScheduler

    clock = [0.0]
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    scheduler = CosineLRScheduler(optimizer, t_initial=10, lr_min=1e-5, warmup_t=10, warmup_lr_init=1e-5,
                                  warmup_prefix=True, t_in_epochs=False)
    budget = engine.TimeBudget(60, 20, scheduler, warmup_updates=10, reserve_updates=5, calibration_updates=10,
                               skip=2, clock=lambda: clock[0], extend=True)
    for update in range(1, 1000):
        clock[0] += 1.0  # one second per update: 20 planned updates would stop after 20 s
        scheduler.step_update(update)
        if budget(update):
            break
    # measured 1 s/update at update 12: 60 s - 5 s reserved - 12 s spent leaves 43 more updates
    assert budget.extended and not budget.shortened
    assert update == budget.total_updates == 55
    assert scheduler.t_initial == 45  # the cosine ends at the new last update
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-5, rel=1e-3)
    # without extend the plan is the ceiling, as before
    clock[0] = 0.0
    capped = engine.TimeBudget(60, 20, calibration_updates=10, skip=2, clock=lambda: clock[0])
    stops = []
    for update in range(1, 21):
        clock[0] += 1.0
        stops.append(capped(update))
    assert stops.index(True) == 19 and capped.total_updates == 20 and not capped.extended


def test_time_budget_of_a_steps_run_shortens_the_poly_decay():
    # the segmentation recipes' budget (hcast.train.finetune with val_every=0): measured from the
    # first update, re-planned after 5 and 20 updates and every 50, the poly decay over the new total
    clock = [0.0]
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    scheduler = engine.PolyLR(optimizer, t_initial=3000, warmup_t=20)
    budget = engine.TimeBudget(100.0, 3000, scheduler, skip=0, calibration_updates=5, replan_at=(20,),
                               replan_every=50, clock=lambda: clock[0])
    plans = {}
    for update in range(1, 3001):
        clock[0] += 2.0 if update <= 5 else 0.5  # a slow start, then 0.5 s per update
        scheduler.step_update(update)
        stop = budget(update)
        plans[update] = budget.total_updates
        if stop:
            break
    assert plans[4] == 3000 and plans[5] == 50  # 10 s for 5 updates: 100 s hold 50
    assert plans[20] == 114 and plans[50] == 153  # 17.5 s for 20: 100 / 0.875; 32.5 s for 50: 100 / 0.65
    assert plans[49] == 114 and plans[100] == 173 and plans[150] == 181
    assert scheduler.t_initial == budget.total_updates == update == 181 and clock[0] <= 100.0
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("faster", ["default", "math"])
def test_attention_chooser_keeps_the_faster_backend(faster):
    chooser = AttentionBackendChooser(skip=2, trials=3)
    while chooser.chosen is None:
        with chooser.backend():
            math_on = not torch.backends.cuda.flash_sdp_enabled()  # sdpa_kernel([MATH]) turns flash off
        name = "math" if math_on else "default"
        chooser.record(1.0 if name == faster else 1.5)
    assert chooser.steps == 2 + 2 * 3
    assert chooser.chosen == faster and chooser.medians[faster] == 1.0
    with chooser.backend():
        assert torch.backends.cuda.flash_sdp_enabled() == (faster == "default")
    assert f"attention backend for training: {faster}" in chooser.describe()
    with pytest.raises(ValueError, match="trials"):
        AttentionBackendChooser(trials=0)


def test_training_loop_chooses_a_backend_on_its_own_steps(one_torch_thread):
    torch.manual_seed(0)
    taxonomy = Taxonomy.from_paths([[0, 0], [1, 0], [2, 1], [3, 1]], level_names=("fine", "coarse"))
    model = timm.create_model("hcast_tiny", level_classes=(4, 2), img_size=32, depths=(1, 1, 1, 1),
                              num_clusters=(8, 4, 2, 2), embed_dim=32, num_heads=2)
    images = torch.randn(8, 3, 32, 32)
    segments = (torch.arange(32)[:, None] // 8 * 4 + torch.arange(32)[None, :] // 8).expand(8, 32, 32).contiguous()
    fine = torch.arange(8) % 4
    loader = [((images, segments), fine)] * 6
    chooser = AttentionBackendChooser(skip=1, trials=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    stats = engine.train_one_epoch(model, loader, HCASTLoss(), optimizer, taxonomy, torch.device("cpu"),
                                   progress=False, attention=chooser)
    assert stats["steps"] == 6 and chooser.chosen in ("default", "math")
    assert len(chooser.times["default"]) == len(chooser.times["math"]) == 2


def test_both_backends_give_the_same_gradients(one_torch_thread):
    """The chooser may switch backends mid-run: both compute the same attention."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    model = timm.create_model("hcast_tiny", level_classes=(4, 2), img_size=32, depths=(1, 1, 1, 1),
                              num_clusters=(8, 4, 2, 2), embed_dim=32, num_heads=2).train()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    images = torch.randn(2, 3, 32, 32)
    segments = (torch.arange(32)[:, None] // 8 * 4 + torch.arange(32)[None, :] // 8).expand(2, 32, 32).contiguous()
    grads = []
    for backends in ([SDPBackend.FLASH_ATTENTION, SDPBackend.MATH], [SDPBackend.MATH]):
        model.zero_grad()
        with sdpa_kernel(backends):
            sum(o.square().sum() for o in model(images, segments)).backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_main_job_recipe_fills_its_budget_and_chooses_attention():
    config = engine.get_recipe("fashion-mnist").config
    assert config.fill_budget and config.time_budget == 9.0 and config.attention == "auto"
    with pytest.raises(ValueError, match="attention"):
        engine.FinetuneConfig(attention="flash")


def test_attention_chooser_state_round_trips():
    """A resumed run goes on with the same backend at the same update."""
    whole = AttentionBackendChooser(skip=1, trials=2)
    for t in (1.0, 1.0, 2.0):
        whole.record(t)
    resumed = AttentionBackendChooser(skip=1, trials=2)
    resumed.load_state_dict(whole.state_dict())
    for t in (1.0, 2.0):
        assert resumed._current() == whole._current()
        whole.record(t)
        resumed.record(t)
    assert resumed.chosen == whole.chosen == "default" and resumed.state_dict() == whole.state_dict()
