"""On a CPU, fp32 or bf16 chosen by measurement: training steps of both timed on a throwaway copy of
the run's model, bf16 only when clearly faster. Whether it pays depends on the CPU, the oneDNN build
and the model (0.69x on one Xeon without AMX, 1.77x on an EPYC with AVX512-BF16), so the verdict is
cached per CPU model, torch version, thread count and model shape: the next run starts at once."""
from __future__ import annotations

import functools
import json
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from ..data.cifar10 import NUM_CLASSES, cache_dir
from ..files import write_json
from ..recipes import Recipe
from . import step_timing
from .precision import autocast_for
from .step_timing import StepCost, cached_inputs, call_cost, images_cost, training_step, \
    untouched_rng

BF16_MIN_SPEEDUP = 1.10   # bf16 must train this many times as fast as fp32 to be chosen
ROUNDS = 2                # fp32, bf16, fp32, bf16: each precision's fastest round counts, and in
                          # each round its fastest steps: load from other programs only slows steps down
CACHE_FILE = "cpu_precision.json"
Measure = Callable[[Recipe, bool, torch.device], dict[str, StepCost]]


def cpu_model_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_key(recipe: Recipe, channels_last: bool) -> str:
    return " | ".join([cpu_model_name(), f"torch {torch.__version__}", f"{torch.get_num_threads()} threads",
                       recipe.arch, f"{recipe.img_size}px", f"batch {recipe.batch_size}",
                       "channels_last" if channels_last else "contiguous"])


@dataclass
class PrecisionVerdict:
    """Training images/s of fp32 and bf16 on this CPU, and the precision chosen ("no" or "bf16")."""

    fp32_images_per_s: float
    bf16_images_per_s: float
    batch: int
    timed_batches: dict[str, list[int]]   # the batch sizes each precision's steps were timed at
    choice: str
    cached: bool = False

    @classmethod
    def of(cls, costs: dict[str, StepCost]) -> "PrecisionVerdict":
        fp32, bf16 = costs["no"].images_per_s, costs["bf16"].images_per_s
        choice = "bf16" if bf16 >= BF16_MIN_SPEEDUP * fp32 else "no"
        timed = {"fp32": list(costs["no"].timed), "bf16": list(costs["bf16"].timed)}
        return cls(fp32, bf16, costs["no"].batch, timed, choice)

    def line(self) -> str:
        how = "cached from an earlier run" if self.cached else "measured on a copy of the model"
        return (f"precision: fp32 {self.fp32_images_per_s:.0f} img/s, bf16 {self.bf16_images_per_s:.0f} "
                f"img/s at batch {self.batch} on this CPU ({how}) -> "
                f"{'bf16' if self.choice == 'bf16' else 'fp32'} (bf16 needs {BF16_MIN_SPEEDUP:.2f}x "
                "fp32; --mixed-precision sets it)")

    def record(self) -> dict:
        return {**asdict(self), "min_bf16_speedup": BF16_MIN_SPEEDUP}


def measure_precisions(recipe: Recipe, channels_last: bool, device: torch.device) -> dict[str, StepCost]:
    """A training step of the recipe's model ("no": fp32, "bf16": autocast), fresh random weights
    (speed only), synthetic batches in the run's size and memory layout."""
    from ..models.factory import create_model
    from ..optim.factory import build_optimizer

    with untouched_rng(device):
        model = create_model(recipe.arch, NUM_CLASSES).to(device).train()
        layout = torch.channels_last if channels_last else torch.contiguous_format
        model = model.to(memory_format=layout)
        lr = next(p.lr for p in recipe.phases if p.epochs)
        optimizer = build_optimizer(model, recipe, lr)
        size = recipe.img_size
        inputs = cached_inputs(lambda n: (torch.randn(n, 3, size, size, device=device).contiguous(
            memory_format=layout), torch.randint(0, NUM_CLASSES, (n,), device=device)))
        loss = torch.nn.CrossEntropyLoss()
        images: dict[str, StepCost] = {}
        probe = None  # fp32's first round sizes the batches every round of both times
        for _ in range(ROUNDS):  # alternating: a burst of other load slows one round, not one precision
            for name in ("no", "bf16"):
                images_step, optimizer_step = training_step(
                    model, optimizer, loss, inputs, functools.partial(autocast_for, device, name))
                cost = images_cost(images_step, recipe.batch_size, step_timing.PROBE_SECONDS,
                                   fastest=True, probe=probe)
                probe = cost.timed[-1]
                images[name] = min(images.get(name, cost), cost, key=lambda c: c.seconds)
        # the optimizer step runs outside autocast: the same for both
        optimizer_seconds = call_cost(optimizer_step, step_timing.PROBE_SECONDS / 4, fastest=True)
        return {name: StepCost(c.seconds + optimizer_seconds, c.batch, c.timed) for name, c in images.items()}


def read_cache(path: Path) -> dict:
    """The cached verdicts; a damaged file is reported and measured over, never fatal."""
    if not path.exists():
        return {}
    try:
        entries = json.loads(path.read_text())
        if isinstance(entries, dict):
            return entries
        reason = "not a JSON object"
    except (OSError, ValueError) as err:
        reason = f"{type(err).__name__}: {str(err).splitlines()[0][:80]}" if str(err) else type(err).__name__
    print(f"warning: ignoring the precision cache {path} ({reason}); measuring again", flush=True)
    return {}


def cached_verdict(entries: dict, key: str) -> PrecisionVerdict | None:
    try:
        verdict = PrecisionVerdict(**{**entries[key], "cached": True})
    except (KeyError, TypeError):
        return None
    return verdict if verdict.choice in ("no", "bf16") else None


def cpu_precision(recipe: Recipe, channels_last: bool, device: torch.device,
                  measure: Measure | None = None) -> PrecisionVerdict:
    """The cached verdict for this CPU and model shape, or a new measurement (then cached)."""
    path, key = cache_dir() / CACHE_FILE, cache_key(recipe, channels_last)
    entries = read_cache(path)
    verdict = cached_verdict(entries, key)
    if verdict is not None:
        return verdict
    verdict = PrecisionVerdict.of((measure or measure_precisions)(recipe, channels_last, device))
    entries[key] = {k: v for k, v in asdict(verdict).items() if k != "cached"}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, entries)
    except OSError:
        pass  # the cache only saves the next run the measurement
    return verdict


def agreed_cpu_precision(recipe: Recipe, channels_last: bool) -> PrecisionVerdict:
    """Measured (or read) by the main process, sent to the others: every process uses one precision."""
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    state = PartialState()
    verdict = [cpu_precision(recipe, channels_last, state.device) if state.is_main_process else None]
    if state.num_processes > 1:
        broadcast_object_list(verdict)
    return verdict[0]
