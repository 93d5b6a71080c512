"""How long a training step and an evaluation batch take on this machine, timed on a throwaway copy
of the run's model: the run's own weights and random streams are left as they were."""
from __future__ import annotations

import random
import time
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

PROBE_SECONDS = 2.0      # timed per measurement, after warm-up steps
SMALL_BATCH = 16         # the first, small steps: warm-up, and the per-image cost for sizing
WARMUP_STEPS = 2         # untimed small steps first: the first calls build kernels and caches
MIN_STEPS = 3            # a step of the probe batch takes at most PROBE_SECONDS / MIN_STEPS

Step = Callable[[int], None]   # one step on n images


@dataclass(frozen=True)
class StepCost:
    """Seconds of one step of `batch` images; `timed`: the batch sizes actually timed."""

    seconds: float
    batch: int
    timed: tuple[int, ...]

    @property
    def images_per_s(self) -> float:
        return self.batch / self.seconds


@contextmanager
def untouched_rng(device: torch.device) -> Iterator[None]:
    """Python's, numpy's and torch's random state (CPU, and `device`'s) as they were before."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def autocast_for(device: torch.device, precision: str) -> AbstractContextManager:
    """The autocast a run of `precision` computes its forward pass in ("no": none)."""
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    return torch.autocast(device.type, dtype=dtypes[precision]) if precision in dtypes else nullcontext()


def synchronizer(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def mean_step_seconds(step: Step, n: int, seconds: float, sync: Callable[[], None],
                      clock: Callable[[], float]) -> float:
    """Mean seconds of steps of `n` images run for about `seconds` (at least two steps)."""
    count, start = 0, clock()
    while count < 2 or clock() - start < seconds:
        step(n)
        sync()
        count += 1
    return (clock() - start) / count


def step_cost(step: Step, batch: int, seconds: float | None = None,
              sync: Callable[[], None] = lambda: None, clock: Callable[[], float] = time.perf_counter
              ) -> StepCost:
    """Seconds per step of `batch` images, timed for about `seconds` (default PROBE_SECONDS).

    A batch whose step would take longer than seconds / MIN_STEPS is not run whole: steps of two
    smaller batches give the fixed part of a step (the optimizer step, launches) and the part per
    image, and the line through them gives the batch's time.
    """
    seconds = PROBE_SECONDS if seconds is None else seconds
    small = min(batch, SMALL_BATCH)
    for _ in range(WARMUP_STEPS):
        step(small)
    sync()
    small_seconds = mean_step_seconds(step, small, seconds / 4 if batch > small else seconds, sync, clock)
    if batch == small:
        return StepCost(small_seconds, batch, (small,))
    fits = int(seconds / MIN_STEPS / (small_seconds / small))
    probe = max(small, min(batch, fits))
    if probe == small:  # slower than seconds / MIN_STEPS per small step: proportional, an upper bound
        return StepCost(small_seconds * batch / small, batch, (small,))
    step(probe)  # warm-up at this batch's shapes
    sync()
    probe_seconds = mean_step_seconds(step, probe, seconds * 3 / 4, sync, clock)
    if probe == batch:
        return StepCost(probe_seconds, batch, (small, batch))
    per_image = max((probe_seconds - small_seconds) / (probe - small), 0.0)
    fixed = max(probe_seconds - per_image * probe, 0.0)
    return StepCost(fixed + per_image * batch, batch, (small, probe))


def cached_inputs(make: Callable[[int], tuple]) -> Callable[[int], tuple]:
    """`make(n)` once per batch size: the inputs' own cost stays out of the timing."""
    made: dict[int, tuple] = {}
    return lambda n: made[n] if n in made else made.setdefault(n, make(n))


def training_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable,
                  make_batch: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
                  autocast: Callable[[], AbstractContextManager]) -> Step:
    """forward (under `autocast`), loss, backward and optimizer step, as train_one_epoch runs them."""
    def step(n: int) -> None:
        inputs, targets = make_batch(n)
        with autocast():
            logits = model(inputs)
        loss_fn(logits.float(), targets).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def evaluation_step(model: nn.Module, make_inputs: Callable[[int], torch.Tensor],
                    autocast: Callable[[], AbstractContextManager]) -> Step:
    """An evaluation forward pass of n images, in inference mode."""
    def step(n: int) -> None:
        inputs = make_inputs(n)
        with torch.inference_mode(), autocast():
            model(inputs).float().softmax(1)
    return step
