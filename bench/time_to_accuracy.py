"""Test accuracy reached and whole-process wall time of a recipe, over seeds, through train.py itself.

Each seed runs `python train.py ...` as a subprocess, so start-up, data loading, every epoch's
evaluation and the final test (and TTA) evaluation all count. Prints one markdown row per seed and a
mean and spread row.

    # the CPU reference (the lead runs it on a quiet machine; ~tens of minutes on 2 cores)
    python bench/time_to_accuracy.py --level 1 --arch resnet18 --img-size 32 --no-pretrained \\
        --epochs 0 3 --lr 1e-3 1e-3
    # the fast CPU recipe
    python bench/time_to_accuracy.py --level fast --seeds 0 1 2

Flags other than the ones below go to train.py unchanged.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from measure import ROOT, environment_header



@dataclass
class SeedResult:
    seed: int
    test_acc: float
    test_acc_tta: float | None
    best_val_acc: float
    wall_seconds: float
    train_seconds: float
    final_weights: dict | None = None   # with --ema: the last epoch's raw and EMA weights side by side


def run_seed(seed: int, dataset: str | None, train_argv: list[str], output_dir: Path, log_dir: Path | None
             ) -> SeedResult:
    command = [sys.executable, str(ROOT / "train.py"), *(["--dataset", dataset] if dataset else []),
               "--output-dir", str(output_dir), "--seed", str(seed), "--report-to", "none", "--no-progress", *train_argv]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if log_dir is not None:
        (log_dir / f"seed{seed}.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        sys.exit(f"train.py failed for seed {seed} (exit {done.returncode}):\n"
                 f"{(done.stdout + done.stderr)[-2000:]}")
    results = json.loads(next(output_dir.glob("*/results.json")).read_text())
    return SeedResult(seed=seed, test_acc=results["test_acc"], test_acc_tta=results.get("test_acc_tta"),
                      best_val_acc=results["best_val_acc"], wall_seconds=wall,
                      train_seconds=results["train_seconds"], final_weights=results.get("final_weights"))


def spread(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    values = [v * scale for v in values]
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="other flags: train.py's")
    p.add_argument("--dataset", metavar="DIR", help="local CIFAR-10 in the uoft-cs/cifar10 layout "
                   "(default: the Hugging Face Hub or its cache, as train.py)")
    p.add_argument("--seeds", type=int, nargs="+", default=[42], help="one full run per seed")
    p.add_argument("--log-dir", type=Path, help="keep each run's train.py output here")
    p.add_argument("--keep-runs", type=Path, metavar="DIR",
                   help="keep each seed's run (checkpoints, results) in DIR/seed{N}/ (default: discard)")
    args, train_argv = p.parse_known_args(argv)
    if args.log_dir:
        args.log_dir.mkdir(parents=True, exist_ok=True)

    print(environment_header())
    print(f"train.py flags: {' '.join(train_argv)}\n")
    print("| seed | test acc | test acc, TTA | best val acc | wall time (whole process) | train time |")
    print("|---|---|---|---|---|---|")
    results = []
    for seed in args.seeds:
        if args.keep_runs:
            r = run_seed(seed, args.dataset, train_argv, args.keep_runs / f"seed{seed}", args.log_dir)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                r = run_seed(seed, args.dataset, train_argv, Path(tmp), args.log_dir)
        results.append(r)
        tta = f"{r.test_acc_tta:.2%}" if r.test_acc_tta is not None else "-"
        print(f"| {r.seed} | {r.test_acc:.2%} | {tta} | {r.best_val_acc:.2%} | {r.wall_seconds:.0f} s | "
              f"{r.train_seconds:.0f} s |", flush=True)
    ttas = [r.test_acc_tta for r in results if r.test_acc_tta is not None]
    print(f"| mean ± sd ({len(results)} seeds) | {spread([r.test_acc for r in results], 100)}% | "
          f"{spread(ttas, 100) + '%' if ttas else '-'} | {spread([r.best_val_acc for r in results], 100)}% | "
          f"{spread([r.wall_seconds for r in results], digits=0)} s | "
          f"{spread([r.train_seconds for r in results], digits=0)} s |")
    compared = [r for r in results if r.final_weights]
    if compared:
        print_ema_table(compared)


def print_ema_table(results: list[SeedResult]) -> None:
    """EMA on against off at equal epochs: the last epoch's raw and EMA weights of the same runs."""
    columns = (("val_acc", "val acc"), ("test_acc", "test acc"), ("test_acc_tta", "test acc, TTA"))
    print(f"\nlast epoch ({results[0].final_weights['epoch']}), raw weights (= without --ema) against "
          f"the EMA (decay {results[0].final_weights['ema_decay']}):\n")
    print("| seed | " + " | ".join(f"{name}, raw | {name}, EMA" for _, name in columns) + " |")
    print("|---" * (1 + 2 * len(columns)) + "|")

    def cell(values: list) -> str:
        return "-" if None in values else spread(values, 100) + "%"

    for r in results:
        f = r.final_weights
        print(f"| {r.seed} | " + " | ".join(
            f"{cell([f['raw'][key]])} | {cell([f['ema'][key]])}" for key, _ in columns) + " |")
    print(f"| mean ± sd ({len(results)} seeds) | " + " | ".join(
        f"{cell([r.final_weights['raw'][key] for r in results])} | "
        f"{cell([r.final_weights['ema'][key] for r in results])}" for key, _ in columns) + " |")


if __name__ == "__main__":
    main()
