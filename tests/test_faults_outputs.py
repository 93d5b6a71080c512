"""Fault corpus: where the commands write, and what they need around them.

Output paths that are directories, FIFOs, under a file, unwritable or under a missing parent; a
disk that fills while a file is written (os.fsync raising ENOSPC, as a full disk or quota does at
the latest); a HOME whose caches cannot be written; a tracker that is not installed; W&B forced
online without a key the server accepts. Each case: exit 2, one line naming the path, flag or
variable, no traceback, no earlier file changed and no temporary file left; or, where the input is
fine, success. docs/bad_inputs.md lists the cases.
"""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest

from cifar10_levels.cli.ensemble import main as ensemble_main
from cifar10_levels.cli.evaluate import main as evaluate_main
from cifar10_levels.cli.export import main as export_main
from cifar10_levels.cli.predict import main as predict_main
from cifar10_levels.cli.report import main as report_main
from cifar10_levels.cli.train import train_main

from helpers.commands import TINY_TRAIN
from helpers.faults import assert_refused, call, sha256_tree, write_checkpoint

UNWRITABLE = "/proc"   # a directory nobody, root included, can create files in


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    """A checkpoint, an image, a runs directory with one results.json, and a plain file."""
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    write_checkpoint(tmp_path / "model.safetensors")
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(tmp_path / "image.png")
    (tmp_path / "runs" / "L1").mkdir(parents=True)
    (tmp_path / "runs" / "L1" / "results.json").write_text(json.dumps({"level": "1", "test_acc": 0.5}))
    (tmp_path / "a_file").write_text("not a directory\n")
    (tmp_path / "a_dir.csv").mkdir()
    os.mkfifo(tmp_path / "a_fifo.csv")
    return tmp_path


PREDICT = ["--weights", "model.safetensors", "image.png", "--output"]
REPORT = ["runs", "--output"]
OUTPUT_CASES = {  # the --output given: what the one line names
    "a directory": ("a_dir.csv", "a_dir.csv: a directory"),
    "a FIFO": ("a_fifo.csv", "not a regular file"),
    "under a missing directory": ("no/such/dir/out.csv", "does not exist"),
    "under a file": ("a_file/out.csv", "a_file is not a directory"),
    "in an unwritable directory": (f"{UNWRITABLE}/out.csv", "not writable"),
}


@pytest.mark.parametrize("case", OUTPUT_CASES, ids=list(OUTPUT_CASES))
@pytest.mark.parametrize("command", ["predict", "report"])
def test_output_file_that_cannot_be_written_is_refused_first(command, case, work):
    path, names = OUTPUT_CASES[case]
    main, argv = (predict_main, PREDICT) if command == "predict" else (report_main, REPORT)
    before = sha256_tree(work)
    line = assert_refused(call(main, *argv, path), names)
    assert line.startswith(f"error: --output {path}"), line
    assert sha256_tree(work) == before


@pytest.mark.parametrize("out,names", [("a_file/export", "a_file: exists and is not a directory"),
                                       (f"{UNWRITABLE}/export", "not writable")])
def test_export_directory_that_cannot_be_written_is_refused(out, names, work):
    before = sha256_tree(work)
    assert_refused(call(export_main, "model.safetensors", out), names)
    assert_refused(call(evaluate_main, "--weights", "model.safetensors", "--output", out), names)
    assert sha256_tree(work) == before


def test_writable_outputs_are_written(work):
    assert call(predict_main, *PREDICT, "predictions.csv").code == 0
    assert call(report_main, *REPORT, "report.md").code == 0
    assert call(export_main, "model.safetensors", "new/export").code == 0
    assert {"predictions.csv", "report.md"} <= {p.name for p in work.iterdir()}


@pytest.fixture
def full_disk(monkeypatch):
    """Every fsync fails as on a full disk: writes made through files.atomic_path meet it."""
    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", fsync)


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp") or ".export-" in p.name]


@pytest.mark.parametrize("command", ["predict", "report", "export"])
def test_full_disk_is_one_line_and_leaves_nothing(command, work, full_disk):
    argv = {"predict": (predict_main, [*PREDICT, "predictions.json"]),
            "report": (report_main, [*REPORT, "report.md"]),
            "export": (export_main, ["model.safetensors", "export"])}[command]
    before = sha256_tree(work)
    assert_refused(call(argv[0], *argv[1]), "no space left on device")
    assert sha256_tree(work) == before and not temporaries(work)


def test_full_disk_while_training_is_one_line_and_leaves_no_temporary(tiny_cifar, tmp_path,
                                                                       full_disk):
    outcome = call(train_main, "--dataset", tiny_cifar, "--output-dir", tmp_path / "out",
                   *TINY_TRAIN, "--arch", "test_resnet", "--epochs", "0", "1", "--train-limit", "64",
                   "--eval-limit", "20")
    assert_refused(outcome, "no space left on device")
    assert not temporaries(tmp_path), temporaries(tmp_path)


TRAIN = ["--output-dir", "out", *TINY_TRAIN, "--arch", "test_resnet", "--epochs", "0", "1"]


@pytest.mark.parametrize("which", ["datasets", "ours"])
def test_unwritable_cache_names_home_and_the_variables(which, tiny_cifar, work, monkeypatch):
    import datasets.config

    blocked = str(work / "a_file" / "cache")
    if which == "datasets":
        monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", blocked)
    else:
        monkeypatch.setenv("CIFAR10_LEVELS_CACHE", blocked)
    before = sha256_tree(work)
    line = assert_refused(call(train_main, "--dataset", tiny_cifar, *TRAIN), blocked)
    assert "HOME" in line and "CIFAR10_LEVELS_CACHE" in line and "HF_HOME" in line, line
    assert_refused(call(evaluate_main, "--weights", "model.safetensors", "--dataset", tiny_cifar),
                   blocked)
    assert sha256_tree(work) == before


def test_tracker_not_installed_is_refused_before_training(tiny_cifar, work, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else find_spec(name, *a))
    before = sha256_tree(work)
    argv = ["--dataset", tiny_cifar, *TRAIN, "--report-to", "tensorboard"]
    assert_refused(call(train_main, *argv), "--report-to tensorboard: tensorboard is not installed")
    assert sha256_tree(work) == before


@pytest.mark.parametrize("key", [None, "bogus" * 8])
def test_wandb_forced_online_without_a_working_key_fails_fast(key, tiny_cifar, work, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("NETRC", str(work / "no_netrc"))
    if key:
        monkeypatch.setenv("WANDB_API_KEY", key)
    else:
        monkeypatch.delenv("WANDB_API_KEY", raising=False)
    before = sha256_tree(work)
    argv = ["--dataset", tiny_cifar, *[a if a != "none" else "wandb" for a in TRAIN]]
    assert_refused(call(train_main, *argv), "WANDB_MODE=online")
    assert_refused(call(ensemble_main, "--weights", "model.safetensors", "--report-to", "wandb"),
                   "WANDB_MODE=online")
    assert sha256_tree(work) == before
