"""What every benchmark here shares: interleaved repeats, median and spread, and the environment header.

The machine is shared and timings swing several-fold, so a benchmark never reports one number: it runs
the baseline and ours alternately in one process and reports the median and range of each, and of the
per-round ratio (ours / baseline measured back to back).
"""
from __future__ import annotations

import datetime
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as `python bench/x.py` from a checkout, no install needed


@dataclass
class Spread:
    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def format(self, digits: int = 0, suffix: str = "") -> str:
        lo, hi = min(self.values), max(self.values)
        return f"{self.median:,.{digits}f}{suffix} ({lo:,.{digits}f}-{hi:,.{digits}f})"


class CpuClock:
    """Images per CPU-second of this process, next to wall-clock images/s: with one torch thread it
    barely moves when other jobs crowd the cores, so its ratios stay readable on a busy machine."""

    def __init__(self):
        self.rates: list[float] = []

    def timed(self, run: Callable[[], tuple[int, float]]) -> Callable[[], float]:
        """Wrap `run` (returns images, wall seconds) to return wall images/s and record CPU images/s."""
        def wrapped() -> float:
            start = time.process_time()
            images, wall = run()
            self.rates.append(images / max(time.process_time() - start, 1e-9))
            return images / wall
        return wrapped


def interleave(candidates: dict[str, Callable[[], float]], repeats: int) -> dict[str, Spread]:
    """Each round calls every candidate once, in order; a slow spell of the machine hits all alike."""
    results: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, measure in candidates.items():
            results[name].append(measure())
    return {name: Spread(values) for name, values in results.items()}


def ratio(ours: Spread, baseline: Spread) -> Spread:
    """Per-round ratios: each pairs two measurements taken seconds apart."""
    return Spread([a / b for a, b in zip(ours.values, baseline.values)])


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown CPU"


def gpu_name() -> str:
    import torch

    if not torch.cuda.is_available():
        return "none"
    return ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = [f"python {platform.python_version()}"]
    for name in ("torch", "torchvision", "timm", "accelerate", "pillow"):
        try:
            parts.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            pass
    return ", ".join(parts)


def environment_header() -> str:
    """The lines a results table needs to be reproduced: command, date, hardware, versions, load."""
    import torch

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return "\n".join([
        f"command: python {shlex.join(sys.argv)}",
        f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"hardware: {cpu_model()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
        f"GPU {gpu_name()}",
        f"versions: {versions()}",
        f"load average at start (1, 5, 15 min): {load}",
    ])
