"""Resume: SIGTERM saves and exits 143, SIGKILL loses at most the epoch in progress, and a resumed
run ends as the uninterrupted one does (same seed, same machine, CPU: bit for bit), its EMA too."""
from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from cifar10_levels.cli.train import train_main

from helpers.commands import TINY_TRAIN, start_train, stop_when, train
from helpers.runs import EMA, EPOCHS, RUN, SMALL, check_every_file_loads, ema_state, history, outcome, \
    same_tensors, trained_run

pytestmark = pytest.mark.slow  # whole training runs, in this process or started as commands

@pytest.fixture(scope="module")
def uninterrupted(tiny_cifar, tmp_path_factory) -> Path:
    return trained_run("small_ema", tiny_cifar, tmp_path_factory)


def test_same_seed_trains_the_same_raw_weights_with_or_without_ema(uninterrupted, tiny_cifar, tmp_path):
    """A second, independent run of the same seed without --ema: the same raw weights, epoch by epoch
    (the EMA only reads them; its extra validation pass leaves the augmentation stream alone)."""
    args = ["--dataset", str(tiny_cifar), "--output-dir", str(tmp_path), *TINY_TRAIN, *SMALL, *EPOCHS]
    assert train_main(args) == 0
    again, with_ema = history(tmp_path / RUN), history(uninterrupted)
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
        assert [h[key] for h in again] == [h[key] for h in with_ema], key
    assert all("val_acc_ema" not in h for h in again) and all("val_acc_ema" in h for h in with_ema)
    assert same_tensors(tmp_path / RUN / "last.safetensors", uninterrupted / "last.safetensors")


def saved_epochs(run_dir: Path) -> int | None:
    """The epochs the resume state holds (None before the first save)."""
    path = run_dir / "state" / "train_state.json"
    return json.loads(path.read_text())["epochs_done"] if path.exists() else None


def test_sigterm_then_sigkill_mid_epoch_resume_to_the_same_end(uninterrupted, tiny_cifar, tmp_path):
    run_dir = tmp_path / RUN
    proc = start_train(tiny_cifar, tmp_path, *SMALL, *EPOCHS, *EMA)
    stop_when(proc, lambda: len(history(run_dir)) >= 1)  # epoch 1 logged: its state save comes next
    proc.send_signal(signal.SIGTERM)   # checked every 10 steps: lands at step 10 of epoch 2
    proc.send_signal(signal.SIGCONT)
    output = proc.communicate(timeout=600)[0]
    assert proc.returncode == 143, output
    assert f"stopped: state saved in {run_dir / 'state'}" in output and "--resume" in output
    state = json.loads((run_dir / "state" / "train_state.json").read_text())
    assert (state["epochs_done"], state["step"]) == (1, 10), state
    assert ema_state(run_dir)["updates"] == 30  # one per optimizer step
    check_every_file_loads(run_dir)
    assert (run_dir / "curves.png").is_file()  # drawn when the run stops, up to its last epoch

    proc = start_train(tiny_cifar, tmp_path, *SMALL, *EPOCHS, *EMA, "--resume")
    stop_when(proc, lambda: saved_epochs(run_dir) == 2)  # epoch 2 saved, epoch 3 under way
    assert len(history(run_dir)) == 2
    proc.kill()                        # SIGKILL in the middle of epoch 3
    proc.communicate()
    check_every_file_loads(run_dir)

    result = train(tiny_cifar, tmp_path, *SMALL, *EPOCHS, *EMA, "--resume")
    assert "resuming from" in result.stdout
    assert [h["epoch"] for h in history(run_dir)] == [1, 2, 3]
    resumed, expected = outcome(run_dir), outcome(uninterrupted)
    # epoch 2 restarted at step 10: its train loss averages only the batches after the restart
    assert resumed.pop("train_loss")[::2] == expected.pop("train_loss")[::2]
    assert resumed == expected
    assert same_tensors(run_dir / "best.safetensors", uninterrupted / "best.safetensors")
    assert same_tensors(run_dir / "last.safetensors", uninterrupted / "last.safetensors")
    resumed_ema, expected_ema = ema_state(run_dir), ema_state(uninterrupted)
    assert resumed_ema["updates"] == expected_ema["updates"] == 60
    assert all(torch.equal(resumed_ema["weights"][k], v) for k, v in expected_ema["weights"].items())
    results, expected_results = (json.loads((d / "results.json").read_text()) for d in (run_dir, uninterrupted))
    for key in ("final_weights", "best_weights", "test_acc_tta"):
        assert results[key] == expected_results[key], key


def test_resume_never_replaces_a_better_best_saved_after_the_state(tiny_cifar, tmp_path):
    """A kill between writing best.safetensors and the state: the resumed run must know that best."""
    run_dir = tmp_path / RUN
    train(tiny_cifar, tmp_path, *SMALL, "--epochs", "0", "1")
    best = run_dir / "best.safetensors"
    with safe_open(str(best), framework="pt") as f:
        header = f.metadata()
    header.update(val_acc="1.0", epoch="7")  # as if an epoch after the saved state scored 100%
    save_file(load_file(best), str(best), metadata=header)
    weights = load_file(best)

    state = json.loads((run_dir / "state" / "train_state.json").read_text())
    state.update(epoch=0, step=0, epochs_done=0, best_val_acc=-1.0, best_epoch=-1, history=[])
    (run_dir / "state" / "train_state.json").write_text(json.dumps(state))
    train(tiny_cifar, tmp_path, *SMALL, "--epochs", "0", "1", "--resume")
    results = json.loads((run_dir / "results.json").read_text())
    assert (results["best_val_acc"], results["best_epoch"]) == (1.0, 7)
    assert all(torch.equal(weights[k], v) for k, v in load_file(best).items())
    assert [h["epoch"] for h in history(run_dir)] == [1]
