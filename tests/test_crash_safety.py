"""Nothing lost: a kill at any moment leaves files that load; a NaN stops the run and keeps the best."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cifar10_levels.checkpoint.io import read_meta
from cifar10_levels.cli.train import train_main
from cifar10_levels.checkpoint.run_dir import find_state_dir, replace_dir

from helpers.commands import TINY_TRAIN, start_train, stop_when, train
from helpers.runs import RUN, SMALL, check_every_file_loads


def saving(run_dir: Path, prefix: str) -> list[str]:
    """What is being written right now: atomic temporaries (.NAME.*.tmp) or state.tmp."""
    try:
        return [e.name for e in os.scandir(run_dir)
                if e.name.endswith(".tmp") and e.name.startswith(prefix)]
    except FileNotFoundError:
        return []


def kill_while_saving(proc: subprocess.Popen, run_dir: Path, after_epochs: int, prefix: str
                      ) -> list[str]:
    """Stop the run while a save is in progress (after `after_epochs` epochs), then SIGKILL it."""
    history = run_dir / "history.jsonl"
    stop_when(proc, lambda: history.exists() and len(history.read_text().splitlines()) >= after_epochs
              and saving(run_dir, prefix), slice_s=0.0005)
    caught = saving(run_dir, prefix)
    proc.kill()
    proc.wait()
    proc.stdout.close()
    return caught


@pytest.mark.slow
def test_sigkill_while_saving_leaves_files_that_load_and_resume(tiny_cifar, tmp_path):
    run_dir = tmp_path / RUN
    proc = start_train(tiny_cifar, tmp_path, *SMALL, "--epochs", "0", "3")
    caught = kill_while_saving(proc, run_dir, after_epochs=2, prefix="")
    print("killed while writing", caught)
    check_every_file_loads(run_dir)

    train(tiny_cifar, tmp_path, *SMALL, "--epochs", "0", "3", "--resume")
    check_every_file_loads(run_dir)
    epochs = [json.loads(line)["epoch"] for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]
    assert json.loads((run_dir / "results.json").read_text())["test_acc"] > 0.2
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith((".tmp", ".old"))]


def test_a_kill_between_the_renames_of_a_state_swap_keeps_a_complete_state(tmp_path, monkeypatch):
    """Killed after state -> state.old: the next save must not delete state.old before it is replaced."""
    for name, content in (("state.old", "old"), ("state.tmp", "new")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "train_state.json").write_text(json.dumps(content))
    assert find_state_dir(tmp_path) == tmp_path / "state.old"

    def killed(self, target):
        raise KeyboardInterrupt("killed here")
    monkeypatch.setattr(Path, "rename", killed)
    with pytest.raises(KeyboardInterrupt):
        replace_dir(tmp_path / "state.tmp", tmp_path / "state")
    assert find_state_dir(tmp_path) == tmp_path / "state.old"
    monkeypatch.undo()
    replace_dir(tmp_path / "state.tmp", tmp_path / "state")
    assert json.loads((find_state_dir(tmp_path) / "train_state.json").read_text()) == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]


def test_nan_loss_stops_with_step_and_phase_and_keeps_the_best(tiny_cifar, tmp_path):
    # one sane head epoch, then an lr of 1e30 in fp32: weights overflow and the loss turns NaN
    result = train(tiny_cifar, tmp_path, *SMALL[:-3], "--epochs", "1", "2", "--lr", "1e-2", "1e30",
                   "--mixed-precision", "no", "--max-nonfinite", "3", check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: loss was non-finite") and "for 3 steps in a row" in last, last
    assert "in phase 'full'" in last and "--mixed-precision bf16" in last and "--lr" in last
    step = int(last.split("up to step ")[1].split()[0])
    assert 20 < step <= 40  # phase 'full' starts after the head epoch's 20 steps
    best = tmp_path / RUN / "best.safetensors"
    assert f"best checkpoint kept: {best}" in last
    meta = read_meta(best)
    assert meta.epoch == 1 and meta.val_acc > 0
    assert all(torch.isfinite(t).all() for t in load_file(best).values())


def test_unwritable_output_dir_is_a_clear_error_at_start(tiny_cifar, tmp_path, capsys):
    if os.geteuid() == 0:  # root writes through permission bits; /proc takes no new files
        out = Path("/proc/cifar10_levels_out")
    else:
        (tmp_path / "ro").mkdir(mode=0o500)
        out = tmp_path / "ro" / "out"
    code = train_main(["--dataset", str(tiny_cifar), "--output-dir", str(out), *TINY_TRAIN,
                       "--arch", "test_resnet", "--epochs", "0", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().splitlines()[-1].startswith(f"error: --output-dir {out}"), err
    assert "not writable" in err and not out.exists()
