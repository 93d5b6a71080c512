"""--resume reads state/ from a disk others may write to: nothing in it is unpickled (a pickle
planted in any of its files never runs), and every damaged, missing or foreign file, or a run
resumed under another model, is refused with one line naming the file, exit 2, every file of the
run byte-identical. The corpus is built here from one tiny trained run, each case on a copy."""
from __future__ import annotations

import itertools
import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Callable

import pytest
import torch
from safetensors.torch import load_file, save_file

from cifar10_levels.train import step_hooks

from helpers.commands import ROOT, assert_refused, train
from helpers.runs import snapshot

RUN = "L1-test_resnet-s42"
TINY = ["--arch", "test_resnet", "--train-limit", "40", "--eval-limit", "20", "--batch-size", "8",
        "--lr", "1e-2", "1e-2", "--ema", "0.9"]
TWO_EPOCHS = ["--epochs", "0", "2"]


class Planted:
    """A pickle whose loading would create `marker` (os.mkdir): the stand-in for any code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


@pytest.fixture(scope="module")
def saved(tiny_cifar, tmp_path_factory) -> Path:
    """A run of two epochs with --ema stopped at the first step of its second (5 steps an epoch),
    its state/ as it saved it."""
    out = tmp_path_factory.mktemp("saved")
    checks = itertools.count(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(step_hooks, "STOP_CHECK_EVERY", 1)
        patch.setattr(step_hooks.StopFlag, "requested", lambda self: next(checks) == 6)
        assert train(tiny_cifar, out, *TINY, *TWO_EPOCHS, check=False).returncode == 143
    return out / RUN


@pytest.fixture
def run(saved, tmp_path) -> Path:
    shutil.copytree(saved, tmp_path / RUN)
    return tmp_path / RUN


def resume(tiny_cifar, run: Path, *args: str):
    return train(tiny_cifar, run.parent, *TINY, *TWO_EPOCHS, "--resume", *args, check=False)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def write(name: str, content: bytes) -> Callable[[Path], None]:
    return lambda state: (state / name).write_bytes(content)


def edit_train_state(**changes) -> Callable[[Path], None]:
    def edit(state: Path) -> None:
        data = json.loads((state / "train_state.json").read_text())
        (state / "train_state.json").write_text(json.dumps({**data, **changes}))
    return edit


def reshape_first(name: str) -> Callable[[Path], None]:
    """`name` (a safetensors file) with its first tensor one row longer: saved by another model."""
    def edit(state: Path) -> None:
        tensors = load_file(state / name)
        first = next(k for k in sorted(tensors) if tensors[k].dim())
        tensors[first] = torch.cat([tensors[first], tensors[first][:1]])
        save_file(tensors, str(state / name))
    return edit


def optimizer_of_another_model(state: Path) -> None:
    saved = torch.load(state / "optimizer.bin", weights_only=True)
    for values in saved["state"].values():
        values["exp_avg"] = torch.zeros(3, 3)
    torch.save(saved, state / "optimizer.bin")


DAMAGE = {
    "train_state.json garbage": ("train_state.json", write("train_state.json", b"\x00\xff{")),
    "train_state.json a list": ("train_state.json", write("train_state.json", b"[]")),
    "train_state.json phase a string": ("phase", edit_train_state(phase="1")),
    "train_state.json step negative": ("step", edit_train_state(step=-3)),
    "train_state.json history a number": ("history", edit_train_state(history=5)),
    "train_state.json best_val_acc a list": ("best_val_acc", edit_train_state(best_val_acc=[1])),
    "train_state.json unknown field": ("surprise", edit_train_state(surprise=1)),
    "model truncated": ("model.safetensors", lambda s: truncate(s / "model.safetensors")),
    "model of another shape": ("model.safetensors", reshape_first("model.safetensors")),
    "optimizer truncated": ("optimizer.bin", lambda s: truncate(s / "optimizer.bin")),
    "optimizer missing": ("optimizer.bin", lambda s: (s / "optimizer.bin").unlink()),
    "optimizer of another model": ("optimizer.bin", optimizer_of_another_model),
    "scheduler empty": ("scheduler.bin", write("scheduler.bin", b"")),
    "random state garbage": ("random_states_0.pkl", write("random_states_0.pkl", b"garbage")),
    "random state of the wrong kind": ("random_states_0.pkl", lambda s: torch.save(
        {"random_state": 5, "numpy_random_seed": 1, "torch_manual_seed": torch.zeros(3)},
        s / "random_states_0.pkl")),
    "ema truncated": ("ema.safetensors", lambda s: truncate(s / "ema.safetensors")),
    "ema of another shape": ("ema.safetensors", reshape_first("ema.safetensors")),
    "ema missing": ("ema.safetensors", lambda s: (s / "ema.safetensors").unlink()),
    "a file the state never holds": ("notes.txt", write("notes.txt", b"x")),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_damaged_resume_state_is_refused_and_nothing_changes(run, tiny_cifar, case):
    named, damage = DAMAGE[case]
    damage(run / "state")
    before = snapshot(run)
    assert_refused(resume(tiny_cifar, run), named)
    assert snapshot(run) == before


@pytest.mark.parametrize("name", ["optimizer.bin", "scheduler.bin", "random_states_0.pkl",
                                  "custom_checkpoint_0.pkl", "scaler.pt", "model.safetensors",
                                  "ema.safetensors", "train_state.json", "recipe.json"])
@pytest.mark.parametrize("form", ["torch.save", "pickle"])
def test_a_pickle_planted_in_the_state_never_runs(run, tiny_cifar, tmp_path, name, form):
    """Each file of state/ (and the names of Accelerate's other pickles) replaced by a pickle whose
    loading would create a directory: refused unread, or read without running it."""
    marker, path = tmp_path / "planted-code-ran", run / "state" / name
    if form == "torch.save":
        torch.save(Planted(marker), path)
    else:
        path.write_bytes(pickle.dumps(Planted(marker)))
    before = snapshot(run)
    result = resume(tiny_cifar, run)
    assert not marker.exists()
    assert_refused(result, name)
    assert snapshot(run) == before


@pytest.mark.parametrize("change, named", [
    (["--arch", "test_vit", "--run-name", RUN], "arch test_resnet"),
    (["--img-size", "48"], "img_size 32"),
])
def test_resume_under_another_model_is_refused(run, tiny_cifar, change, named):
    before = snapshot(run)
    assert_refused(resume(tiny_cifar, run, *change), change[0], named, "config.yaml", "--run-name")
    assert snapshot(run) == before


@pytest.mark.parametrize("change, named", [
    (["--arch", "test_vit", "--run-name", RUN], "--arch test_resnet"),
    (["--img-size", "48"], "--img-size 32"),
])
def test_resume_under_another_model_without_the_config_is_refused_by_the_saved_recipe(
        run, tiny_cifar, change, named):
    (run / "config.yaml").unlink()
    before = snapshot(run)
    assert_refused(resume(tiny_cifar, run, *change), named, "recipe.json", "--run-name")
    assert snapshot(run) == before


def test_resume_under_another_model_without_config_or_recipe_is_refused_by_the_shapes(run, tiny_cifar):
    (run / "config.yaml").unlink()
    (run / "state" / "recipe.json").unlink()
    before = snapshot(run)
    result = resume(tiny_cifar, run, "--arch", "test_vit", "--run-name", RUN)
    assert_refused(result, "model.safetensors", "another model")
    assert snapshot(run) == before


def test_the_undamaged_state_resumes(run, tiny_cifar):
    """The checks pass what the run itself saved: it trains its second epoch."""
    result = resume(tiny_cifar, run)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "resuming from" in result.stdout
    assert len((run / "history.jsonl").read_text().splitlines()) == 2


def test_every_case_is_documented():
    table = (ROOT / "docs" / "bad_inputs.md").read_text()
    assert all(f"| {case} |" in table for case in DAMAGE)
