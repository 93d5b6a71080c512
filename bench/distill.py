"""Distillation against plain training, one sitting: teachers, then for each seed a plain run and a
student taught by the teachers, alternately, all with the same recipe and epochs.

    python bench/distill.py --dataset DIR --out DIR/kd

Every run is `train.py ... --resume auto` under --out, so a run already finished there is read back, not
trained again: an interrupted measurement goes on where it stopped, and another student setting
(--tag=-NAME -- --kd-weight A ...) reuses the teachers and the plain runs. Prints, plain and with
TTA, the mean and standard deviation of the plain runs and of the students, each teacher, and the
teachers' soft vote on the same test set; and the students' images/s against the plain runs'.
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from measure import ROOT, environment_header


def train(out: Path, name: str, args: list[str], common: list[str]) -> dict:
    """One run of train.py (or its finished results.json); stdout into OUT/NAME.log."""
    results = out / name / "results.json"
    if not results.is_file():
        out.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, str(ROOT / "train.py"), *common, *args, "--output-dir", str(out),
                   "--run-name", name, "--resume", "auto"]
        print(f"$ {' '.join(command)}", flush=True)
        started = time.perf_counter()
        with open(out / f"{name}.log", "w") as log:
            subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True)
        print(f"  {name}: {time.perf_counter() - started:.0f} s", flush=True)
    run = json.loads(results.read_text())
    history = out / name / "history.jsonl"
    run["history"] = [json.loads(line) for line in history.read_text().splitlines()] if history.is_file() else []
    return run


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} ± {100 * sd:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="CIFAR-10 in the HF Hub layout")
    parser.add_argument("--out", type=Path, required=True, help="where the runs go (and are reused)")
    parser.add_argument("--level", default="fast")
    parser.add_argument("--epochs", nargs="+", default=["4"], help="train.py --epochs, every run")
    parser.add_argument("--teacher-seeds", type=int, nargs="+", default=[101, 102, 103])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="plain runs and students")
    parser.add_argument("--tag", default="", help="students' name suffix, for another setting: "
                        "--tag=-t2 (with '=', as it starts with '-')")
    parser.add_argument("--every", default="", help="more train.py flags for every run, e.g. "
                        "'--train-limit 400 --batch-size 50' for a quick check of this script")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="after --: students' flags, e.g. "
                        "-- --kd-weight 0.5 --kd-temperature 2")
    args = parser.parse_args(argv)
    student_flags = [a for a in args.extra if a != "--"]
    common = ["--level", args.level, "--epochs", *args.epochs, "--dataset", args.dataset,
              "--mixed-precision", "bf16", "--report-to", "none", "--no-progress"]
    common += shlex.split(args.every)
    print(environment_header())
    print(f"runs: {' '.join(common)}; students: --teachers {args.out / 'teachers'} {' '.join(student_flags)}")
    teachers = [train(args.out / "teachers", f"teacher-s{s}", ["--seed", str(s)], common)
                for s in args.teacher_seeds]
    plain, students = [], []
    for seed in args.seeds:  # alternately, so a slow spell of the machine hits both alike
        plain.append(train(args.out / "plain", f"plain-s{seed}", ["--seed", str(seed)], common))
        students.append(train(args.out / f"students{args.tag}", f"student-s{seed}",
                              ["--seed", str(seed), "--teachers", str(args.out / "teachers"),
                               *student_flags], common))
    vote = students[0]["teachers_vote"]
    print("\n| runs | n | test % | test % with TTA | images/s |\n|---|---|---|---|---|")
    for name, runs in (("teachers", teachers), ("plain", plain), ("students", students)):
        print(f"| {name} | {len(runs)} | {spread([r['test_acc'] for r in runs])} | "
              f"{spread([r['test_acc_tta'] for r in runs if r['test_acc_tta'] is not None])} | "
              f"{statistics.mean(r['images_per_s'] for r in runs):.0f} |")
    tta = f"{100 * vote['test_acc_tta']:.2f}" if vote["test_acc_tta"] is not None else "-"
    print(f"| the teachers' soft vote | {vote['teachers']} teachers | {100 * vote['test_acc']:.2f} | {tta} | |")
    gains = {key: statistics.mean(s[key] for s in students) - statistics.mean(p[key] for p in plain)
             for key in ("test_acc", "test_acc_tta") if all(r.get(key) is not None for r in plain + students)}
    for key, gain in gains.items():
        gap = (vote[key] or 0) - statistics.mean(p[key] for p in plain)
        share = f", {gain / gap:.0%} of the gap to the vote" if gap > 0 else ""
        print(f"students - plain, {key}: {100 * gain:+.2f} points{share}")
    without = [h["images_per_s_without_teachers"] for s in students for h in s["history"]
               if "images_per_s_without_teachers" in h]
    if without:
        print(f"students' images/s without the teachers' passes: {statistics.mean(without):.0f}")
    rates = [statistics.mean(r["images_per_s"] for r in runs) for runs in (students, plain)]
    print(f"student / plain images/s: {rates[0] / rates[1]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
