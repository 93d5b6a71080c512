"""--compile end to end with torch's default inductor backend: train, load the best, test, resume."""
from __future__ import annotations

import itertools
import json

import pytest
from safetensors.torch import load_file

from cifar10_levels.checkpoint.io import load_checkpoint
from cifar10_levels.train import step_hooks

from helpers.commands import train

# the smallest run that compiles every graph once: one batch size for training, one for evaluation
TOY = ["--arch", "test_resnet", "--train-limit", "64", "--eval-limit", "20", "--batch-size", "20",
       "--compile"]

pytestmark = pytest.mark.slow  # whole training runs, in this process or started as commands


def test_compiled_run_ends_with_clean_checkpoints_and_resumes(tiny_cifar, tmp_path, monkeypatch):
    checks = itertools.count(1)
    with monkeypatch.context() as patch:  # a stop request at step 4, the first of epoch 2
        patch.setattr(step_hooks, "STOP_CHECK_EVERY", 1)
        patch.setattr(step_hooks.StopFlag, "requested", lambda self: next(checks) == 4)
        assert train(tiny_cifar, tmp_path, *TOY, "--epochs", "0", "2", check=False).returncode == 143
    (run_dir,) = tmp_path.glob("L1-*")
    best = run_dir / "best.safetensors"
    assert not [k for k in load_file(best) if "_orig_mod" in k or k.startswith("module.")]

    resumed = train(tiny_cifar, tmp_path, *TOY, "--epochs", "0", "2", "--resume")
    results = run_dir / "results.json"
    model, meta = load_checkpoint(best)
    assert meta.arch == "test_resnet" and meta.test_acc == json.loads(results.read_text())["test_acc"]
    assert "resuming from" in resumed.stdout
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]
    assert json.loads(results.read_text())["best_epoch"] in (1, 2)
    load_checkpoint(best)
