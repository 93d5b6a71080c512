"""How long a training step and an evaluation batch take on this machine, timed on a throwaway copy
of the run's model: the run's own weights and random streams are left as they were."""
from __future__ import annotations

import random
import time
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

PROBE_SECONDS = 2.0      # timed per measurement, after warm-up steps
SMALL_BATCH = 16         # the first steps (or 1/32 of a larger batch): warm-up, then the line's start
WARMUP_STEPS = 2         # untimed small steps first: the first calls build kernels and caches
MIN_STEPS = 3            # a step of the probe batch takes at most PROBE_SECONDS / MIN_STEPS
# 4x SMALL_BATCH is timed unless in proportion it would take longer than this many PROBE_SECONDS: with
# small-batch overheads (or threads waiting on other programs) a step's fixed part can be most of it
SECOND_BATCH_CAP = 3

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


def synchronizer(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def call_seconds(call: Callable[[], None], seconds: float, sync: Callable[[], None],
                 clock: Callable[[], float], at_least: int = 2) -> list[float]:
    """Seconds of each call of `call`, called for about `seconds` (at least `at_least` times)."""
    times: list[float] = []
    while len(times) < at_least or sum(times) < seconds:
        start = clock()
        call()
        sync()
        times.append(clock() - start)
    return times


def step_cost(images_step: Step, batch: int, fixed_step: Callable[[], None] | None = None,
              seconds: float | None = None, sync: Callable[[], None] = lambda: None,
              clock: Callable[[], float] = time.perf_counter, fastest: bool = False,
              probe: int | None = None) -> StepCost:
    """Seconds of a step of `batch` images, measured in about `seconds` (default PROBE_SECONDS): the
    images part (images_cost) and `fixed_step()` (the optimizer step: the same for any batch; large
    for Muon on a CPU), timed apart."""
    cost = images_cost(images_step, batch, seconds, sync, clock, fastest, probe)
    if fixed_step is None:
        return cost
    seconds = PROBE_SECONDS if seconds is None else seconds
    return StepCost(cost.seconds + call_cost(fixed_step, seconds / 4, sync, clock, fastest), batch,
                    cost.timed)


def call_cost(call: Callable[[], None], seconds: float, sync: Callable[[], None] = lambda: None,
              clock: Callable[[], float] = time.perf_counter, fastest: bool = False) -> float:
    """Seconds of one call of `call`, after a warm-up call, timed for about `seconds`."""
    call()
    sync()
    times = call_seconds(call, seconds, sync, clock)
    return min(times) if fastest else sum(times) / len(times)


def images_cost(images_step: Step, batch: int, seconds: float | None = None,
                sync: Callable[[], None] = lambda: None, clock: Callable[[], float] = time.perf_counter,
                fastest: bool = False, probe: int | None = None) -> StepCost:
    """Seconds of `images_step(batch)` (forward and backward of a batch), measured in about `seconds`.

    Timed at a small batch, at 4x as many (see SECOND_BATCH_CAP), and at the largest batch up to
    `batch` that the line through those two puts under seconds / MIN_STEPS. A batch larger than the
    largest timed gets the time on the line through the smallest and the largest (launches and
    small-batch overheads are a fixed part of it too), or in proportion to the small one when it alone
    was timed (an upper bound). `fastest`: the fastest call of each batch instead of the mean (for
    comparisons: other load only ever slows a call down). `probe`: that largest batch, given (to
    compare two steps at the same sizes).
    """
    seconds = PROBE_SECONDS if seconds is None else seconds

    def summary(times: list[float]) -> float:
        return min(times) if fastest else sum(times) / len(times)

    small = min(batch, max(SMALL_BATCH, batch // 32))
    for _ in range(WARMUP_STEPS):
        images_step(small)
    sync()
    small_times = call_seconds(lambda: images_step(small), seconds / 4, sync, clock)
    timed = {small: summary(small_times)}
    at_least = 2 if fastest else 1  # calls of each larger batch: a fastest of one call would be none
    second = min(batch, 4 * small)
    if probe is None and second > small and \
            min(small_times) * second / small <= SECOND_BATCH_CAP * seconds:
        images_step(second)  # warm-up at this batch's shapes
        timed[second] = summary(call_seconds(lambda: images_step(second), seconds / 4, sync, clock,
                                             at_least))
        per_image, fixed = line_through(timed)
        largest = int((seconds / MIN_STEPS - fixed) / per_image) if per_image > 0 else 4 * second
        probe = min(batch, largest) if largest > second else None
    if probe is not None and probe not in timed:
        images_step(probe)
        timed[probe] = summary(call_seconds(lambda: images_step(probe), seconds / 2, sync, clock,
                                            at_least))
    if batch in timed:
        images_seconds = timed[batch]
    elif len(timed) == 1:
        images_seconds = timed[small] * batch / small
    else:
        per_image, fixed = line_through(timed)
        images_seconds = fixed + per_image * batch
    return StepCost(images_seconds, batch, tuple(sorted(timed)))


def line_through(timed: dict[int, float]) -> tuple[float, float]:
    """(seconds per image, fixed seconds) of the line through the smallest and the largest batch
    timed; when noise makes the larger batch no slower, in proportion to the larger (an upper bound)."""
    low, high = min(timed), max(timed)
    per_image = (timed[high] - timed[low]) / (high - low)
    if per_image <= 0:
        return timed[high] / high, 0.0
    return per_image, max(timed[low] - per_image * low, 0.0)


def cached_inputs(make: Callable[[int], tuple]) -> Callable[[int], tuple]:
    """`make(n)` once per batch size: the inputs' own cost stays out of the timing."""
    made: dict[int, tuple] = {}
    return lambda n: made[n] if n in made else made.setdefault(n, make(n))


def training_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable,
                  make_batch: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
                  autocast: Callable[[], AbstractContextManager]) -> tuple[Step, Callable[[], None]]:
    """train_one_epoch's step in two parts: forward (under `autocast`), loss and backward of n
    images; the optimizer step."""
    def images_step(n: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        inputs, targets = make_batch(n)
        with autocast():
            logits = model(inputs)
        loss_fn(logits.float(), targets).backward()
    return images_step, optimizer.step


def evaluation_step(model: nn.Module, make_inputs: Callable[[int], torch.Tensor],
                    autocast: Callable[[], AbstractContextManager]) -> Step:
    """An evaluation forward pass of n images, in inference mode."""
    def step(n: int) -> None:
        inputs = make_inputs(n)
        with torch.inference_mode(), autocast():
            model(inputs).float().softmax(1)
    return step
