"""--ema: the raw weights train exactly as without it, the EMA is validated beside them each epoch, the
better one becomes best.safetensors (its metadata says which), --resume restores the EMA bit for bit,
and two processes hold the same EMA."""
from __future__ import annotations

import dataclasses
import json
import signal
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from cifar10_levels import ema as ema_module, trainer
from cifar10_levels.checkpoint import read_meta
from cifar10_levels.cli import train_main
from cifar10_levels.ema import EMA_STATE_FILE
from cifar10_levels.errors import UserError

from conftest import TINY_TRAIN, train
from test_crash_safety import RUN, SMALL, start_train, wait_for
from test_distributed import HELPERS, accelerate_launch_two, launch
from test_resume import history, same_tensors
from test_update_steps import run_in_process

EPOCHS = ["--epochs", "0", "2"]
EMA = ["--ema", "0.9"]


def ema_state(run_dir: Path) -> dict:
    """The EMA as save_state wrote it (a file of our own run: tensors and an int only)."""
    return torch.load(run_dir / "state" / EMA_STATE_FILE, weights_only=True)


@pytest.fixture(scope="module")
def ema_run(tiny_cifar, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ema")
    result = train(tiny_cifar, out, *SMALL, *EPOCHS, *EMA)
    (out / "stdout.txt").write_text(result.stdout)
    return out / RUN


@pytest.fixture(scope="module")
def plain_run(tiny_cifar, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("plain")
    run_in_process(tiny_cifar, out, *SMALL, *EPOCHS)
    return out / RUN


def test_the_raw_weights_train_exactly_as_without_ema(ema_run, plain_run):
    with_ema, without = history(ema_run), history(plain_run)
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
        assert [h[key] for h in with_ema] == [h[key] for h in without], key
    assert same_tensors(ema_run / "last.safetensors", plain_run / "last.safetensors")
    assert all("val_acc_ema" not in h for h in without)


def test_each_epoch_validates_the_ema_beside_the_raw_weights(ema_run):
    records = history(ema_run)
    assert [h["epoch"] for h in records] == [1, 2]
    assert all(0 <= h["val_acc_ema"] <= 1 and h["val_loss_ema"] > 0 for h in records)
    assert records[-1]["val_loss_ema"] != records[-1]["val_loss"]  # a different set of weights
    stdout = (ema_run.parent / "stdout.txt").read_text()
    for h in records:
        assert f"| EMA val loss {h['val_loss_ema']:.4f} acc {h['val_acc_ema']:.2%}" in stdout
    results = json.loads((ema_run / "results.json").read_text())
    final = results["final_weights"]
    assert (final["epoch"], final["ema_decay"]) == (2, 0.9)
    assert final["raw"]["val_acc"] == records[-1]["val_acc"]
    assert final["ema"]["val_acc"] == records[-1]["val_acc_ema"]
    assert all(0 <= final[k]["test_acc"] <= 1 and final[k]["test_acc_tta"] is None for k in ("raw", "ema"))
    assert f"last epoch (2) on test: raw weights {final['raw']['test_acc']:.2%} | EMA 0.9 " in stdout
    best = read_meta(ema_run / "best.safetensors")
    assert best.weights == results["best_weights"] and best.recipe["ema_decay"] == 0.9
    assert best.val_acc == results["best_val_acc"] == max(
        max(h["val_acc"], h["val_acc_ema"]) for h in records)
    ema_weights = ema_state(ema_run)["weights"]
    assert ema_state(ema_run)["updates"] == 2 * 20  # one per optimizer step
    assert ema_weights.keys() == load_file(ema_run / "last.safetensors").keys()


def test_sigterm_mid_epoch_then_resume_ends_with_the_same_ema(ema_run, tiny_cifar, tmp_path):
    run_dir = tmp_path / RUN
    proc = start_train(tiny_cifar, tmp_path, *SMALL, *EPOCHS, *EMA)
    wait_for(proc, lambda: len(history(run_dir)) >= 1)
    proc.send_signal(signal.SIGTERM)   # checked every 10 steps: lands at step 10 of epoch 2
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 143, output
    saved = json.loads((run_dir / "state" / "train_state.json").read_text())
    assert (saved["epochs_done"], saved["step"]) == (1, 10), saved
    assert ema_state(run_dir)["updates"] == 30

    train(tiny_cifar, tmp_path, *SMALL, *EPOCHS, *EMA, "--resume")
    resumed, expected = ema_state(run_dir), ema_state(ema_run)
    assert resumed["updates"] == expected["updates"]
    assert all(torch.equal(resumed["weights"][k], v) for k, v in expected["weights"].items())
    for name in ("best.safetensors", "last.safetensors"):
        assert same_tensors(run_dir / name, ema_run / name), name
    assert read_meta(run_dir / "best.safetensors").weights == read_meta(ema_run / "best.safetensors").weights
    results, expected_results = (json.loads((d / "results.json").read_text()) for d in (run_dir, ema_run))
    for key in ("final_weights", "test_acc", "best_val_acc", "best_epoch", "best_weights"):
        assert results[key] == expected_results[key], key
    # epoch 2 restarted at step 10: its train loss and accuracy average only the batches after it
    restarted = {"train_loss", "train_acc", "images_per_s", "epoch_seconds", "elapsed_seconds"}
    for a, b in zip(history(run_dir), history(ema_run), strict=True):
        assert {k: v for k, v in a.items() if k not in restarted} == \
            {k: v for k, v in b.items() if k not in restarted}
    assert history(run_dir)[0]["train_loss"] == history(ema_run)[0]["train_loss"]


def test_best_checkpoint_holds_the_better_weights_and_says_which(tiny_cifar, tmp_path, monkeypatch,
                                                                  capsys):
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
    results = run_in_process(tiny_cifar, tmp_path, *SMALL, *EPOCHS, *EMA, "--tta", "2")
    out = capsys.readouterr().out

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
    with pytest.raises(UserError, match="weights raw or ema"):
        read_meta(tmp_path / "bad.safetensors")


def test_ema_is_refused_under_fsdp_and_when_resuming_a_run_without_it(plain_run, tiny_cifar, tmp_path,
                                                                       monkeypatch, capsys):
    args = ["--dataset", str(tiny_cifar), *TINY_TRAIN, *SMALL, *EPOCHS, *EMA]
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert train_main([*args, "--output-dir", str(tmp_path / "fsdp")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --ema: not supported under FSDP") and err.count("\n") == 1, err
    assert not (tmp_path / "fsdp").exists()
    monkeypatch.delenv("ACCELERATE_USE_FSDP")

    before = {p: p.stat().st_mtime_ns for p in plain_run.rglob("*")}
    assert train_main([*args, "--output-dir", str(plain_run.parent), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --ema: the run saved in {plain_run} was trained without --ema"), err
    assert {p: p.stat().st_mtime_ns for p in plain_run.rglob("*")} == before


def test_two_processes_hold_the_same_ema(tiny_cifar, tmp_path):
    digests = tmp_path / "digests"
    launch(accelerate_launch_two(
        HELPERS / "train_recording_weights.py", "--dataset", tiny_cifar, "--output-dir", tmp_path,
        *TINY_TRAIN, "--arch", "test_resnet", "--lr", "1e-2", "1e-2", *EPOCHS, *EMA),
        env={"RECORD_WEIGHTS_DIR": str(digests)})
    records = {(rank, epoch): json.loads((digests / f"rank{rank}-epoch{epoch}.json").read_text())
               for rank in (0, 1) for epoch in (1, 2)}
    for epoch in (1, 2):
        assert records[0, epoch]["ema"] == records[1, epoch]["ema"], f"epoch {epoch}: EMAs differ"
        assert records[0, epoch]["parameters"] == records[1, epoch]["parameters"]
    assert records[0, 1]["ema"] != records[0, 2]["ema"]
    results = json.loads((tmp_path / RUN / "results.json").read_text())
    assert results["num_processes"] == 2 and set(results["final_weights"]) >= {"raw", "ema"}
