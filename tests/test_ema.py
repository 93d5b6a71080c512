"""--ema: the EMA is validated beside the raw weights each epoch and the better one becomes
best.safetensors (its metadata says which). That the raw weights train exactly as without --ema and
that --resume restores the EMA bit for bit: tests/test_resume.py; two processes holding the same EMA:
tests/test_distributed.py."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from cifar10_levels.train import ema as ema_module
from cifar10_levels.train import trainer
from cifar10_levels.checkpoint.io import read_meta
from cifar10_levels.cli.train import train_main
from cifar10_levels.errors import UserError

from helpers.commands import TINY_TRAIN, read_results, train
from helpers.runs import RUN, SMALL, ema_state, history, trained_run

pytestmark = pytest.mark.slow  # whole training runs, in this process or started as commands

EPOCHS = ["--epochs", "0", "2"]
EMA = ["--ema", "0.9"]


@pytest.fixture(scope="module")
def ema_run(tiny_cifar, tmp_path_factory) -> Path:
    return trained_run("small_ema", tiny_cifar, tmp_path_factory)


@pytest.fixture(scope="module")
def run_without_ema(tiny_cifar, tmp_path_factory) -> Path:
    return trained_run("resnet", tiny_cifar, tmp_path_factory)


def test_each_epoch_validates_the_ema_beside_the_raw_weights(ema_run):
    records = history(ema_run)
    assert [h["epoch"] for h in records] == [1, 2, 3]
    assert all(0 <= h["val_acc_ema"] <= 1 and h["val_loss_ema"] > 0 for h in records)
    assert records[-1]["val_loss_ema"] != records[-1]["val_loss"]  # a different set of weights
    stdout = (ema_run.parent / "stdout.txt").read_text()
    for h in records:
        assert f"| EMA val loss {h['val_loss_ema']:.4f} acc {h['val_acc_ema']:.2%}" in stdout
    results = json.loads((ema_run / "results.json").read_text())
    final = results["final_weights"]
    assert (final["epoch"], final["ema_decay"]) == (3, 0.9)
    assert final["raw"]["val_acc"] == records[-1]["val_acc"]
    assert final["ema"]["val_acc"] == records[-1]["val_acc_ema"]
    assert all(0 <= final[k]["test_acc"] <= 1 and final[k]["test_acc_tta"] is None for k in ("raw", "ema"))
    assert f"last epoch (3) on test: raw weights {final['raw']['test_acc']:.2%} | EMA 0.9 " in stdout
    best = read_meta(ema_run / "best.safetensors")
    assert best.weights == results["best_weights"] and best.recipe["ema_decay"] == 0.9
    assert best.val_acc == results["best_val_acc"] == max(
        max(h["val_acc"], h["val_acc_ema"]) for h in records)
    ema_weights = ema_state(ema_run)["weights"]
    assert ema_state(ema_run)["updates"] == 3 * 20  # one per optimizer step
    assert ema_weights.keys() == load_file(ema_run / "last.safetensors").keys()


def test_best_checkpoint_holds_the_better_weights_and_says_which(tiny_cifar, tmp_path, monkeypatch):
    """Validation accuracies set by the test: raw 50% in both epochs, the EMA 25% in epoch 1 (the raw
    weights win) and 75% in epoch 2 (the EMA wins). best.safetensors follows, tensors and metadata."""
    raw_accs, ema_accs, snapshots, files = [0.5, 0.5], [0.25, 0.75], [], []
    evaluate, ema_evaluate = trainer.evaluate, ema_module.WeightEma.evaluate
    save_checkpoint = trainer.Trainer.save_checkpoint
    raw_calls = []

    def forced_raw(*args, **kwargs):  # the first two calls validate; the test set after is left alone
        result = evaluate(*args, **kwargs)
        raw_calls.append(1)
        return dataclasses.replace(result, acc=raw_accs[len(raw_calls) - 1]) \
            if len(raw_calls) <= len(raw_accs) else result

    def forced_ema(self, *args, **kwargs):
        result = ema_evaluate(self, *args, **kwargs)
        if len(snapshots) == len(ema_accs):
            return result
        snapshots.append({k: v.clone() for k, v in self.module.state_dict().items()})
        return dataclasses.replace(result, acc=ema_accs[len(snapshots) - 1])

    def recording_save(self, name, *args, **kwargs):
        save_checkpoint(self, name, *args, **kwargs)
        if name == "last":
            files.append({n: (read_meta(self.run_dir / f"{n}.safetensors"),
                              load_file(self.run_dir / f"{n}.safetensors")) for n in ("best", "last")})

    monkeypatch.setattr(trainer, "evaluate", forced_raw)
    monkeypatch.setattr(ema_module.WeightEma, "evaluate", forced_ema)
    monkeypatch.setattr(trainer.Trainer, "save_checkpoint", recording_save)
    # the accuracies are the test's, so two steps an epoch and small evaluation sets show the choice
    out = train(tiny_cifar, tmp_path, *SMALL, *EPOCHS, *EMA, "--tta", "2", "--train-limit", "16",
                "--eval-limit", "20").stdout
    results = read_results(tmp_path)

    def equal(a: dict, b: dict) -> bool:
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    (best1, weights1), (_, raw1) = files[0]["best"], files[0]["last"]
    assert (best1.weights, best1.epoch, best1.val_acc) == ("raw", 1, 0.5) and equal(weights1, raw1)
    (best2, weights2), (_, raw2) = files[1]["best"], files[1]["last"]
    assert (best2.weights, best2.epoch, best2.val_acc) == ("ema", 2, 0.75)
    assert equal(weights2, snapshots[1]) and not equal(weights2, raw2)
    assert "acc 50.00% * | EMA val loss" in out and "acc 25.00% |" in out
    assert "acc 50.00% | EMA val loss" in out and "acc 75.00% * | lr" in out

    run_dir = tmp_path / RUN
    final = read_meta(run_dir / "best.safetensors")
    assert (final.weights, final.epoch, final.test_acc) == ("ema", 2, results["test_acc"])
    assert equal(load_file(run_dir / "best.safetensors"), snapshots[1])
    assert (results["best_weights"], results["best_epoch"], results["best_val_acc"]) == ("ema", 2, 0.75)
    assert "(epoch 2, EMA weights)" in out
    # best is the last epoch's EMA, so the test set agrees with the EMA row of the final comparison
    ema_row = results["final_weights"]["ema"]
    assert (results["test_acc"], results["test_acc_tta"]) == (ema_row["test_acc"], ema_row["test_acc_tta"])
    assert ema_row["test_acc_tta"] is not None


def test_checkpoints_without_the_weights_field_load_as_raw(ema_run, tmp_path):
    with safe_open(str(ema_run / "last.safetensors"), "pt") as f:
        header = f.metadata()
    tensors = load_file(ema_run / "last.safetensors")
    header.pop("weights")
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata=header)
    assert read_meta(tmp_path / "old.safetensors").weights == "raw"
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata={**header, "weights": '"swa"'})
    with pytest.raises(UserError, match="weights .*not one of raw, ema"):
        read_meta(tmp_path / "bad.safetensors")


def test_ema_is_refused_under_fsdp_and_when_resuming_a_run_without_it(run_without_ema, tiny_cifar, tmp_path,
                                                                       monkeypatch, capsys):
    args = ["--dataset", str(tiny_cifar), *TINY_TRAIN, *SMALL, *EPOCHS, *EMA]
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert train_main([*args, "--output-dir", str(tmp_path / "fsdp")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --ema: not supported under FSDP") and err.count("\n") == 1, err
    assert not (tmp_path / "fsdp").exists()
    monkeypatch.delenv("ACCELERATE_USE_FSDP")

    before = {p: p.stat().st_mtime_ns for p in run_without_ema.rglob("*")}
    # the saved run's own config: the --ema mismatch is its one problem
    resume = ["--config", str(run_without_ema / "config.yaml"), "--resume", *EMA]
    assert train_main(resume) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --ema: the run in {run_without_ema} trains with ema") \
        and "config.yaml" in err and err.count("\n") == 1, err
    assert {p: p.stat().st_mtime_ns for p in run_without_ema.rglob("*")} == before
