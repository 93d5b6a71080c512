"""Our fast recipe and another recipe's command, side by side in one sitting: accuracy and wall time of
each, and their ratios.

    python bench/side_by_side.py --dataset DIR --seeds 0 1 2 \\
        --other "python ~/other/train_cifar.py --epochs 6 --seed {seed}" \\
        --other-accuracy "tta_val_acc[ =:]+([0-9.]+)"

DIR is CIFAR-10 in the HF Hub layout (`hf download uoft-cs/cifar10 --repo-type dataset --local-dir DIR`).
Each seed runs ours (`train.py --level fast --time-budget 10m`, or the train.py flags after `--`) and the
other command once, whole processes timed from outside; the order alternates from seed to seed, so a
machine that slows down hurts both alike. The other command is split like a shell line (no shell runs
it); `{seed}` and `{dataset}` in it are filled in. Its accuracy is the last match of --other-accuracy's
first group in its output (stdout and stderr): a percentage, or a fraction when at most 1. Ours is
results.json's TTA accuracy (`--ours-metric plain`: without TTA). The other code is yours: nothing of it
is kept in this repo.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from measure import Spread, environment_header
from time_to_accuracy import run_seed

OURS_DEFAULT = ["--level", "fast", "--time-budget", "10m"]


@dataclass
class Measured:
    accuracy: float      # fraction
    wall_seconds: float


def other_command(template: str, seed: int, dataset: str) -> list[str]:
    try:
        words = shlex.split(template)
    except ValueError as e:
        raise SystemExit(f"--other {template!r}: not a command line ({e}); quote it as one argument")
    if not words:
        raise SystemExit("--other: empty; give the other recipe's command, e.g. \"python other.py --seed {seed}\"")
    return [w.replace("{seed}", str(seed)).replace("{dataset}", dataset) for w in words]


def parse_accuracy(output: str, pattern: re.Pattern) -> float | None:
    """The last match's first group as a fraction: values above 1 are read as percentages."""
    matches = pattern.findall(output)
    if not matches:
        return None
    last = matches[-1]
    value = float(last[0] if isinstance(last, tuple) else last)
    return value / 100 if value > 1 else value


def run_other(command: list[str], pattern: re.Pattern, log: Path | None) -> Measured:
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    except OSError as e:
        raise SystemExit(f"--other: cannot run {command[0]!r} ({e.strerror}); give a command on PATH or its full path")
    wall = time.perf_counter() - start
    output = done.stdout + done.stderr
    if log is not None:
        log.write_text(output)
    if done.returncode != 0:
        raise SystemExit(f"--other: {shlex.join(command)} failed (exit {done.returncode}):\n{output[-2000:]}")
    accuracy = parse_accuracy(output, pattern)
    if accuracy is None:
        raise SystemExit(f"--other-accuracy {pattern.pattern!r}: no match in the other command's output "
                         f"(its last lines below); give a regex whose first group is its test accuracy\n"
                         f"{output[-1000:]}")
    return Measured(accuracy, wall)


def run_ours(seed: int, dataset: str, train_argv: list[str], metric: str, log_dir: Path | None) -> Measured:
    with tempfile.TemporaryDirectory() as tmp:
        result = run_seed(seed, dataset, train_argv, Path(tmp), log_dir)
    if metric == "tta" and result.test_acc_tta is None:
        raise SystemExit("--ours-metric tta: our run reported no TTA accuracy (its recipe has no TTA "
                         "views); pass --ours-metric plain")
    return Measured(result.test_acc_tta if metric == "tta" else result.test_acc, result.wall_seconds)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours_argv = OURS_DEFAULT
    if "--" in argv:
        ours_argv = argv[argv.index("--") + 1:]
        argv = argv[:argv.index("--")]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="after --: our train.py flags (default: " + " ".join(OURS_DEFAULT) + ")")
    p.add_argument("--dataset", required=True, metavar="DIR", help="local CIFAR-10 in the uoft-cs/cifar10 layout")
    p.add_argument("--other", required=True, metavar="COMMAND",
                   help="the other recipe's command line, one argument; {seed} and {dataset} are filled in")
    p.add_argument("--other-accuracy", required=True, metavar="REGEX",
                   help="regex whose first group is the other's test accuracy in its output (last match)")
    p.add_argument("--ours-metric", choices=("tta", "plain"), default="tta",
                   help="our accuracy to compare: with the recipe's TTA (default) or without")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run of each side per seed")
    p.add_argument("--log-dir", type=Path, help="keep every run's output here")
    args = p.parse_args(argv)
    try:
        pattern = re.compile(args.other_accuracy)
    except re.error as e:
        p.error(f"--other-accuracy {args.other_accuracy!r}: not a regex ({e})")
    if pattern.groups < 1:
        p.error(f"--other-accuracy {args.other_accuracy!r}: needs a group, e.g. 'acc ([0-9.]+)'")
    if args.log_dir:
        args.log_dir.mkdir(parents=True, exist_ok=True)

    print(environment_header())
    print(f"ours: train.py {shlex.join(ours_argv)} (accuracy: {args.ours_metric})")
    print(f"other: {args.other} (accuracy: last match of {args.other_accuracy!r})\n")
    print("| seed | order | ours acc | other acc | ours wall | other wall | acc ratio ours/other | "
          "wall ratio ours/other |")
    print("|---|---|---|---|---|---|---|---|")
    ours_all, other_all = [], []
    for i, seed in enumerate(args.seeds):
        def ours() -> Measured:
            return run_ours(seed, args.dataset, ours_argv, args.ours_metric, args.log_dir)

        def other() -> Measured:
            log = args.log_dir / f"other-seed{seed}.log" if args.log_dir else None
            return run_other(other_command(args.other, seed, args.dataset), pattern, log)

        if i % 2 == 0:
            order, a = "ours first", ours()
            b = other()
        else:
            order, b = "other first", other()
            a = ours()
        ours_all.append(a), other_all.append(b)
        print(f"| {seed} | {order} | {a.accuracy:.2%} | {b.accuracy:.2%} | {a.wall_seconds:.1f} s | "
              f"{b.wall_seconds:.1f} s | {a.accuracy / b.accuracy:.4f} | {a.wall_seconds / b.wall_seconds:.3f} |",
              flush=True)
    acc_ratios = Spread([a.accuracy / b.accuracy for a, b in zip(ours_all, other_all)])
    wall_ratios = Spread([a.wall_seconds / b.wall_seconds for a, b in zip(ours_all, other_all)])
    mean = statistics.mean
    print(f"| mean ({len(args.seeds)} seeds) | | {mean(a.accuracy for a in ours_all):.2%} | "
          f"{mean(b.accuracy for b in other_all):.2%} | {mean(a.wall_seconds for a in ours_all):.0f} s | "
          f"{mean(b.wall_seconds for b in other_all):.0f} s | median {acc_ratios.format(4)} | "
          f"median {wall_ratios.format(3)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
