"""--time-budget: how many optimizer steps fit the time a user has, and how long each phase trains.

The plan is pure arithmetic on measured costs (time_budget_probe.py measures them): every phase
keeps its share of the recipe's epochs, and the learning-rate schedule is defined on the planned
steps, so it ends where the plan ends.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass
from typing import Sequence

from ..tracking.console import format_duration
from ..errors import UserError
from ..recipes import Recipe

# Kept back from the budget for what the plan does not time: the real model's first steps,
# checkpoints and state after every epoch, plots, results and the trackers' last writes.
RESERVE_FRACTION = 0.05
# After each epoch a run re-plans on its measured pace; it lengthens only when at least this much more
# of the steps left would fit (no churn from noise), and by at most MAX_LENGTHENING times at once.
MIN_LENGTHENING = 0.03
MAX_LENGTHENING = 2.0


@dataclass(frozen=True)
class RunCosts:
    """Seconds, per process, that a plan is made from."""

    step_seconds: tuple[float, ...]   # one optimizer step of each phase
    epoch_end_seconds: float          # after each epoch (a partial one too): validation, checkpoints
    final_eval_seconds: float         # the test split with the recipe's TTA views
    spent_seconds: float              # the process before training: start-up, data, model, measuring


def training_seconds(steps: Sequence[int], steps_per_epoch: int, costs: RunCosts) -> float:
    """Training and per-epoch validation of `steps` optimizer steps per phase."""
    evaluations = sum(math.ceil(s / steps_per_epoch) for s in steps)
    return sum(s * t for s, t in zip(steps, costs.step_seconds)) + evaluations * costs.epoch_end_seconds


def phase_steps(budget_seconds: float, phase_epochs: Sequence[int], steps_per_epoch: int,
                costs: RunCosts) -> tuple[int, ...]:
    """The most optimizer steps per phase, in proportion to `phase_epochs`, such that the whole
    process (what is spent, training, validation and the final test, plus RESERVE_FRACTION) fits in
    `budget_seconds`. Raises UserError when not even one step of every phase fits."""
    available = budget_seconds * (1 - RESERVE_FRACTION) - costs.spent_seconds - costs.final_eval_seconds

    def steps_at(scale: float) -> tuple[int, ...]:
        return tuple(math.floor(scale * e * steps_per_epoch) for e in phase_epochs)

    def fits(scale: float) -> bool:
        return training_seconds(steps_at(scale), steps_per_epoch, costs) <= available

    low, high = 0.0, 1.0
    for _ in range(64):  # the seconds grow with the scale: bracket the largest scale that fits
        if not fits(high):
            break
        low, high = high, high * 2
    for _ in range(64):
        middle = (low + high) / 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    steps = steps_at(low)
    if any(e > 0 and s == 0 for e, s in zip(phase_epochs, steps)):
        smallest = steps_at(max(1 / (e * steps_per_epoch) for e in phase_epochs if e > 0))
        needed = (costs.spent_seconds + costs.final_eval_seconds
                  + training_seconds(smallest, steps_per_epoch, costs)) / (1 - RESERVE_FRACTION)
        what = "one step of each phase" if sum(e > 0 for e in phase_epochs) > 1 else "one step"
        raise UserError(
            f"--time-budget {format_duration(budget_seconds)}: too short to train {what} here "
            f"({costs.spent_seconds:.0f}s went to start-up, data loading and measuring, a step takes "
            f"{max(costs.step_seconds):.1f}s, an epoch's validation and checkpoints "
            f"{costs.epoch_end_seconds:.1f}s, the final test "
            f"{costs.final_eval_seconds:.1f}s); give at least {format_duration(math.ceil(needed))}")
    return steps


@dataclass(frozen=True)
class BudgetPlan:
    """A run's plan: saved in the train state, so --resume continues it instead of planning again."""

    budget_seconds: float
    phase_names: tuple[str, ...]
    steps: tuple[int, ...]            # optimizer steps per process in each phase
    steps_per_epoch: int              # optimizer steps per process in a whole epoch
    images_per_step: int              # images one optimizer step trains on, over every process
    epoch_images: int                 # images in an epoch, over every process
    num_processes: int
    costs: RunCosts
    first_steps: tuple[int, ...] = ()  # the steps first planned, once the run has re-planned
    end_seconds: float | None = None   # the process's planned end, once the run has re-planned
    # (net, epochs): the recipe's own net and the epochs the budget bought it, where the run trains
    # Recipe.budget_net instead
    instead_of: tuple[str, float] = ()
    # (batch, epochs): the batch the plan was first timed at and the epochs it bought, where the
    # Recipe.by_epochs row for those epochs set another batch and the plan was timed again at it
    retimed_from: tuple[int, float] = ()

    @classmethod
    def make(cls, budget_seconds: float, recipe: Recipe, steps_per_epoch: int, images_per_step: int,
             num_processes: int, costs: RunCosts) -> "BudgetPlan":
        steps = phase_steps(budget_seconds, [p.epochs for p in recipe.phases], steps_per_epoch, costs)
        return cls(budget_seconds, tuple(p.name for p in recipe.phases), steps, steps_per_epoch,
                   images_per_step, steps_per_epoch * images_per_step, num_processes, costs)

    @classmethod
    def from_dict(cls, saved: dict) -> "BudgetPlan":
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()}
        costs = {k: tuple(v) if isinstance(v, list) else v for k, v in saved["costs"].items()}
        return cls(**{**fields, "costs": RunCosts(**costs)})

    def to_dict(self) -> dict:
        return asdict(self)

    def epochs(self, phase: int) -> float:
        return self.steps[phase] / self.steps_per_epoch

    @property
    def total_epochs(self) -> float:
        """Epochs the run trains, a planned last partial epoch as its fraction."""
        return sum(self.steps) / self.steps_per_epoch

    def replanned(self, phase: int, steps_done: int, seconds_per_step: float,
                  seconds_left: float) -> "BudgetPlan":
        """This plan with the steps left (from `steps_done` of phase `phase` on) scaled so that they,
        their validations and the final test fill `seconds_left` less the reserve, at the measured
        `seconds_per_step` of this phase; later phases keep their planned costs, slowed by the same
        ratio when this one is slower. Behind the plan it shortens; ahead of it by more than
        MIN_LENGTHENING it lengthens (at most MAX_LENGTHENING times the steps left), so a first
        estimate that was too cautious does not leave the budget unused. Otherwise: this plan."""
        c = self.costs
        ratio = seconds_per_step / c.step_seconds[phase] if c.step_seconds[phase] > 0 else 1.0
        left = [0] * phase + [max(self.steps[phase] - steps_done, 0), *self.steps[phase + 1:]]
        step_seconds = tuple(seconds_per_step if i == phase else t * max(ratio, 1.0)
                             for i, t in enumerate(c.step_seconds))
        paced = RunCosts(step_seconds, c.epoch_end_seconds, c.final_eval_seconds, 0.0)
        available = seconds_left - self.budget_seconds * RESERVE_FRACTION - c.final_eval_seconds

        def steps_at(scale: float) -> list[int]:
            return [math.floor(scale * s) for s in left]

        def fits(scale: float) -> bool:
            return training_seconds(steps_at(scale), self.steps_per_epoch, paced) <= available

        if fits(1.0) and not fits(1.0 + MIN_LENGTHENING):
            return self
        low, high = (1.0, MAX_LENGTHENING) if fits(1.0) else (0.0, 1.0)
        if fits(high):
            low = high
        for _ in range(50):
            middle = (low + high) / 2
            low, high = (middle, high) if fits(middle) else (low, middle)
        kept = steps_at(low)
        steps = tuple(s if i < phase else kept[i] + (steps_done if i == phase else 0)
                      for i, s in enumerate(self.steps))
        if steps == self.steps:
            return self
        end = self.budget_seconds - seconds_left + training_seconds(kept, self.steps_per_epoch, paced) \
            + c.final_eval_seconds
        return dataclasses.replace(self, steps=steps, first_steps=self.first_steps or self.steps,
                                   end_seconds=end)

    @property
    def planned_seconds(self) -> float:
        """The whole process as planned, without the reserve (after a re-plan: as re-planned)."""
        if self.end_seconds is not None:
            return self.end_seconds
        c = self.costs
        return c.spent_seconds + training_seconds(self.steps, self.steps_per_epoch, c) + c.final_eval_seconds

    @property
    def train_images_per_s(self) -> float:
        seconds = sum(s * t for s, t in zip(self.steps, self.costs.step_seconds))
        return sum(self.steps) * self.images_per_step / seconds

    def line(self) -> str:
        trained = [(n, self.epochs(i)) for i, n in enumerate(self.phase_names) if self.steps[i]]
        split = f" ({', '.join(f'{n} {e:.2f}' for n, e in trained)})" if len(trained) > 1 else ""
        c, total, steps = self.costs, sum(e for _, e in trained), sum(self.steps)
        return (f"time budget: {total:.{1 if total >= 1 else 2}f} epochs{split} of "
                f"{self.epoch_images:,} images fit in {format_duration(self.budget_seconds)} at "
                f"{self.train_images_per_s:.0f} img/s ({steps} step{'s' if steps > 1 else ''}; "
                f"validation and checkpoints {c.epoch_end_seconds:.1f}s an epoch, final test "
                f"{c.final_eval_seconds:.1f}s, {c.spent_seconds:.0f}s before training; planned end at "
                f"{format_duration(self.planned_seconds)})")

    def lines(self, recipe: Recipe) -> tuple[str, ...]:
        """The plan, and why the run trains another net or was timed again, on the console."""
        return tuple(line for line in (self.line(), self.net_line(recipe), self.retimed_line()) if line)

    def net_line(self, recipe: Recipe) -> str | None:
        """Why the run trains recipe.budget_net, on the console; None where it trains its own net."""
        if not self.instead_of:
            return None
        net, epochs = self.instead_of
        return (f"net: {recipe.arch}, not the level's {net}: the budget buys {net} {epochs:.2f} epochs, "
                f"fewer than the {recipe.budget_net.below_epochs:g} from which it trains better")

    def retimed_line(self) -> str | None:
        """Why the plan's epochs differ from the row's, on the console; None where it was timed once."""
        if not self.retimed_from:
            return None
        batch, epochs = self.retimed_from
        return (f"time budget: timed again at the row's batch; batch {batch} bought {epochs:.2f} epochs, "
                f"which took the row")

    def change_line(self, before: "BudgetPlan", phase: int) -> str:
        """What a re-plan from `before` changed, on the console."""
        pace = "slower" if self.steps[phase] < before.steps[phase] else "faster"
        return (f"time budget: {pace} than planned; now {self.epochs(phase):.2f} epochs of this phase "
                f"({self.steps[phase]} steps), planned end at {format_duration(self.planned_seconds)}")

    def results(self, process_seconds: float, resumed: bool) -> dict:
        """results.json's record of the plan against what happened."""
        return {"budget_seconds": self.budget_seconds, "planned_seconds": self.planned_seconds,
                "actual_seconds": process_seconds, "resumed": resumed,
                "planned_steps": dict(zip(self.phase_names, self.steps)),
                "first_planned_steps": dict(zip(self.phase_names, self.first_steps or self.steps)),
                "planned_epochs": {n: self.epochs(i) for i, n in enumerate(self.phase_names)},
                "train_images_per_s": self.train_images_per_s, "costs": asdict(self.costs),
                **({"instead_of": {"arch": self.instead_of[0], "planned_epochs": self.instead_of[1]}}
                   if self.instead_of else {}),
                **({"retimed_from": {"batch_size": self.retimed_from[0],
                                     "planned_epochs": self.retimed_from[1]}} if self.retimed_from else {})}


