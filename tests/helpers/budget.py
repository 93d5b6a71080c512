"""train.py under --time-budget in this process, its costs injected: timings mean nothing on a shared
test machine."""
from __future__ import annotations

from pathlib import Path

import pytest

from cifar10_levels.cli.train import train_main
from cifar10_levels.runtime import step_timing, time_budget_probe
from cifar10_levels.runtime.time_budget import RunCosts
from cifar10_levels.train import step_hooks, trainer

from .commands import TINY_TRAIN

REAL_MEASUREMENT = time_budget_probe.measure_costs
# 160 images in batches of 8: 20 steps an epoch
SMALL = ("--arch", "test_resnet", "--train-limit", "160", "--eval-limit", "20", "--batch-size", "8")
LR = ("--lr", "1e-2", "1e-2")


def run(dataset: Path, out: Path, costs: RunCosts, *args: str, stop_at: int | None = None,
        measure: bool = True, replan: bool = False, small: tuple[str, ...] = (*SMALL, *LR),
        tiny: tuple[str, ...] = tuple(TINY_TRAIN)) -> int:
    """train.py in this process, the plan made from `costs` (after the real measurement when
    `measure`); `stop_at`: SIGTERM's path (save, exit 143) taken at that global step; `replan`: the
    trainer re-plans after each epoch as it would (the clock stands still at `costs.spent_seconds`);
    `small` and `tiny`: the flags that keep the run small (each pins the values it gives)."""
    from accelerate.state import AcceleratorState, GradientState

    def fake_costs(*probe_args, **probe_kwargs) -> RunCosts:
        if measure:
            REAL_MEASUREMENT(*probe_args, **probe_kwargs)
        return costs

    after_step = step_hooks.StepHooks.after_step

    def stopping_after_step(self, *step_args):
        if stop_at is not None and self.global_step + 1 == stop_at:
            self.accelerator.set_trigger()
        return after_step(self, *step_args)

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(step_timing, "PROBE_SECONDS", 0.2)
        patch.setattr(time_budget_probe, "measure_costs", fake_costs)
        patch.setattr(time_budget_probe, "process_seconds", lambda: costs.spent_seconds)
        if not replan:  # the clock stands still, so re-planning (test_time_budget's own tests)
            patch.setattr(trainer, "replan", lambda plan, *pace: plan)  # would see a run far ahead
        patch.setattr(step_hooks.StepHooks, "after_step", stopping_after_step)
        return train_main(["--dataset", str(dataset), "--output-dir", str(out), *tiny, *small,
                           "--mixed-precision", "no", *args])
