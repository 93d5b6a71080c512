"""Under `accelerate launch` a bad input is one line, once, whatever the number of processes."""
from __future__ import annotations

import pytest
import os
import subprocess
import sys
from pathlib import Path

from helpers.commands import ROOT, TINY_TRAIN, free_port

pytestmark = pytest.mark.slow  # whole training runs, in this process or started as commands

ACCELERATE = Path(sys.executable).parent / "accelerate"


def launch(tmp_path: Path, dataset: Path, *launcher_args: str) -> subprocess.CompletedProcess:
    # --resume with nothing saved: the one problem preflight finds, on every process
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [str(ACCELERATE), "launch", *launcher_args, "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", str(ROOT / "train.py"), "--dataset", str(dataset), "--output-dir", str(tmp_path), *TINY_TRAIN,
         "--arch", "test_resnet", "--resume"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_two_processes_print_the_error_once(tmp_path, tiny_cifar):
    result = launch(tmp_path, tiny_cifar, "--multi_gpu", "--num_processes", "2", "--num_cpu_threads_per_process",
                    "1", "--main_process_port", str(free_port()))
    assert result.returncode == 1  # the launcher turns any failure into 1
    assert result.stderr.count("error: --resume: nothing to resume") == 1, result.stderr


def test_quiet_single_process_launch_prints_only_the_line(tmp_path, tiny_cifar):
    result = launch(tmp_path, tiny_cifar, "-q", "--num_processes", "1")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --resume: nothing to resume"), result.stderr
