"""One command for the first start and every restart (a requeued Slurm job): --resume auto starts a run
or continues it, and --checkpoint-every saves the resume state mid-epoch, so a run killed without a
signal resumes from there and ends bit for bit as the uninterrupted run."""
from __future__ import annotations

import itertools
import json
import re
import shutil
from pathlib import Path

import pytest

from cifar10_levels.checkpoint.run_dir import find_state_dir
from cifar10_levels.train.checkpoint_timer import CheckpointTimer
from cifar10_levels.train.step_hooks import StopFlag

from helpers.commands import start_train, stop_when, train
from helpers.runs import EMA, EPOCHS, RUN, SMALL, check_every_file_loads, ema_state, history, outcome, \
    same_tensors, trained_run

pytestmark = pytest.mark.slow  # whole training runs, in this process or started as commands

AUTO = ["--resume", "auto"]
TOY = ["--arch", "test_resnet", "--lr", "1e-2", "1e-2"]


@pytest.fixture(scope="module")
def auto_run(tiny_cifar, tmp_path_factory) -> tuple[Path, list]:
    """The same command with --resume auto twice: a first start that a stop request ends at its first
    check (step 10), then its continuation to the end."""
    out = tmp_path_factory.mktemp("auto")
    command = [*TOY, "--epochs", "0", "2", *AUTO]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(StopFlag, "requested", lambda self: True)
        first = train(tiny_cifar, out, *command, check=False)
    return out / RUN, [first, train(tiny_cifar, out, *command)]


def test_resume_auto_starts_a_new_run_then_continues_it(auto_run):
    run_dir, (first, second) = auto_run
    assert first.returncode == 143 and "resuming from" not in first.stdout
    assert f"resuming from {run_dir / 'state'}: phase 2, epoch 1, step 10" in second.stdout
    assert "epoch 2/2" in second.stdout
    assert [h["epoch"] for h in history(run_dir)] == [1, 2]
    assert json.loads((run_dir / "results.json").read_text())["checkpoint_every"] is None


def test_a_plain_start_still_never_replaces_the_run(auto_run, tiny_cifar):
    run_dir, _ = auto_run
    again = train(tiny_cifar, run_dir.parent, *TOY, "--epochs", "0", "2", check=False)
    assert again.returncode == 2 and f"run directory {run_dir} already holds a run" in again.stderr
    both = train(tiny_cifar, run_dir.parent, *TOY, "--epochs", "0", "2", *AUTO, "--overwrite", check=False)
    assert both.returncode == 2, both.stdout
    assert both.stderr.strip().splitlines()[-1] == (
        "error: --resume auto and --overwrite: choose one (--resume auto continues the run in the run "
        "directory, --overwrite replaces it)")
    typo = train(tiny_cifar, run_dir.parent, *TOY, "--resume", "last", check=False)
    assert typo.returncode == 2 and "argument --resume: 'last': give no value" in typo.stderr


def test_resume_auto_refuses_a_run_that_saved_no_state(auto_run, tiny_cifar, tmp_path):
    """A run cut short before its first state save still holds checkpoints: not replaced silently."""
    run_dir = tmp_path / RUN
    shutil.copytree(auto_run[0], run_dir, ignore=shutil.ignore_patterns("state"))
    before = sorted(p.name for p in run_dir.iterdir())
    result = train(tiny_cifar, tmp_path, *TOY, "--epochs", "0", "2", *AUTO, check=False)
    assert result.returncode == 2, result.stdout
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith(f"error: --resume auto: run directory {run_dir} holds a run (best.safetensors")
    assert "no saved state" in message and "--overwrite" in message
    assert sorted(p.name for p in run_dir.iterdir()) == before


def train_accuracies(run_dir: Path) -> list[float]:
    return [h["train_acc"] for h in history(run_dir)]


def test_checkpoint_timer_is_due_once_the_interval_has_passed_since_the_last_save(accelerator):
    now = [100.0]
    timer = CheckpointTimer(accelerator, 30.0, clock=lambda: now[0])
    now[0] = 129.9
    assert not timer.due()
    now[0] = 130.0
    assert timer.due()
    timer.saved()
    now[0] = 159.0
    assert not timer.due()


def test_checkpoint_every_saves_mid_epoch_and_a_killed_run_resumes_to_the_same_weights(
        tiny_cifar, tmp_path, tmp_path_factory):
    """--checkpoint-every (here: at every check, each 10 steps) then SIGKILL in epoch 2, no signal
    handler involved: the same command with --resume auto continues from the mid-epoch state."""
    uninterrupted = trained_run("small_ema", tiny_cifar, tmp_path_factory)
    run_dir = tmp_path / RUN
    command = [*SMALL, *EPOCHS, *EMA, "--checkpoint-every", "0.001s", *AUTO]
    proc = start_train(tiny_cifar, tmp_path, *command)

    def mid_epoch_state() -> dict | None:
        state_dir = find_state_dir(run_dir)
        try:
            state = json.loads((state_dir / "train_state.json").read_text()) if state_dir else None
        except (FileNotFoundError, json.JSONDecodeError):  # swapped in just now
            return None
        return state if state and state["epochs_done"] >= 1 and state["step"] > 0 else None

    stop_when(proc, mid_epoch_state)  # a mid-epoch state is on disk: kill the run there
    proc.kill()
    proc.communicate()
    check_every_file_loads(run_dir)

    result = train(tiny_cifar, tmp_path, *command)
    resumed_at = re.search(r"resuming from \S+: phase 2, epoch (\d), step (\d+)", result.stdout)
    assert resumed_at and int(resumed_at[1]) >= 2 and int(resumed_at[2]) > 0, result.stdout
    assert [h["epoch"] for h in history(run_dir)] == [1, 2, 3]
    resumed, expected = outcome(run_dir), outcome(uninterrupted)
    # the restarted epoch's loss goes on from the totals saved mid-epoch: the same sum, added in another order
    assert resumed.pop("train_loss") == pytest.approx(expected.pop("train_loss"), rel=1e-5)
    assert resumed == expected
    assert train_accuracies(run_dir) == train_accuracies(uninterrupted)
    assert same_tensors(run_dir / "best.safetensors", uninterrupted / "best.safetensors")
    assert same_tensors(run_dir / "last.safetensors", uninterrupted / "last.safetensors")
    resumed_ema, expected_ema = ema_state(run_dir), ema_state(uninterrupted)
    assert resumed_ema["updates"] == expected_ema["updates"]
    assert all(resumed_ema["weights"][k].equal(v) for k, v in expected_ema["weights"].items())
    assert json.loads((run_dir / "results.json").read_text())["checkpoint_every"] == 0.001


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
    # the epoch that had no batch left after the restart reports the whole epoch, as uninterrupted
    assert outcome(tmp_path / RUN)["train_loss"] == pytest.approx(outcome(uninterrupted)["train_loss"], rel=1e-5)
    assert train_accuracies(tmp_path / RUN) == train_accuracies(uninterrupted)
