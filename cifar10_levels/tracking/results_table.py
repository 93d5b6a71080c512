"""Every run's results.json (and ensemble.py's ensemble_results.json) under a directory, as the
write-up's results table in markdown (cifar10-report prints it)."""
from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from ..checkpoint.meta import field_problem, is_fraction, is_int, is_number
from ..recipes import LEVELS

COLUMNS = ["Level", "Technique", "Model", "Test acc", "Target", "Status", "Run"]
LEVEL_ORDER = ["1", "2", "3", "4", "5", "fast"]


@dataclass
class RunResult:
    run: str                  # the run's directory, relative to the report root
    level: str
    title: str
    arch: str
    test_acc: float
    test_acc_tta: float | None
    target: str
    train_seconds: float | None

    @property
    def best_acc(self) -> float:
        return max(self.test_acc, self.test_acc_tta or 0.0)


def target_met(target: str, acc: float, seconds: float | None) -> bool | None:
    """'>= 85%', '>= 91-93%' (the lower end counts), '>= 89.5% in 10 min ...'; None if unreadable."""
    percent = re.search(r"(\d+(?:\.\d+)?)\s*(?:[-–]\s*\d+(?:\.\d+)?)?\s*%", target)
    if not percent:
        return None
    met = round(acc * 100, 6) >= float(percent.group(1))
    minutes = re.search(r"in\s+(\d+(?:\.\d+)?)\s*min", target)
    if minutes and seconds is not None:
        met = met and seconds <= float(minutes.group(1)) * 60
    return met


def _text(value) -> bool:
    return isinstance(value, str) and len(value) <= 200 and value.isprintable()


# what the table shows of a training run's results.json
REPORT_FIELDS = {
    "level": (lambda v: _text(v) or is_int(v), "a level name"),
    "title": (_text, "a title"), "arch": (_text, "a model name"), "target": (_text, "a target"),
    "test_acc": (is_fraction, "a number from 0 to 1"),
    "test_acc_tta": (lambda v: v is None or is_fraction(v), "a number from 0 to 1, or null"),
    "train_seconds": (lambda v: v is None or (is_number(v) and v >= 0), "seconds >= 0, or null"),
}


def _training_run(data: dict, run: str) -> RunResult:
    problem = field_problem(data, REPORT_FIELDS, ("level", "test_acc"))
    if problem is not None:
        raise ValueError(problem)
    return RunResult(run=run, level=str(data["level"]), title=data.get("title", ""),
                     arch=data.get("arch", "?"), test_acc=float(data["test_acc"]),
                     test_acc_tta=data.get("test_acc_tta"), target=vote_target(data) or data.get("target", ""),
                     train_seconds=data.get("train_seconds"))


def vote_target(data: dict) -> str | None:
    """A distilled run is judged against its teachers' vote on the same test set."""
    vote = data.get("teachers_vote")
    if not isinstance(vote, dict):
        return None
    accs = [_fraction(vote[k]) for k in ("test_acc", "test_acc_tta") if vote.get(k) is not None]
    return f">= {max(accs):.2%} (its teachers' vote)" if accs else None


def _fraction(value) -> float:
    if not is_fraction(value):
        raise ValueError(f"an accuracy is {value!r}, not a number from 0 to 1")
    return value


def _ensemble(data: dict, run: str) -> RunResult:
    """ensemble.py's output: the vote chosen on validation, judged by level 4's target."""
    best = data["best_vote"]
    return RunResult(run=run, level="4", title=f"ensemble, {best} vote",
                     arch=" + ".join(m["arch"] for m in data["members"]),
                     test_acc=_fraction(data["votes"][best]["test_acc"]), test_acc_tta=None,
                     target=LEVELS["4"].target, train_seconds=None)


def read_results(root: Path) -> list[RunResult]:
    found = []
    paths = sorted([*root.rglob("results.json"), *root.rglob("ensemble_results.json")])
    for path in paths:
        if any(part.endswith((".old", ".tmp")) for part in path.parent.parts):
            continue
        run = str(path.parent.relative_to(root)) if path.parent != root else "."
        read = _ensemble if path.name == "ensemble_results.json" else _training_run
        try:
            found.append(read(json.loads(path.read_text()), run))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            print(f"warning: {path}: not in the shape train.py/ensemble.py write ({err}); skipped",
                  file=sys.stderr)
    order = {level: i for i, level in enumerate(LEVEL_ORDER)}
    return sorted(found, key=lambda r: (order.get(r.level, len(order)), r.level, r.arch, r.run))


def markdown_table(columns: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(map(str, columns)) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]) + "\n"


def cell(value) -> str:
    """A table cell: a '|' or a line break inside it would start another cell or row."""
    return " ".join(str(value).split()).replace("|", "\\|")


def results_table(results: list[RunResult]) -> str:
    rows = []
    for r in results:
        acc = f"{r.test_acc:.2%}" + (f" (TTA {r.test_acc_tta:.2%})" if r.test_acc_tta is not None else "")
        met = target_met(r.target, r.best_acc, r.train_seconds)
        status = "?" if met is None else ("met" if met else "not met")
        rows.append([r.level, r.title, r.arch, acc, r.target or "?", status, r.run])
    return markdown_table(COLUMNS, rows)
