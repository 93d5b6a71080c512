"""--time-budget: the plan (pure arithmetic on measured costs), the loop that trains exactly the
planned steps with a schedule that ends with them, and --resume keeping the plan.

Costs are injected (timings mean nothing on a shared test machine); the real measurement on a copy of
the model still runs before them in the end-to-end runs, so they also show it leaves the run alone.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cifar10_levels.runtime import time_budget_probe
from cifar10_levels.train import trainer
from cifar10_levels.cli.arguments import duration
from cifar10_levels.cli.train import train_main
from cifar10_levels.errors import UserError
from cifar10_levels.recipes import get_recipe
from cifar10_levels.runtime.time_budget import RESERVE_FRACTION, BudgetPlan, RunCosts, TrainingLength, \
    phase_steps, training_seconds

from helpers.budget import LR, SMALL, run
from helpers.commands import TINY_TRAIN

RUN = "L1-test_resnet-s42"


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("10m", 600), ("2h", 7200), ("1h30m", 5400),
                                           ("1h30m15s", 5415), ("45", 45), ("1.5h", 5400)])
def test_durations(text, seconds):
    assert duration(text) == seconds


@pytest.mark.parametrize("text", ["10 minutes", "", "m", "0s", "1d", "h1"])
def test_a_bad_duration_is_a_one_line_exit_2(text, tmp_path, capsys):
    assert train_main(["--time-budget", text, "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "--time-budget" in err
    assert list(tmp_path.iterdir()) == []


def test_one_phase_worked_example():
    # 190 s after the reserve, less 10 s spent and 20 s of final test: 160 s for steps of 1 s with
    # 5 s of validation after each 20-step epoch: 125 steps and 7 validations take 160 s, 126 steps 161 s
    costs = RunCosts((1.0,), epoch_end_seconds=5.0, final_eval_seconds=20.0, spent_seconds=10.0)
    assert phase_steps(190 / (1 - RESERVE_FRACTION), [4], 20, costs) == (125,)


@pytest.mark.parametrize("epochs, step_seconds", [((4,), (1.0,)), ((5, 15), (0.3, 1.0)),
                                                  ((0, 20), (0.0, 2.0)), ((5, 20), (0.5, 0.5))])
@pytest.mark.parametrize("budget", [120, 600, 3600, 7200])
def test_plans_fit_keep_each_phase_share_and_leave_no_room_for_more(epochs, step_seconds, budget):
    costs = RunCosts(step_seconds, epoch_end_seconds=3.0, final_eval_seconds=15.0, spent_seconds=20.0)
    steps = phase_steps(budget, epochs, 50, costs)
    available = budget * (1 - RESERVE_FRACTION) - 20.0 - 15.0
    used = training_seconds(steps, 50, costs)
    assert used <= available
    # growing the plan adds at most one step and one validation to each phase: none of that fits
    assert available - used < sum(step_seconds) + len(epochs) * 3.0
    trained = [(e, s) for e, s in zip(epochs, steps) if e]
    assert all(s > 0 for _, s in trained) and all(s == 0 for e, s in zip(epochs, steps) if not e)
    for (e1, s1), (e2, s2) in zip(trained, trained[1:]):  # each phase its share, to a step
        assert abs(s1 / e1 - s2 / e2) < max(1 / e1, 1 / e2)


def test_a_budget_too_small_for_a_step_of_each_phase_names_the_least_that_fits():
    costs = RunCosts((0.5, 2.0), epoch_end_seconds=3.0, final_eval_seconds=15.0, spent_seconds=20.0)
    with pytest.raises(UserError) as raised:
        phase_steps(30, (5, 15), 50, costs)
    message = str(raised.value)
    assert "\n" not in message and message.startswith("--time-budget 0m30s: too short")
    least = duration(re.search(r"give at least (\S+)$", message).group(1))
    assert phase_steps(least, (5, 15), 50, costs) >= (1, 1)
    with pytest.raises(UserError):
        phase_steps(least - 1, (5, 15), 50, costs)


class FakeLoader:
    def __init__(self, batches: int):
        self.batches, self.ended = batches, False

    def __len__(self) -> int:
        return self.batches

    def __iter__(self):
        yield from range(self.batches)

    def end(self) -> None:
        self.ended = True


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_a_planned_phase_ends_mid_epoch_and_its_schedule_ends_with_the_plan(grad_accum):
    recipe = get_recipe("1")
    per_epoch = 20 // grad_accum  # 20 batches a process per epoch, 2 processes
    plan = BudgetPlan(600, ("head", "full"), (per_epoch // 2, 2 * per_epoch + 3), per_epoch, 64,
                      64 * per_epoch, 2, RunCosts((0.5, 1.0), 1.0, 2.0, 3.0))
    length = TrainingLength(recipe, 40, grad_accum, plan)
    assert [length.epochs(0), length.epochs(1), length.total_epochs] == [1, 3, 4]
    assert length.planned_epochs == pytest.approx((per_epoch // 2 + 2 * per_epoch + 3) / per_epoch)  # the ETA's
    assert length.scheduler_steps(1) == (2 * per_epoch + 3) * 2  # Accelerate steps it once a process
    whole = FakeLoader(20)
    assert length.limit(whole, 1, 1, 0) is whole
    last = length.limit(FakeLoader(20), 1, 2, 0)
    assert len(last) == list(last)[-1] + 1 == 3 * grad_accum and last.loader.ended
    assert len(length.limit(FakeLoader(20 - 1), 1, 2, 1)) == 3 * grad_accum - 1  # resumed after one
    assert len(length.limit(FakeLoader(20), 0, 0, 0)) == per_epoch // 2 * grad_accum
    unplanned = TrainingLength(recipe, 40, grad_accum, None)
    assert [unplanned.epochs(i) for i in (0, 1)] == [p.epochs for p in recipe.phases]
    assert unplanned.planned_epochs == sum(p.epochs for p in recipe.phases)
    assert unplanned.scheduler_steps(1) == recipe.phases[1].epochs * 40 // grad_accum
    assert unplanned.limit(whole, 1, 14, 0) is whole


def history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


def same_weights(a: Path, b: Path) -> bool:
    ta, tb = load_file(a), load_file(b)
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


# 60 s: 57 s after the reserve, less 2 s spent and 1 s of final test. Head steps 0.5 s, full 1 s,
# validation 0.5 s: 14 head and 44 full steps (0.7 and 2.2 of the epochs 1 and 3) and 4 validations
# take 53 s; 15 and 45 steps would take 54.5 s.
COSTS = RunCosts((0.5, 1.0), epoch_end_seconds=0.5, final_eval_seconds=1.0, spent_seconds=2.0)
PLANNED = ["--epochs", "1", "3", "--time-budget", "1m"]


@pytest.fixture(scope="module")
def planned_run(tiny_cifar, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("planned")
    assert run(tiny_cifar, out, COSTS, *PLANNED) == 0
    return out / RUN


@pytest.mark.slow
def test_a_budget_run_trains_the_planned_steps_and_its_schedule_ends_with_them(planned_run):
    results = json.loads((planned_run / "results.json").read_text())
    plan = results["time_budget"]
    assert plan["planned_steps"] == {"head": 14, "full": 44} and plan["budget_seconds"] == 60
    assert plan["planned_epochs"] == pytest.approx({"head": 0.7, "full": 2.2})
    assert plan["planned_seconds"] == pytest.approx(2 + 14 * 0.5 + 44 * 1.0 + 4 * 0.5 + 1)
    assert plan["actual_seconds"] > 0 and not plan["resumed"]
    state = json.loads((planned_run / "state" / "train_state.json").read_text())
    assert state["global_step"] == 14 + 44 and state["budget_plan"]["steps"] == [14, 44]
    epochs = history(planned_run)
    assert [e["phase"] for e in epochs] == ["head", "full", "full", "full"]
    head_end, full_first, full_end = epochs[0]["lr"], epochs[1]["lr"], epochs[-1]["lr"]
    assert head_end == pytest.approx(0, abs=1e-12) and full_end == pytest.approx(0, abs=1e-12)
    # after 20 of the full phase's 44 steps: cosine on 44 steps, not on the recipe's 60
    assert full_first == pytest.approx(1e-2 * 0.5 * (1 + math.cos(math.pi * 20 / 44)))


@pytest.mark.slow
def test_the_plan_line(tiny_cifar, tmp_path, capsys):
    assert run(tiny_cifar, tmp_path, COSTS, *PLANNED, measure=False) == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("time budget: ")]
    assert line.startswith("time budget: 2.9 epochs (head 0.70, full 2.20) of 160 images fit in 1m00s "
                           f"at {58 * 8 / (14 * 0.5 + 44):.0f} img/s (58 steps;")


@pytest.mark.slow
def test_whole_planned_epochs_train_exactly_as_the_same_epochs_without_a_budget(tiny_cifar, tmp_path):
    # 45 s: 42.75 s after the reserve, less 2 s spent: 40 steps of 1 s, two whole epochs
    costs = RunCosts((0.0, 1.0), epoch_end_seconds=0.0, final_eval_seconds=0.0, spent_seconds=2.0)
    assert run(tiny_cifar, tmp_path / "budget", costs, "--epochs", "0", "1", "--time-budget", "45s") == 0
    assert run(tiny_cifar, tmp_path / "epochs", costs, "--epochs", "0", "2") == 0
    budget, epochs = tmp_path / "budget" / RUN, tmp_path / "epochs" / RUN
    assert json.loads((budget / "results.json").read_text())["time_budget"]["planned_steps"]["full"] == 40
    assert [(e["train_loss"], e["val_loss"], e["lr"]) for e in history(budget)] == \
        [(e["train_loss"], e["val_loss"], e["lr"]) for e in history(epochs)]
    assert same_weights(budget / "last.safetensors", epochs / "last.safetensors")


@pytest.mark.slow
def test_resume_keeps_the_saved_plan_and_ends_as_the_uninterrupted_run(planned_run, tiny_cifar, tmp_path):
    assert run(tiny_cifar, tmp_path, COSTS, *PLANNED, stop_at=30) == 143
    slower = RunCosts((5.0, 10.0), 5.0, 10.0, 2.0)  # a new plan would train far fewer steps
    # nor does the resumed process re-plan on its own clock (which restarted at 0)
    assert run(tiny_cifar, tmp_path, slower, *PLANNED, "--resume", measure=False, replan=True) == 0
    resumed = tmp_path / RUN
    plan = json.loads((resumed / "results.json").read_text())["time_budget"]
    assert plan["planned_steps"] == {"head": 14, "full": 44} and plan["resumed"]
    assert json.loads((resumed / "state" / "train_state.json").read_text())["global_step"] == 58
    got, expected = history(resumed), history(planned_run)
    assert [(e["val_loss"], e["val_acc"], e["lr"]) for e in got] == \
        [(e["val_loss"], e["val_acc"], e["lr"]) for e in expected]
    # the epoch restarted at its step 16 averages its train loss over the batches after the restart
    assert [e["train_loss"] for i, e in enumerate(got) if i != 1] == \
        [e["train_loss"] for i, e in enumerate(expected) if i != 1]
    assert same_weights(resumed / "last.safetensors", planned_run / "last.safetensors")


def test_a_budget_too_small_to_train_stops_before_training(tiny_cifar, tmp_path, capsys):
    costs = RunCosts((0.5, 1.0), epoch_end_seconds=0.5, final_eval_seconds=60.0, spent_seconds=2.0)
    assert run(tiny_cifar, tmp_path, costs, *PLANNED, measure=False) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: --time-budget 1m00s: too short")
    assert not (tmp_path / RUN).exists()


def test_a_budget_cannot_be_added_to_a_run_started_without_one(tiny_cifar, tmp_path, capsys):
    assert run(tiny_cifar, tmp_path, COSTS, "--epochs", "0", "1", stop_at=10) == 143
    assert run(tiny_cifar, tmp_path, COSTS, "--epochs", "0", "1", "--resume", "--time-budget", "1m",
               measure=False) == 2
    assert "--time-budget: the run in" in capsys.readouterr().err.strip().splitlines()[-1]


def test_with_an_ema_the_plan_counts_its_validation_and_test_passes():
    from cifar10_levels.recipes import get_recipe
    from cifar10_levels.runtime.time_budget_probe import evaluation_passes

    assert evaluation_passes(get_recipe("fast")) == (1, 1)
    # each epoch validates raw and EMA; the end tests the last raw weights, the EMA, then the best
    assert evaluation_passes(get_recipe("fast").with_overrides(ema_decay=0.999)) == (2, 3)


def test_a_run_behind_its_plan_shortens_the_steps_left():
    costs = RunCosts((1.0, 2.0), epoch_end_seconds=5.0, final_eval_seconds=20.0, spent_seconds=10.0)
    plan = BudgetPlan(600, ("head", "full"), (40, 100), 20, 64, 1280, 1, costs)
    # 300 s left is what the 120 steps left need as planned: 20 x 1 + 100 x 2 s, 6 validations of 5 s,
    # the test's 20 s and the reserve's 30 s
    assert plan.replanned(0, 20, 1.0, 300) is plan          # on pace
    assert plan.replanned(0, 20, 0.99, 300) is plan         # a little ahead: no churn from noise
    behind = plan.replanned(0, 20, 3.0, 600 - 60)           # three times as slow as planned
    assert behind.first_steps == (40, 100) and behind.steps[0] >= 20
    left = [behind.steps[0] - 20, behind.steps[1]]
    assert 0 < left[0] < 20 and 0 < left[1] < 100
    assert left[1] / left[0] == pytest.approx(100 / 20, rel=0.1)  # the phases keep their shares
    seconds = left[0] * 3.0 + left[1] * 6.0 + (1 + math.ceil(left[1] / 20)) * 5.0 + 20.0
    assert seconds <= 540 - 600 * RESERVE_FRACTION                 # the rest fits what is left
    more = [behind.steps[0] - 20 + 1, behind.steps[1] + 5]
    assert more[0] * 3.0 + more[1] * 6.0 + (1 + math.ceil(more[1] / 20)) * 5.0 + 20.0 > 540 - 30
    again = BudgetPlan.from_dict(behind.to_dict())
    assert again == behind and again.results(1.0, False)["first_planned_steps"] == {"head": 40, "full": 100}


def test_a_run_well_ahead_of_its_plan_lengthens_the_steps_left_within_the_budget():
    costs = RunCosts((1.0, 2.0), epoch_end_seconds=5.0, final_eval_seconds=20.0, spent_seconds=10.0)
    plan = BudgetPlan(600, ("head", "full"), (40, 100), 20, 64, 1280, 1, costs)
    ahead = plan.replanned(0, 20, 0.5, 400)                 # twice as fast as planned, 400 s left
    left = [ahead.steps[0] - 20, ahead.steps[1]]
    assert ahead.first_steps == (40, 100) and left[0] > 20 and left[1] > 100
    assert left[1] / left[0] == pytest.approx(100 / 20, rel=0.1)
    # the later phase keeps its planned 2 s a step: a faster head phase says nothing of it
    seconds = left[0] * 0.5 + left[1] * 2.0 + (math.ceil(left[0] / 20) + math.ceil(left[1] / 20)) * 5.0
    assert seconds <= 400 - 600 * RESERVE_FRACTION - 20.0
    more = [left[0] + 1, left[1] + 5]
    assert more[0] * 0.5 + more[1] * 2.0 + (math.ceil(more[0] / 20) + math.ceil(more[1] / 20)) * 5.0 \
        > 400 - 30 - 20
    capped = plan.replanned(0, 20, 0.01, 540)               # far ahead: at most twice the steps left
    assert capped.steps == (20 + 2 * 20, 2 * 100)


def test_a_replanned_run_moves_the_schedules_end():
    from cifar10_levels.optim.factory import build_scheduler

    recipe = get_recipe("fast")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    total = [10]
    scheduler = build_scheduler(optimizer, recipe, lambda: total[0], steps_per_epoch=5)
    lrs = []
    for step in range(8):
        if step == 4:
            total[0] = 8        # the plan shortened after step 4's lr was set: the decay ends at step 8
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[:4] == pytest.approx([1.0, 0.9, 0.8, 0.7])
    assert lrs[4:] == pytest.approx([0.6, 0.375, 0.25, 0.125]) and optimizer.param_groups[0]["lr"] == 0.0


@pytest.mark.slow
def test_a_run_that_falls_behind_trains_fewer_steps_and_its_schedule_ends_with_them(tiny_cifar, tmp_path,
                                                                                   capsys):
    # the loop keeps its planned pace (5 s a step); only the clock puts the run behind
    clock = iter([20.0])  # planned at 20 s; after the first epoch 450 s have gone (a slow machine)
    plan = paced_run(tiny_cifar, tmp_path, lambda: next(clock, 450.0), 5.0, "10m")
    first, now = plan["first_planned_steps"]["full"], plan["planned_steps"]["full"]
    # 150 s left: 30 s reserve, 10 s final test; 5 s a step and a validation: 20 + 20 steps
    assert first > 40 and now == 20 + 20
    epochs = history(tmp_path / RUN)
    assert len(epochs) == 2 and epochs[-1]["lr"] == pytest.approx(0, abs=1e-12)
    state = json.loads((tmp_path / RUN / "state" / "train_state.json").read_text())
    assert state["global_step"] == 40 and state["budget_plan"]["steps"] == [0, 40]
    assert "time budget: slower than planned; now 2.00 epochs of this phase (40 steps)" in capsys.readouterr().out


@pytest.mark.slow
def test_a_run_ahead_of_its_plan_trains_more_steps_and_its_schedule_ends_with_them(tiny_cifar, tmp_path,
                                                                                   capsys):
    # planned at 5 s a step; the loop takes 4 s (injected) and the clock agrees
    clock = iter([20.0, 20.0 + 20 * 4 + 5, 20.0 + 2 * (20 * 4 + 5)])  # planning, after epochs 1, 2
    plan = paced_run(tiny_cifar, tmp_path, lambda: next(clock), 4.0, "5m")
    # planned: 255 s for 5 s steps and 5 s validations: 48 steps. After epoch 1, 195 s left (15 s
    # reserve, 10 s test): 40 more steps at 4 s fit, not 41. After epoch 2 the plan is on pace.
    assert plan["first_planned_steps"]["full"] == 48 and plan["planned_steps"]["full"] == 60
    assert plan["planned_seconds"] == 105 + 40 * 4 + 2 * 5 + 10  # re-planned after epoch 1, at 105 s
    epochs = history(tmp_path / RUN)
    assert len(epochs) == 3 and epochs[-1]["lr"] == pytest.approx(0, abs=1e-12)
    out = capsys.readouterr().out
    assert "time budget: faster than planned; now 3.00 epochs of this phase (60 steps), planned end at 4m45s" in out
    assert "epoch 3/3" in out


def paced_run(dataset: Path, out: Path, clock, seconds_per_step: float, budget: str) -> dict:
    """A 3-epoch budget run planned at 5 s a step (and 5 s a validation, 10 s of test, 20 s spent)
    whose re-planning sees `seconds_per_step` and the time `clock()`: results.json's time_budget."""
    costs = RunCosts((5.0, 5.0), epoch_end_seconds=5.0, final_eval_seconds=10.0, spent_seconds=20.0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(time_budget_probe, "process_seconds", clock)
        patch.setattr(time_budget_probe, "measure_costs", lambda *probe_args, **probe_kwargs: costs)
        at_pace(patch, seconds_per_step)
        AcceleratorStateReset()
        assert train_main(["--dataset", str(dataset), "--output-dir", str(out), *TINY_TRAIN, *SMALL, *LR,
                           "--mixed-precision", "no", "--epochs", "0", "3", "--time-budget", budget]) == 0
    return json.loads((out / RUN / "results.json").read_text())["time_budget"]


def at_pace(patch: pytest.MonkeyPatch, seconds_per_step: float) -> None:
    """Make the trainer's re-planning see `seconds_per_step` for every step of the epoch just trained."""
    def replan(plan, phase, phase_epochs_done, images, seconds, accelerator):
        steps = images / plan.images_per_step
        return time_budget_probe.replan(plan, phase, phase_epochs_done, images, seconds_per_step * steps,
                                        accelerator)
    patch.setattr(trainer, "replan", replan)


def AcceleratorStateReset() -> None:
    from accelerate.state import AcceleratorState, GradientState
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
