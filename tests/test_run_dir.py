"""A run is never replaced silently: the run directory names level, arch and seed, and a directory
that holds a run is only continued (--resume) or replaced (--overwrite) when the user says so."""
from __future__ import annotations

import pytest
import hashlib
from pathlib import Path

from cifar10_levels.cli.train import train_main

from helpers.commands import TINY_TRAIN, console_script_in_process, train
from helpers.runs import snapshot

# two steps an epoch on small evaluation sets: the tests look at the files a run leaves, not its accuracy
FEW = ["--train-limit", "64", "--eval-limit", "20"]
TOY = ["--arch", "test_resnet", "--epochs", "0", "2", "--lr", "1e-2", "1e-2", *FEW]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_a_second_seed_keeps_the_first_run_and_ensemble_and_report_find_both(tiny_cifar, tmp_path):
    out = tmp_path / "ckpts"
    train(tiny_cifar, out, *TOY, "--seed", "1")
    first = out / "L1-test_resnet-s1"
    best, history = sha256(first / "best.safetensors"), (first / "history.jsonl").read_text()
    assert len(history.splitlines()) == 2
    before = snapshot(first)

    train(tiny_cifar, out, *TOY, "--seed", "2")
    assert (out / "L1-test_resnet-s2" / "results.json").exists()
    assert sha256(first / "best.safetensors") == best
    assert (first / "history.jsonl").read_text() == history and snapshot(first) == before

    ensemble = console_script_in_process("cifar10-ensemble", "--weights", out, "--dataset", tiny_cifar,
                                         "--report-to", "none", "--output-dir", tmp_path / "ensemble")
    assert ensemble.returncode == 0, ensemble.stderr
    assert "L1-test_resnet-s1" in ensemble.stdout and "L1-test_resnet-s2" in ensemble.stdout
    report = console_script_in_process("cifar10-report", out)
    assert report.returncode == 0, report.stderr
    assert "L1-test_resnet-s1" in report.stdout and "L1-test_resnet-s2" in report.stdout


@pytest.mark.slow
def test_the_same_command_again_refuses_and_leaves_the_run_byte_identical(tiny_cifar, tmp_path):
    out = tmp_path / "ckpts"
    train(tiny_cifar, out, *TOY)
    run = out / "L1-test_resnet-s42"
    best, history = sha256(run / "best.safetensors"), (run / "history.jsonl").read_text()
    before = snapshot(run)

    again = train(tiny_cifar, out, *TOY, check=False)
    assert again.returncode == 2, again.stdout + again.stderr
    message = again.stderr.strip().splitlines()[-1]
    assert message.startswith("error: ") and str(run) in message
    assert all(choice in message for choice in ("--resume", "--overwrite", "--seed", "--run-name"))
    assert sha256(run / "best.safetensors") == best and (run / "history.jsonl").read_text() == history
    assert snapshot(run) == before

    both = train(tiny_cifar, out, *TOY, "--resume", "--overwrite", check=False)
    assert both.returncode == 2 and "--resume and --overwrite" in both.stderr
    assert snapshot(run) == before

    train(tiny_cifar, out, *TOY[:2], "--epochs", "0", "1", "--lr", "1e-2", "1e-2", *FEW, "--overwrite")
    assert len((run / "history.jsonl").read_text().splitlines()) == 1  # the new run only
    assert sha256(run / "best.safetensors") != best


def test_an_unfinished_run_is_refused_too(tiny_cifar, tmp_path, capsys):
    """A run killed before its first checkpoint leaves only state/: still a run."""
    run = tmp_path / "L1-test_resnet-s42"
    (run / "state").mkdir(parents=True)
    argv = ["--dataset", str(tiny_cifar), "--output-dir", str(tmp_path), *TINY_TRAIN, *TOY]
    assert train_main(argv) == 2
    assert f"{run} already holds a run (state)" in capsys.readouterr().err
    assert [p.name for p in run.iterdir()] == ["state"]


def test_run_name_names_the_directory(tiny_cifar, tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "results.json").write_text("{}")
    argv = ["--dataset", str(tiny_cifar), "--output-dir", str(tmp_path), *TINY_TRAIN, *TOY,
            "--run-name", "mine"]
    assert train_main(argv) == 2
    assert f"{tmp_path / 'mine'} already holds a run (results.json)" in capsys.readouterr().err
    assert train_main([*argv[:-1], "../escape"]) == 2
    assert "--run-name '../escape'" in capsys.readouterr().err
