"""What a run logs: read back from the offline W&B run file, TensorBoard events, history.jsonl, PNGs."""
from __future__ import annotations

import http.server
import importlib.util
import json
import sys
import threading
from pathlib import Path

import pytest

from helpers.commands import ROOT, train
from helpers.images import assert_picture
from helpers.wandb_runs import offline_run

from cifar10_levels.tracking.trackers import flat_config
from cifar10_levels.tracking.wandb_account import WandbMode, choose_wandb_mode

# A run with mistakes left (so the misclassified grid is filled) and 50 steps (one step log): 200
# images in batches of 8, two epochs.
RUN_FLAGS = ["--arch", "test_resnet", "--epochs", "1", "1", "--lr", "1e-2", "1e-3", "--train-limit", "200",
             "--batch-size", "8", "--tta", "2", "--log-checkpoint", "--checkpoint-every", "1h"]


def no_account(mp: pytest.MonkeyPatch, home: Path) -> None:
    """No WANDB_MODE, no key, no ~/.netrc: what a new user has (run_cli passes os.environ on)."""
    for name in ("WANDB_MODE", "WANDB_API_KEY", "NETRC"):
        mp.delenv(name, raising=False)
    mp.setenv("HOME", str(home))


@pytest.fixture(scope="module")
def logged_run(tiny_cifar, tmp_path_factory):
    out = tmp_path_factory.mktemp("tracked")
    with pytest.MonkeyPatch.context() as mp:
        no_account(mp, tmp_path_factory.mktemp("home"))
        # tensorboard is an optional extra: without it --report-to all is refused up front
        trackers = "all" if importlib.util.find_spec("tensorboard") else "wandb"
        result = train(tiny_cifar, out, *RUN_FLAGS, "--report-to", trackers, probe_precision=True)
    run_dir = out / "L1-test_resnet-s42"
    return result, run_dir, json.loads((run_dir / "results.json").read_text())


@pytest.mark.slow
def test_no_account_logs_offline_and_prints_one_sync_line(logged_run):
    result, run_dir, _ = logged_run
    sync_lines = [line for line in result.stdout.splitlines() + result.stderr.splitlines()
                  if "wandb sync" in line]
    assert len(sync_lines) == 1, result.stdout
    sync_dir = Path(sync_lines[0].split("wandb sync ")[1])
    assert sync_dir.parent == run_dir / "wandb" and sync_dir.name.startswith("offline-run-")
    assert "wandb:" not in result.stdout + result.stderr  # wandb's own banner stays quiet offline


@pytest.mark.slow
def test_wandb_run_names_config_and_summary_match_results(logged_run):
    _, run_dir, results = logged_run
    run = offline_run(run_dir)
    assert (run.name, run.project, run.group) == ("L1-test_resnet-s42", "cifar10-levels", "level-1")
    assert "level-1" in run.tags and "test_resnet" in run.tags
    assert run.config["recipe"]["arch"] == "test_resnet" and run.config["recipe"]["tta"] == 2
    assert run.config["data"] == {"source": results["dataset"], "train": 200, "val": 40, "test": 100,
                                  "train_limit": 200, "eval_limit": None}
    assert run.config["hardware"]["num_processes"] == 1
    assert run.config["checkpoint_every"] == results["checkpoint_every"] == 3600
    assert {"torch", "timm", "accelerate", "wandb"} <= set(run.config["versions"])
    assert "git_commit" in run.config
    # the CPU's fp32/bf16 speeds that chose the precision, as in results.json
    assert run.config["precision_probe"]["choice"] == results["precision_probe"]["choice"] == \
        results["precision"]
    assert run.config["precision_probe"]["fp32_images_per_s"] == results["precision_probe"]["fp32_images_per_s"]
    summary = run.summary
    assert summary["test/acc"] == results["test_acc"]
    assert summary["test/acc_tta"] == results["test_acc_tta"]
    assert summary["num_params"] == results["num_params"]
    assert summary["train_seconds"] == results["train_seconds"]
    assert "L1-test_resnet-s42-best" in run.artifacts


@pytest.mark.slow
def test_wandb_history_has_step_epoch_and_final_metrics(logged_run):
    _, run_dir, results = logged_run
    run = offline_run(run_dir)
    rows = run.history
    step_rows = [r for r in rows if "train/step_loss" in r]
    assert [r["_step"] for r in step_rows] == [50]
    assert {"train/lr", "train/images_per_s"} <= set(step_rows[0])
    epoch_rows = [r for r in rows if "val/acc" in r]
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in epoch_rows] == [h["epoch"] for h in history] == [1, 2]
    assert [r["phase"] for r in epoch_rows] == ["head", "full"]
    for row, record in zip(epoch_rows, history):
        assert row["val/acc"] == record["val_acc"] and row["train/loss"] == record["train_loss"]
        assert {"val/loss", "train/acc", "time/epoch_seconds"} <= set(row)
    final = [r for r in rows if "test/acc" in r]
    assert len(final) == 1 and final[0]["test/acc"] == results["test_acc"]
    media = set().union(*rows)
    assert {"test/per_class_accuracy_table/_type", "plots/curves/_type", "plots/confusion/_type"} <= media
    assert results["test_acc"] < 1, "the run should leave mistakes for the misclassified grid"
    assert any(key.startswith("test/misclassified") for key in media)
    charts = json.dumps(run.config)
    assert "wandb/confusion_matrix" in charts and "wandb/bar" in charts


