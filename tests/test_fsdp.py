"""FSDP on CPUs: Accelerate 1.15 forms plain DDP (MULTI_CPU) for an FSDP launch when the processes
run on CPUs, so train.py stops at once with one line instead of training something else."""
from __future__ import annotations

import pytest
import os
import re
import subprocess
import sys
from pathlib import Path

from helpers.commands import ROOT, TINY_TRAIN, free_port

pytestmark = pytest.mark.slow  # whole training runs, in this process or started as commands

ACCELERATE = Path(sys.executable).parent / "accelerate"


def test_fsdp_launch_on_cpus_fails_at_once_with_one_line(tiny_cifar, tmp_path):
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [str(ACCELERATE), "launch", "--config_file", str(ROOT / "accelerate_configs" / "fsdp.yaml"),
         "--num_processes", "2", "--num_cpu_threads_per_process", "1", "--main_process_port",
         str(free_port()), str(ROOT / "train.py"), "--dataset", str(tiny_cifar), "--output-dir",
         str(tmp_path / "out"), *TINY_TRAIN, "--arch", "test_resnet", "--epochs", "0", "1"],
        env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1  # the launcher's code for a failed script
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: the launch asks for FSDP but Accelerate formed MULTI_CPU (it runs FSDP "
                      "on GPUs only, not on a CPU); on a CPU launch with accelerate_configs/"
                      "cpu_2proc.yaml instead (see docs/distributed.md)"], result.stderr
    assert "recipe:" not in result.stdout and not (tmp_path / "out").exists()


def test_checkpoint_save_and_load_best_on_an_fsdp2_sharded_model(tmp_path):
    """What train.py does under FSDP, on torch's FSDP2 with two gloo processes: gather the full
    weights, save our checkpoint on rank 0, load it back into sharded parameters on every rank."""
    script = ROOT / "tests" / "distributed_helpers" / "fsdp_checkpoint.py"
    torchrun = Path(sys.executable).parent / "torchrun"
    result = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "--master_port", str(free_port()), str(script),
         str(tmp_path / "best.safetensors")],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    # both ranks print to one pipe: their lines can interleave, so find the messages, not lines
    assert sorted(re.findall(r"fsdp checkpoint ok on rank \d", result.stdout)) == [
        "fsdp checkpoint ok on rank 0", "fsdp checkpoint ok on rank 1"]
