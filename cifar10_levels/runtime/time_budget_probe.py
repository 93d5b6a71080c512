"""A run's --time-budget plan: its steps, validation and final test timed on a throwaway copy of its
model, the plan made from the slowest process's costs (the same plan on every process), or the plan
saved with the run when it resumes."""
from __future__ import annotations

import copy
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from ..errors import UserError
from ..models.factory import set_backbone_trainable, set_train_mode
from ..optim.factory import build_optimizer
from . import step_timing
from .step_timing import evaluation_step, step_cost, synchronizer, training_step, \
    untouched_rng
from .precision import autocast_for
from .time_budget import BudgetPlan, RunCosts

if TYPE_CHECKING:
    from accelerate import Accelerator

    from ..data.cifar10 import CIFAR10
    from ..recipes import Recipe

PROBE_SHARE = 0.01   # of the budget, each measurement may take: a longer budget buys a truer plan
MAX_PROBE_SECONDS = 30.0   # per measurement, whatever the budget: the plan is replanned each epoch
COLLECTIVE_ROUNDS = 5
CHECKPOINT_WRITES_PER_EPOCH = 5   # best and last checkpoints, the state: weights and up to two moments


def process_seconds() -> float:
    """Seconds since this process started, interpreter start-up and imports included."""
    import psutil

    return time.time() - psutil.Process().create_time()


def wrapped(images: torch.Tensor, n: int) -> torch.Tensor:
    """n images from `images`, from the start and round again when it holds fewer."""
    return images[torch.arange(n) % len(images)]


@dataclass(frozen=True)
class ProbeParts:
    """The run's own parts that measure_costs times a step of (the model on a copy of it)."""

    model: nn.Module
    data: CIFAR10
    augment: Callable[[torch.Tensor, torch.Tensor, bool], tuple[torch.Tensor, torch.Tensor]]
    normalize: Callable[[torch.Tensor], torch.Tensor]
    loss: nn.Module            # the hard-label loss: the probe's steps do not mix
    precision: str             # the Accelerator's: "no", "fp16" or "bf16"
    eval_batch: int            # the validation and test loaders' batch


def measure_costs(parts: ProbeParts, recipe: Recipe, accelerator: Accelerator, *, grad_accum: int,
                  budget_seconds: float, run_dir: Path) -> RunCosts:
    """Seconds of a step of each phase and of validation and the final test, on this process, timed
    on a copy of the run's model with its own data, augmentation, precision and memory layout."""
    device, data, processes = accelerator.device, parts.data, accelerator.num_processes
    autocast = (lambda: autocast_for(device, parts.precision))
    sync = synchronizer(device)
    seconds = min(max(step_timing.PROBE_SECONDS, PROBE_SHARE * budget_seconds), MAX_PROBE_SECONDS)
    with untouched_rng(device):
        model = copy.deepcopy(parts.model).to(device)
        images, labels = data.train.images.to(device), data.train.labels.to(device)

        def make_batch(n: int):
            return parts.augment(wrapped(images, n), wrapped(labels, n), False)

        kinds = {}
        for phase in recipe.phases:
            if phase.epochs and phase.train_backbone not in kinds:
                set_backbone_trainable(model, phase.train_backbone)
                set_train_mode(model, phase.train_backbone)
                optimizer = build_optimizer(model, recipe, phase.lr)
                images_step, optimizer_step = training_step(model, optimizer, parts.loss, make_batch,
                                                            autocast)
                kinds[phase.train_backbone] = step_cost(images_step, recipe.batch_size, optimizer_step,
                                                        seconds, sync).seconds * grad_accum \
                    + collective_seconds(accelerator, model)
        model.eval()
        eval_batch = parts.eval_batch
        evaluate = evaluation_step(model, lambda n: parts.normalize(wrapped(images, n)), autocast)
        per_image = step_cost(evaluate, eval_batch, seconds=seconds, sync=sync).seconds / eval_batch
        checkpoints = checkpoint_seconds(model, run_dir) if accelerator.is_main_process else 0.0
    step_seconds = tuple(kinds.get(p.train_backbone, 0.0) for p in recipe.phases)
    val_images, test_images = (math.ceil(len(s) / processes) for s in (data.val, data.test))
    val_passes, test_passes = evaluation_passes(recipe)
    return RunCosts(step_seconds,
                    val_passes * per_image * val_images + CHECKPOINT_WRITES_PER_EPOCH * checkpoints,
                    test_passes * per_image * test_images * max(recipe.tta, 1), spent_seconds=0.0)


def evaluation_passes(recipe) -> tuple[int, int]:
    """(validation passes per epoch, test passes at the end): --ema validates the EMA beside the raw
    weights, and tests the last raw weights and the EMA (ema.final_weights) before the best ones."""
    return (2, 3) if recipe.ema_decay else (1, 1)


