"""Resume: SIGTERM saves and exits 143, SIGKILL loses at most the epoch in progress, and a resumed
run ends as the uninterrupted one does (same seed, same machine, CPU: bit for bit)."""
from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from cifar10_levels.cli import train_main

from conftest import TINY_TRAIN, train
from test_crash_safety import RUN, SMALL, check_every_file_loads, start_train, wait_for

EPOCHS = ["--epochs", "0", "3"]


def history(run_dir: Path) -> list[dict]:
    path = run_dir / "history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def outcome(run_dir: Path) -> dict:
    """What must match between two runs of the same recipe and seed."""
    results = json.loads((run_dir / "results.json").read_text())
    return {"test_acc": results["test_acc"], "best_val_acc": results["best_val_acc"],
            "best_epoch": results["best_epoch"],
            "val_acc": [h["val_acc"] for h in history(run_dir)],
            "train_loss": [h["train_loss"] for h in history(run_dir)]}


def same_tensors(a: Path, b: Path) -> bool:
    ta, tb = load_file(a), load_file(b)
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


@pytest.fixture(scope="module")
def uninterrupted(tiny_cifar, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    train(tiny_cifar, out, *SMALL, *EPOCHS)
    return out / RUN


def test_same_seed_same_machine_gives_identical_results(uninterrupted, tiny_cifar, tmp_path):
    args = ["--dataset", str(tiny_cifar), "--output-dir", str(tmp_path), *TINY_TRAIN, *SMALL, *EPOCHS]
    assert train_main(args) == 0  # in this process: a second, independent run
    again = tmp_path / RUN
    assert outcome(again) == outcome(uninterrupted)
    assert same_tensors(again / "best.safetensors", uninterrupted / "best.safetensors")
    assert same_tensors(again / "last.safetensors", uninterrupted / "last.safetensors")


def test_sigterm_then_sigkill_mid_epoch_resume_to_the_same_end(uninterrupted, tiny_cifar, tmp_path):
    run_dir = tmp_path / RUN
    proc = start_train(tiny_cifar, tmp_path, *SMALL, *EPOCHS)
    wait_for(proc, lambda: len(history(run_dir)) >= 1)
    proc.send_signal(signal.SIGTERM)   # checked every 10 steps: lands at step 10 of epoch 2
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 143, output
    assert f"stopped: state saved in {run_dir / 'state'}" in output and "--resume" in output
    state = json.loads((run_dir / "state" / "train_state.json").read_text())
    assert (state["epochs_done"], state["step"]) == (1, 10), state
    check_every_file_loads(run_dir)

    proc = start_train(tiny_cifar, tmp_path, *SMALL, *EPOCHS, "--resume")
    wait_for(proc, lambda: len(history(run_dir)) >= 2)
    time.sleep(history(run_dir)[-1]["epoch_seconds"] / 2)
    assert proc.poll() is None
    proc.kill()                        # SIGKILL in the middle of epoch 3
    proc.communicate()
    check_every_file_loads(run_dir)

    result = train(tiny_cifar, tmp_path, *SMALL, *EPOCHS, "--resume")
    assert "resuming from" in result.stdout
    assert [h["epoch"] for h in history(run_dir)] == [1, 2, 3]
    resumed, expected = outcome(run_dir), outcome(uninterrupted)
    # epoch 2 restarted at step 10: its train loss averages only the batches after the restart
    assert resumed.pop("train_loss")[::2] == expected.pop("train_loss")[::2]
    assert resumed == expected
    assert same_tensors(run_dir / "best.safetensors", uninterrupted / "best.safetensors")
    assert same_tensors(run_dir / "last.safetensors", uninterrupted / "last.safetensors")


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
