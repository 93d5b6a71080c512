"""Distributed runs are correct: real gloo processes on CPU, launched the way users launch them.

Every launch here sets ACCELERATE_USE_CPU=1 with the multi-GPU launcher (or torchrun): the only
way to get two real CPU processes (docs/distributed.md).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers.commands import ROOT, TINY_TRAIN, free_port
from helpers.runs import history

pytestmark = pytest.mark.slow  # whole training runs, in this process or started as commands

HELPERS = ROOT / "tests" / "distributed_helpers"
BIN = Path(sys.executable).parent
TIMEOUT = 600


def launch(command: list, env: dict | None = None, returncode: int = 0) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1",
                "PYTHONUNBUFFERED": "1", **(env or {})}
    result = subprocess.run([str(c) for c in command], cwd=ROOT, env=full_env, capture_output=True,
                            text=True, timeout=TIMEOUT)
    if result.returncode != returncode:
        raise AssertionError(f"{' '.join(map(str, command))} failed ({result.returncode}):\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def accelerate_launch_two(script: Path, *args) -> list:
    """The documented two-process CPU launch (a free port: other runs may hold 29500)."""
    return [BIN / "accelerate", "launch", "--multi_gpu", "--num_processes", "2",
            "--num_cpu_threads_per_process", "1", "--main_process_port", free_port(), script, *args]


# ---- a two-process run of the real training command ------------------------------------------

@pytest.fixture(scope="module")
def two_process_run(tiny_cifar, tmp_path_factory):
    """train.py (plus a hook writing each process's weight and EMA digests per epoch), 2 processes, W&B."""
    out = tmp_path_factory.mktemp("two_process")
    digests = out / "digests"

    def run(*extra: str, out: Path = out, digests: Path = digests, env: dict | None = None,
            returncode: int = 0) -> subprocess.CompletedProcess:
        return launch(accelerate_launch_two(
            HELPERS / "train_recording_weights.py", "--dataset", tiny_cifar, "--output-dir", out,
            *TINY_TRAIN, "--report-to", "wandb", "--arch", "test_resnet", "--lr", "1e-2", "1e-2",
            "--ema", "0.9", *extra), env={"RECORD_WEIGHTS_DIR": str(digests), "WANDB_MODE": "offline",
                                          **(env or {})}, returncode=returncode)

    first = run("--epochs", "1", "1")
    return {"out": out, "run_dir": out / "L1-test_resnet-s42", "digests": digests, "first": first,
            "run": run}


def digest(digests: Path, rank: int, epoch: int) -> dict:
    return json.loads((digests / f"rank{rank}-epoch{epoch}.json").read_text())


def test_two_processes_train_to_identical_weights(two_process_run):
    stdout = two_process_run["first"].stdout
    assert "hardware: 2 CPU process(es)" in stdout
    assert "batch 32/device x 2 process(es) x 1 accumulation = global batch 64" in stdout
    for epoch in (1, 2):
        rank0, rank1 = (digest(two_process_run["digests"], rank, epoch) for rank in (0, 1))
        assert rank0["parameters"] == rank1["parameters"], f"epoch {epoch}: parameters differ"
        assert rank0["buffers"] == rank1["buffers"], f"epoch {epoch}: BatchNorm statistics differ"
        assert rank0["ema"] == rank1["ema"], f"epoch {epoch}: the EMAs differ"
    assert digest(two_process_run["digests"], 0, 1) != digest(two_process_run["digests"], 0, 2)
    assert digest(two_process_run["digests"], 0, 1)["ema"] != digest(two_process_run["digests"], 0, 2)["ema"]


def test_two_processes_write_every_file_once(two_process_run):
    run_dir, stdout = two_process_run["run_dir"], two_process_run["first"].stdout
    results = json.loads((run_dir / "results.json").read_text())
    assert results["num_processes"] == 2 and results["global_batch"] == 64
    assert results["split_sizes"] == {"train": 360, "val": 40, "test": 100}
    assert [h["epoch"] for h in history(run_dir)] == [1, 2]
    for name in ("best.safetensors", "last.safetensors", "results.json"):
        assert (run_dir / name).is_file()
    assert not [p for p in run_dir.rglob("*") if ".tmp" in p.name], "leftover temporary files"
    assert stdout.count("test accuracy") == 1 and stdout.count("epoch 2/2") == 1
    wandb_runs = list(two_process_run["out"].rglob("offline-run-*"))
    assert len(wandb_runs) == 1, f"expected one W&B run, found {wandb_runs}"


def test_resume_after_a_two_process_run(two_process_run, tmp_path):
    """A two-process run stopped after its first epoch continues where it stopped with --resume."""
    run, digests = two_process_run["run"], tmp_path / "digests"
    # the launcher reports its processes' exit 143 as its own 1
    stopped = run("--epochs", "1", "2", out=tmp_path, digests=digests, env={"STOP_AFTER_EPOCH": "1"},
                  returncode=1)
    assert "stopped: state saved" in stopped.stdout
    run_dir = tmp_path / "L1-test_resnet-s42"
    first_history = history(run_dir)
    resumed = run("--epochs", "1", "2", "--resume", out=tmp_path, digests=digests)
    assert "resuming from" in resumed.stdout
    assert "epoch 3/3" in resumed.stdout and "epoch 1/3" not in resumed.stdout
    records = history(run_dir)
    assert [h["epoch"] for h in records] == [1, 2, 3]
    assert records[:len(first_history)] == first_history
    rank0, rank1 = (digest(digests, rank, 3) for rank in (0, 1))
    assert rank0 == rank1
    results = json.loads((run_dir / "results.json").read_text())
    assert results["num_processes"] == 2 and set(results["final_weights"]) >= {"raw", "ema"}
    wandb_ids = {p.name.rsplit("-", 1)[1] for p in tmp_path.rglob("offline-run-*")}
    assert len(wandb_ids) == 1, f"the resumed run should continue the same W&B run: {wandb_ids}"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without GPUs")
def test_processes_that_do_not_join_one_group_are_refused(tiny_cifar, tmp_path):
    """--multi_gpu without GPUs or ACCELERATE_USE_CPU=1 starts lone processes: not two runs on one dir."""
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}
    command = accelerate_launch_two(ROOT / "train.py", "--dataset", tiny_cifar, "--output-dir", tmp_path,
                                    *TINY_TRAIN, "--arch", "test_resnet", "--epochs", "0", "1")
    result = subprocess.run([str(c) for c in command], cwd=ROOT, env={**env, "OMP_NUM_THREADS": "1"},
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode != 0
    assert "the launcher started 2 processes but each one trains alone" in result.stderr
    assert "ACCELERATE_USE_CPU=1" in result.stderr
    assert not list(tmp_path.rglob("*.safetensors"))


# ---- the Trainer and evaluation.evaluate in 1, 2 and 3 processes -------------------------------------

@pytest.fixture(scope="module")
def checks(tiny_cifar, tmp_path_factory):
    """distributed_checks.py in one process (python) and in 2 and 3 processes (torchrun)."""
    out = tmp_path_factory.mktemp("distributed_checks")
    script = HELPERS / "distributed_checks.py"
    logs = {1: launch([sys.executable, script, tiny_cifar, out]).stdout}
    for world in (2, 3):
        logs[world] = launch([BIN / "torchrun", "--standalone", "--nproc_per_node", world, script,
                              tiny_cifar, out]).stdout
    return {"out": out, "logs": logs}


def weights(checks, run: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(checks["out"] / run / "Ldist-test_convnext-s42" / "last.safetensors")


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.mark.parametrize("batch", ["64", "100"])
def test_evaluation_counts_every_sample_once_in_1_2_3_processes(checks, batch):
    """1,001 samples: no world size divides them; gather_for_metrics drops the padding."""
    single = json.loads((checks["out"] / "eval-1.json").read_text())[batch]
    assert single["count"] == 1001 and single["labels_in_order"]
    assert 0 < single["acc"] < 1
    for world in (2, 3):
        record = json.loads((checks["out"] / f"eval-{world}.json").read_text())
        assert record["world_size"] == world
        multi = record[batch]
        assert multi["count"] == 1001 and multi["labels_in_order"]
        assert multi["labels"] == single["labels"]
        assert multi["preds"] == single["preds"]
        assert multi["acc"] == single["acc"]
        assert multi["loss"] == pytest.approx(single["loss"], rel=1e-6)
        assert torch.allclose(torch.tensor(multi["probs"]), torch.tensor(single["probs"]), atol=1e-6)


def test_two_processes_of_batch_b_match_one_process_of_batch_2b(checks):
    """No augmentation, fp32, LayerNorm model: DDP's averaged gradients equal the big batch's."""
    assert "batch 20/device x 2 process(es) x 1 accumulation = global batch 40" in checks["logs"][2]
    assert "batch 40/device x 1 process(es) x 1 accumulation = global batch 40" in checks["logs"][1]
    one = weights(checks, "one")
    assert max_difference(weights(checks, "two"), one) < 1e-4
    from accelerate.utils import set_seed

    from cifar10_levels.models.factory import create_model

    set_seed(42)  # the Trainer's initial weights: training moved them far more than the tolerance
    assert max_difference(create_model("test_convnext", 10).state_dict(), one) > 1e-2


def test_grad_accum_matches_a_larger_batch(checks):
    """--grad-accum 2 with batch B equals batch 2B: Accelerate's accumulate() averages, steps once."""
    assert "batch 20/device x 1 process(es) x 2 accumulation = global batch 40" in checks["logs"][1]
    assert max_difference(weights(checks, "accum"), weights(checks, "one")) < 1e-4


def test_linear_lr_scaling_follows_the_global_batch(checks):
    """Half the lr with --lr-scaling linear at twice the global batch (processes or accumulation)."""
    one = weights(checks, "one")
    assert max_difference(weights(checks, "two_linear"), one) < 1e-4
    assert max_difference(weights(checks, "accum_linear"), one) < 1e-4


def test_scaled_lr():
    from cifar10_levels.optim.factory import scaled_lr
    from cifar10_levels.recipes import get_recipe

    recipe = get_recipe("1").with_overrides(batch_size=32)
    assert scaled_lr(1e-3, recipe, 32 * 4 * 2, "linear") == pytest.approx(8e-3)
    assert scaled_lr(1e-3, recipe, 32 * 4 * 2, "none") == 1e-3
