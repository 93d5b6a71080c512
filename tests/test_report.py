"""`python -m cifar10_levels.cli.report DIR`: the write-up's results table from every run's results.json."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.commands import ROOT

from cifar10_levels.tracking.results_table import target_met


def write_results(path: Path, **fields) -> None:
    base = {"level": "1", "arch": "resnet50", "title": "baseline transfer", "test_acc": 0.9634,
            "test_acc_tta": None, "target": ">= 85%", "train_seconds": 2400.0}
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps({**base, **fields}))


def report(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cifar10_levels.cli.report", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_report_lists_every_run_in_level_order(tmp_path):
    write_results(tmp_path / "L3-efficientnet_b2", level="3", arch="efficientnet_b2",
                  title="other architecture", test_acc=0.905, target=">= 91-93%")
    write_results(tmp_path / "L1-resnet50")
    write_results(tmp_path / "L2-resnet50", level="2", title="advanced augmentation", test_acc=0.8956,
                  test_acc_tta=0.9012, target=">= 90%")
    write_results(tmp_path / "fast" / "Lfast-cifar_speednet", level="fast", arch="cifar_speednet",
                  title="fast CPU recipe", test_acc=0.94, target=">= 89.5% in 10 min on 2 CPU cores",
                  train_seconds=700.0)
    (tmp_path / "ensemble").mkdir()
    (tmp_path / "ensemble" / "ensemble_results.json").write_text(json.dumps({
        "members": [{"arch": "resnet50"}, {"arch": "convnext_tiny"}], "best_vote": "soft",
        "votes": {"majority": {"test_acc": 0.95}, "soft": {"test_acc": 0.9612}}}))
    (tmp_path / "L1-resnet50.old").mkdir()
    (tmp_path / "L1-resnet50.old" / "results.json").write_text("{}")
    result = report(tmp_path, "--output", tmp_path / "summary.md")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "| Level | Technique | Model | Test acc | Target | Status | Run |"
    assert lines[2] == "| 1 | baseline transfer | resnet50 | 96.34% | >= 85% | met | L1-resnet50 |"
    # TTA counts toward the target; the lower end of a range is the bar; time limits are checked
    assert lines[3] == ("| 2 | advanced augmentation | resnet50 | 89.56% (TTA 90.12%) | >= 90% | met "
                        "| L2-resnet50 |")
    assert lines[4].startswith("| 3 | other architecture | efficientnet_b2 | 90.50% | >= 91-93% | not met")
    assert lines[5] == ("| 4 | ensemble, soft vote | resnet50 + convnext_tiny | 96.12% | >= 93-97% "
                        "| met | ensemble |")
    assert lines[6].split(" | ")[5] == "not met" and lines[6].endswith("fast/Lfast-cifar_speednet |")
    assert len(lines) == 7
    assert (tmp_path / "summary.md").read_text() == result.stdout


@pytest.mark.parametrize("target,acc,seconds,expected", [
    (">= 85%", 0.85, None, True), (">= 91-93%", 0.9099, None, False), ("", 0.99, None, None),
    (">= 89.5% in 10 min on 2 CPU cores", 0.90, 599.0, True),
])
def test_target_met(target, acc, seconds, expected):
    assert target_met(target, acc, seconds) is expected


def test_report_errors_are_one_line(tmp_path):
    missing = report(tmp_path / "nope")
    assert missing.returncode == 2
    assert missing.stderr.strip() == (f"error: {tmp_path / 'nope'}: no such directory; "
                                      "pass the --output-dir of train.py")
    empty = report(tmp_path)
    assert empty.returncode == 2 and "no results.json found" in empty.stderr
    assert len(empty.stderr.strip().splitlines()) == 1