def collective_seconds(accelerator, model: torch.nn.Module) -> float:
    """What several processes add to a step: the all-reduce of the gradients (DDP overlaps some of it
    with backward: an upper bound) and of the loop's non-finite flag. Every process calls it."""
    if accelerator.num_processes == 1:
        return 0.0
    import torch.distributed as dist

    grads = torch.zeros(sum(p.numel() for p in model.parameters() if p.requires_grad),
                        device=accelerator.device)
    flag = torch.zeros(1, device=accelerator.device)
    dist.all_reduce(grads), dist.all_reduce(flag)  # warm-up
    start = time.perf_counter()
    for _ in range(COLLECTIVE_ROUNDS):
        dist.all_reduce(grads), dist.all_reduce(flag)
    synchronizer(accelerator.device)()
    return (time.perf_counter() - start) / COLLECTIVE_ROUNDS


def checkpoint_seconds(model: torch.nn.Module, run_dir: Path) -> float:
    """Seconds to write the model's weights once as safetensors (and fsync), on the disk the run
    writes to (its nearest existing directory), into a temporary file removed at once."""
    from safetensors.torch import save_file

    where = Path(run_dir)
    while not where.is_dir() and where != where.parent:
        where = where.parent
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    fd, path = tempfile.mkstemp(dir=where, prefix=".checkpoint-timing-", suffix=".tmp")
    os.close(fd)
    try:
        start = time.perf_counter()
        save_file(weights, path)
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
        return time.perf_counter() - start
    finally:
        os.unlink(path)


def slowest(accelerator, costs: RunCosts) -> RunCosts:
    """Every process's costs, each the largest over the processes: the same numbers everywhere."""
    values = torch.tensor([*costs.step_seconds, costs.epoch_end_seconds, costs.final_eval_seconds,
                           costs.spent_seconds], dtype=torch.float64, device=accelerator.device)
    if accelerator.num_processes > 1:
        values = accelerator.gather(values.unsqueeze(0)).amax(0)
    *steps, epoch_end_seconds, final, spent = values.tolist()
    return RunCosts(tuple(steps), epoch_end_seconds, final, spent)


def run_plan(parts: ProbeParts, recipe: Recipe, accelerator: Accelerator, *, budget_seconds: float,
             grad_accum: int, train_batches: int, images_per_step: int, run_dir: Path) -> BudgetPlan:
    """The steps that fit `budget_seconds`, planned on the slowest process's measured costs (the same
    plan on every process). `train_batches`: the unsharded train loader's; `images_per_step`: the
    global batch."""
    measured = measure_costs(parts, recipe, accelerator, grad_accum=grad_accum,
                             budget_seconds=budget_seconds, run_dir=run_dir)
    costs = slowest(accelerator, RunCosts(measured.step_seconds, measured.epoch_end_seconds,
                                          measured.final_eval_seconds, process_seconds()))
    steps_per_epoch = math.ceil(train_batches // accelerator.num_processes / grad_accum)
    return BudgetPlan.make(budget_seconds, recipe, steps_per_epoch, images_per_step,
                           accelerator.num_processes, costs)


def resumed_plan(saved: dict | None, budget_seconds: float | None, run_dir: Path) -> BudgetPlan | None:
    """On --resume, the plan saved with the run (`saved`: its TrainState's), or None when it had none."""
    if saved is None and budget_seconds:
        raise UserError(f"--time-budget: the run in {run_dir} was started without one and "
                        "its schedule is fixed; resume it without --time-budget")
    return BudgetPlan.from_dict(saved) if saved else None


def replan(plan: BudgetPlan, phase: int, phase_epochs_done: int, images: int, seconds: float,
           accelerator: Accelerator) -> BudgetPlan:
    """After an epoch of a budget run (its `phase_epochs_done`th of phase `phase`, `images` trained
    over every process in `seconds`): the plan re-fitted to the time left at the loop's measured pace
    (the slowest process's): fewer steps when behind, more when well ahead (BudgetPlan.replanned).
    Not for a resumed run: its process clock restarted, so it cannot tell the time left."""
    steps_done = phase_epochs_done * plan.steps_per_epoch
    steps = images / plan.images_per_step
    if steps_done >= plan.steps[phase] or steps <= 0:
        return plan
    values = torch.tensor([seconds / steps, process_seconds()], dtype=torch.float64,
                          device=accelerator.device)
    if accelerator.num_processes > 1:
        values = accelerator.gather(values.unsqueeze(0)).amax(0)
    seconds_per_step, elapsed = values.tolist()
    return plan.replanned(phase, steps_done, seconds_per_step, plan.budget_seconds - elapsed)
