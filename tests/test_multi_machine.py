"""Two machines without a shared disk, simulated on this host: two `accelerate launch` commands
(--num_machines 2, one process each) in their own directories with their own output dirs."""
from __future__ import annotations

import pytest
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from cifar10_levels.checkpoint.io import load_checkpoint

from helpers.commands import ROOT, TINY_TRAIN, free_port, signal_trees, stop_when

ACCELERATE = Path(sys.executable).parent / "accelerate"
# 320 images in batches of 8 over 2 processes: 20 steps an epoch, a stop request lands mid-epoch
RUN = ["--arch", "test_resnet", "--train-limit", "320", "--eval-limit", "40", "--batch-size", "8",
       "--lr", "1e-2", "1e-2"]

pytestmark = pytest.mark.slow  # whole training runs, in this process or started as commands


def start_machines(dataset: Path, root: Path, *args: str) -> list[subprocess.Popen]:
    port = str(free_port())
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    procs = []
    for rank in (0, 1):
        home = root / f"machine{rank}"
        home.mkdir(exist_ok=True)
        procs.append(subprocess.Popen(
            [str(ACCELERATE), "launch", "--multi_gpu", "--num_machines", "2", "--num_processes", "2",
             "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", port,
             "--num_cpu_threads_per_process", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
             str(ROOT / "train.py"), "--dataset", str(dataset), "--output-dir", "out", *TINY_TRAIN,
             *RUN, *args], cwd=home, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True))
    return procs


def finish(procs: list[subprocess.Popen], expected: tuple[int, ...] = (0,)) -> list[str]:
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode in expected, out[-4000:]
    return outputs


def run_dir(root: Path, rank: int) -> Path:
    (best,) = (root / f"machine{rank}" / "out").glob("*/best.safetensors")
    return best.parent


def test_two_machines_without_a_shared_disk_train_stop_and_resume(tiny_cifar, tmp_path):
    procs = start_machines(tiny_cifar, tmp_path, "--epochs", "0", "2")
    state = tmp_path / "machine1" / "out"
    stop_when(procs, lambda: list(state.glob("*/state/train_state.json")))  # epoch 1 saved
    for p in procs:
        p.send_signal(signal.SIGTERM)
    signal_trees(procs, signal.SIGCONT)
    # the launcher reports its process's 143 as 1, or, when the signal reaches its own handler
    # first, stops the process and exits 143 itself: which one comes first is the launcher's race
    outputs = finish(procs, expected=(1, 143))
    assert "hardware: 2 CPU process(es)" in outputs[0]  # one group of two, not two runs alone
    assert "stopped: state saved" in outputs[0]
    for rank in (0, 1):
        saved = json.loads((run_dir(tmp_path, rank) / "state" / "train_state.json").read_text())
        assert saved["epochs_done"] >= 1

    outputs = finish(start_machines(tiny_cifar, tmp_path, "--epochs", "0", "2", "--resume"))
    assert "resuming from" in outputs[0]
    results = json.loads((run_dir(tmp_path, 0) / "results.json").read_text())
    assert results["num_processes"] == 2 and len(results["recipe"]) > 0
    assert not list((tmp_path / "machine1" / "out").glob("*/results.json"))  # printed/recorded once
    assert "test accuracy" in outputs[0] and "test accuracy" not in outputs[1]
    for rank in (0, 1):
        model, meta = load_checkpoint(run_dir(tmp_path, rank) / "best.safetensors")
        assert meta.epoch >= 1 and meta.test_acc == results["test_acc"]