@pytest.mark.slow
def test_tensorboard_gets_flat_config_and_the_same_numbers(logged_run):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run_dir, results = logged_run
    events = EventAccumulator(str(run_dir / "cifar10-levels")).Reload()
    assert len(events.Scalars("val/acc")) == 2
    assert events.Scalars("test/acc")[0].value == pytest.approx(results["test_acc"], abs=1e-6)
    assert len([t for t in events.Tags()["scalars"] if t.startswith("test/class_acc/")]) == 10


@pytest.mark.slow
def test_local_files_history_and_readable_plots(logged_run):
    _, run_dir, results = logged_run
    lines = (run_dir / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["phase"] for line in lines] == ["head", "full"]
    for name, min_size in (("curves.png", (900, 350)), ("confusion.png", (600, 500)),
                           ("per_class.png", (600, 400))):
        assert_picture(run_dir / name, min_size)


def test_flat_config_has_only_scalars():
    nested = {"recipe": {"phases": [{"name": "head", "epochs": 5}], "mean": (0.5, 0.4), "tta": None},
              "ok": True}
    flat = flat_config(nested)
    assert flat == {"recipe.phases.0.name": "head", "recipe.phases.0.epochs": 5,
                    "recipe.mean": "0.5, 0.4", "recipe.tta": "none", "ok": True}


# ---- choosing the W&B mode ----------------------------------------------------------------------
class FakeWandbServer(http.server.BaseHTTPRequestHandler):
    """Answers W&B's GraphQL viewer query: 401 unless the key is 'good' * 10."""

    def do_POST(self):
        import base64

        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        key = base64.b64decode(self.headers["Authorization"].split()[1]).decode().split(":", 1)[1]
        good = key == "good" * 10
        self.send_response(200 if good else 401)
        self.end_headers()
        self.wfile.write(json.dumps({"data": {"viewer": {"id": "u1"}}} if good else {}).encode())

    def log_message(self, *args):
        pass


@pytest.fixture()
def wandb_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeWandbServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_wandb_mode_user_setting_wins(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    assert choose_wandb_mode() == WandbMode(None)


def test_wandb_mode_typo_is_a_user_error(monkeypatch):
    from cifar10_levels.errors import UserError

    monkeypatch.setenv("WANDB_MODE", "ofline")
    with pytest.raises(UserError, match="WANDB_MODE=ofline: not a W&B mode"):
        choose_wandb_mode()


def test_wandb_mode_offline_without_key(monkeypatch, tmp_path):
    for name in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    assert choose_wandb_mode() == WandbMode("offline")


def test_wandb_mode_checks_the_key_quickly(monkeypatch, wandb_server):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", wandb_server)
    monkeypatch.setenv("WANDB_API_KEY", "good" * 10)
    assert choose_wandb_mode(timeout=60) == WandbMode("online")
    monkeypatch.setenv("WANDB_API_KEY", "bad" * 10)
    rejected = choose_wandb_mode(timeout=60)
    assert rejected.mode == "offline" and "rejected the API key" in rejected.warning
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    unreachable = choose_wandb_mode(timeout=60)
    assert unreachable.mode == "offline" and "could not be reached" in unreachable.warning


@pytest.mark.slow
def test_bad_key_falls_back_to_offline_without_stalling(tiny_cifar, tmp_path, wandb_server,
                                                        monkeypatch):
    no_account(monkeypatch, tmp_path)
    result = train(tiny_cifar, tmp_path / "out", "--arch", "test_resnet", "--epochs", "1", "0",
                   "--train-limit", "100", "--eval-limit", "50", "--report-to", "wandb",
                   env={"WANDB_API_KEY": "bad" * 10, "WANDB_BASE_URL": wandb_server})
    # the key check decides offline up front (timed in the test above): wandb never waits online
    assert "rejected the API key; logging offline instead" in result.stdout, result.stdout[-3000:]
    run = offline_run(tmp_path / "out" / "L1-test_resnet-s42")
    results = json.loads((tmp_path / "out" / "L1-test_resnet-s42" / "results.json").read_text())
    assert run.summary["test/acc"] == results["test_acc"]


def test_log_ensemble_writes_one_run_with_the_table(tmp_path, monkeypatch):
    import subprocess

    no_account(monkeypatch, tmp_path)
    code = ("from cifar10_levels.ensemble.tracking import log_ensemble; "
            "log_ensemble([['soft vote', 0.91, 0.9], ['oracle', None, 0.95]], "
            "['method', 'val_acc', 'test_acc'], "
            f"out_dir={str(tmp_path)!r}, config={{'members': 3}})")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("wandb sync") == 1
    run = offline_run(tmp_path)
    assert (run.name, run.group, run.project) == ("ensemble", "ensemble", "cifar10-levels")
    assert run.config["members"] == 3
    assert any(row.get("ensemble/comparison/_type") == "table-file" for row in run.history)
