"""Restarting a run: a stop can land on an epoch's last batch, and the run resumes from there."""
from __future__ import annotations

import itertools
import json

from cifar10_levels.train.step_hooks import StopFlag

from conftest import train
from test_crash_safety import RUN, SMALL
from test_resume import EMA, EPOCHS, history, same_tensors
from trained_runs import trained_run


def test_a_stop_at_the_last_step_of_an_epoch_resumes_to_the_same_weights(tiny_cifar, tmp_path,
                                                                         tmp_path_factory, monkeypatch):
    """20 steps an epoch, a stop check every 10: a stop can land on an epoch's last batch, whose state
    leaves no batch of that epoch to train after the restart."""
    uninterrupted = trained_run("small_ema", tiny_cifar, tmp_path_factory)
    checks = itertools.count(1)
    monkeypatch.setattr(StopFlag, "requested", lambda self: next(checks) == 4)  # at global step 40
    command = [*SMALL, *EPOCHS, *EMA]
    assert train(tiny_cifar, tmp_path, *command, check=False).returncode == 143
    state = json.loads((tmp_path / RUN / "state" / "train_state.json").read_text())
    assert (state["epochs_done"], state["step"]) == (1, 20)
    monkeypatch.undo()
    result = train(tiny_cifar, tmp_path, *command, "--resume")
    assert "phase 2, epoch 2, step 20" in result.stdout
    assert [h["epoch"] for h in history(tmp_path / RUN)] == [1, 2, 3]
    assert same_tensors(tmp_path / RUN / "last.safetensors", uninterrupted / "last.safetensors")
