"""slurm/train.sbatch on a real two-node Slurm cluster started on this host (tests/helpers/slurm.py):
one task per node runs `accelerate launch`, the two CPU processes train over gloo and write one result;
a job preempted mid-epoch saves, requeues itself and ends with the uninterrupted job's weights, in the
same W&B run."""
from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import pytest

from helpers.commands import ROOT, TINY_TRAIN, free_port
from helpers.runs import same_tensors
from helpers.slurm import SlurmCluster
from helpers.wandb_runs import read_wandb_run

SBATCH = ROOT / "slurm" / "train.sbatch"
RUN = "L1-test_resnet-s42"
# 360 training images in batches of 8 on each of 2 nodes: 22 steps an epoch, so a stop (checked every 10
# steps) always lands mid-epoch
FLAGS = [*(a for a in TINY_TRAIN if a not in ("--report-to", "none")), "--report-to", "wandb",
         "--level", "1", "--arch", "test_resnet", "--eval-limit", "40", "--batch-size", "8",
         "--lr", "1e-2", "1e-2", "--epochs", "0", "3"]

pytestmark = pytest.mark.slow  # whole training runs, in this process or started as commands
# what a CPU-only test cluster lacks: the GPUs and the cores the file asks for
CPU_OPTIONS = ("--gpus-per-node=0", "--cpus-per-task=1", f"--chdir={ROOT}")


def job_env() -> dict[str, str]:
    """The submitting shell's environment, which sbatch hands to the job: CPU processes, offline W&B,
    this Python's `accelerate` first on PATH, and a free port (other runs may hold the file's default)."""
    return {**os.environ, "ACCELERATE_USE_CPU": "1", "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1",
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "MAIN_PROCESS_PORT": str(free_port())}


def submit(slurm: SlurmCluster, dataset: Path, out: Path) -> tuple[str, Path]:
    log = out / "job.out"
    job = slurm.sbatch(SBATCH, "--dataset", str(dataset), "--output-dir", str(out), *FLAGS,
                       options=(*CPU_OPTIONS, f"--output={log}"), env=job_env())
    return job, log


def history(run_dir: Path) -> list[dict]:
    path = run_dir / "history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wandb_ids(run_dir: Path) -> set[str]:
    return {p.name.rsplit("-", 1)[1] for p in (run_dir / "wandb").glob("offline-run-*")}


@pytest.fixture(scope="module")
def uninterrupted(slurm, tiny_cifar, tmp_path_factory) -> tuple[Path, str, dict]:
    out = tmp_path_factory.mktemp("slurm_uninterrupted")
    job, log = submit(slurm, tiny_cifar, out)
    state = slurm.wait_until_finished(job)
    return out / RUN, log.read_text(), state


def test_a_two_node_job_trains_and_writes_one_result(uninterrupted):
    run_dir, output, job = uninterrupted
    assert job["JobState"] == "COMPLETED" and job["Restarts"] == "0", (job, output)
    assert "hardware: 2 CPU process(es)" in output  # one group over both nodes, not two runs alone
    assert output.count("test accuracy") == 1 and output.count("epoch 3/3") == 1
    assert re.search(r"job \d+ start 1 on n\[1-2\]; main process at 127\.0\.0\.1:\d+", output)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["num_processes"] == 2 and results["global_batch"] == 16
    assert results["checkpoint_every"] == 1800  # the file's --checkpoint-every 30m
    assert [h["epoch"] for h in history(run_dir)] == [1, 2, 3]
    assert len(wandb_ids(run_dir)) == 1


def test_a_preempted_job_requeues_itself_and_ends_as_the_uninterrupted_one(
        uninterrupted, slurm, tiny_cifar, tmp_path):
    job, log = submit(slurm, tiny_cifar, tmp_path)
    run_dir = tmp_path / RUN
    deadline = time.monotonic() + 300
    while len(history(run_dir)) < 1:  # the signal the time limit sends, once epoch 1 is done
        assert time.monotonic() < deadline and slurm.job(job)["JobState"] in ("PENDING", "RUNNING"), \
            log.read_text() if log.exists() else slurm.job(job)
        time.sleep(0.05)
    slurm.run("scancel", "--signal=TERM", "--batch", job)
    state = slurm.wait_until_finished(job)
    output = log.read_text()
    assert state["JobState"] == "COMPLETED" and state["Restarts"] == "1", (state, output)
    first, second = output.split("start 2 on")
    assert "signal: the training processes save the resume state and stop" in first
    assert "/state; continue with the same command\n" in first and "requeueing job" in first
    resumed_at = re.search(r"resuming from \S+: phase 2, epoch (\d), step (\d+)", second)
    assert resumed_at and int(resumed_at[1]) >= 2 and int(resumed_at[2]) > 0, second
    assert "test accuracy" not in first and second.count("test accuracy") == 1
    assert [h["epoch"] for h in history(run_dir)] == [1, 2, 3]
    expected = uninterrupted[0]
    assert same_tensors(run_dir / "last.safetensors", expected / "last.safetensors")
    assert same_tensors(run_dir / "best.safetensors", expected / "best.safetensors")
    assert json.loads((run_dir / "results.json").read_text())["test_acc"] == \
        json.loads((expected / "results.json").read_text())["test_acc"]
    # the epoch cut by the signal reports all its batches on both nodes, as the uninterrupted job's
    resumed_epochs, expected_epochs = history(run_dir), history(expected)
    assert [h["train_acc"] for h in resumed_epochs] == [h["train_acc"] for h in expected_epochs]
    assert [h["train_loss"] for h in resumed_epochs] == \
        pytest.approx([h["train_loss"] for h in expected_epochs], rel=1e-5)
    # one W&B run in two parts, the first one whole: the signal stopped training, not W&B's service
    parts = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(parts) == 2 and len(wandb_ids(run_dir)) == 1
    assert all(read_wandb_run(part).exited for part in parts)
    assert "Traceback" not in output