class TrainingLength:
    """How long each phase trains: the recipe's whole epochs, or the steps a plan fixed (its last
    epoch then stops after the planned steps)."""

    def __init__(self, recipe: Recipe, loader_batches: int, grad_accum: int, plan: BudgetPlan | None):
        self.recipe, self.loader_batches, self.grad_accum, self.plan = recipe, loader_batches, grad_accum, plan

    def epochs(self, phase: int) -> int:
        if self.plan is None:
            return self.recipe.phases[phase].epochs
        return math.ceil(self.plan.steps[phase] / self.plan.steps_per_epoch)

    @property
    def total_epochs(self) -> int:
        return sum(self.epochs(i) for i in range(len(self.recipe.phases)))

    @property
    def planned_epochs(self) -> float:
        """Epochs the run trains, a planned last partial epoch as its fraction (for the ETA)."""
        return float(self.total_epochs) if self.plan is None else self.plan.total_epochs

    def scheduler_steps(self, phase: int) -> int:
        """The schedule's length; Accelerate's scheduler wrapper steps once per process per step."""
        if self.plan is None:
            return self.recipe.phases[phase].epochs * self.loader_batches // self.grad_accum
        return self.plan.steps[phase] * self.plan.num_processes

    def limit(self, loader, phase: int, epoch: int, done: int):
        """`loader` (less the `done` batches already trained) cut where the plan ends the epoch."""
        if self.plan is None or epoch < self.epochs(phase) - 1:
            return loader
        left = self.plan.steps[phase] - epoch * self.plan.steps_per_epoch
        if left >= self.plan.steps_per_epoch:
            return loader
        count = left * self.grad_accum - done
        return FirstBatches(loader, count) if count < len(loader) else loader


class FirstBatches:
    """The first `count` batches of a prepared loader: a planned epoch that ends early."""

    def __init__(self, loader, count: int):
        self.loader, self.count = loader, count

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        batches = iter(self.loader)
        for _ in range(self.count):
            yield next(batches)
        batches.close()
        self.loader.end()  # what the loader does at its own end: Accelerate stops tracking it
