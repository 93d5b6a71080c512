"""Tiny trained runs shared by the export, predict, evaluate, resume, EMA and bench tests (each
trained once per session), and what the tests read back from a run directory."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from .commands import train

RUN = "L1-test_resnet-s42"
# 160 images in batches of 8: 20 steps an epoch, so a stop request (checked every 10) lands mid-epoch.
SMALL = ["--arch", "test_resnet", "--train-limit", "160", "--batch-size", "8", "--lr", "1e-2", "1e-2"]

RUNS = {
    # test_resnet at 48 px: the Normalizer's resize to the model's size is exercised too
    "resnet": (("--arch", "test_resnet", "--img-size", "48", "--epochs", "1", "2", "--lr", "1e-2",
                "3e-3", "--tta", "2"), "L1-test_resnet-s42"),
    "speednet": (("--level", "fast", "--epochs", "2", "--tta", "2"), "Lfast-cifar_speednet-s42"),
    # 3 epochs of 20 steps with an EMA: what the resume and EMA tests compare their runs against
    "small_ema": ((*SMALL, "--epochs", "0", "3", "--ema", "0.9"), RUN),
}
_done: dict[str, Path] = {}


def trained_run(kind: str, dataset: Path, tmp_path_factory) -> Path:
    """The run directory (best.safetensors, results.json, confusion.png, ...); what train.py printed
    is in stdout.txt beside it."""
    if kind not in _done:
        args, name = RUNS[kind]
        out = tmp_path_factory.mktemp(f"run_{kind}")
        (out / "stdout.txt").write_text(train(dataset, out, *args).stdout)
        _done[kind] = out / name
    return _done[kind]


def history(run_dir: Path) -> list[dict]:
    """history.jsonl, one record per finished epoch ([] before the first)."""
    path = run_dir / "history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def ema_state(run_dir: Path) -> dict:
    """The EMA as save_state wrote it: {"weights": its tensors, "updates": the update count}."""
    from safetensors import safe_open

    from cifar10_levels.checkpoint.resume_state import EMA_FILE

    with safe_open(str(run_dir / "state" / EMA_FILE), framework="pt") as f:
        return {"weights": {k: f.get_tensor(k) for k in f.keys()},
                "updates": int(f.metadata()["updates"])}


def check_every_file_loads(run_dir: Path) -> None:
    """What a user (or --resume, or ensemble.py) would open: all complete, all parseable."""
    from safetensors.torch import load_file

    from cifar10_levels.checkpoint.meta import read_meta
    from cifar10_levels.checkpoint.run_dir import find_state_dir

    for path in run_dir.rglob("*"):
        scratch = any(p.name.startswith(".") or p.name.endswith(".tmp")
                      for p in path.relative_to(run_dir).parents if p.name) or path.name.startswith(".")
        if scratch or not path.is_file() or path.parent.name.endswith(".tmp"):
            continue
        if path.suffix == ".safetensors":
            load_file(path)
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".jsonl":
            [json.loads(line) for line in path.read_text().splitlines()]
    state = find_state_dir(run_dir)
    assert state is not None, sorted(p.name for p in run_dir.iterdir())
    json.loads((state / "train_state.json").read_text())
    load_file(state / "model.safetensors")
    if (run_dir / "best.safetensors").exists():
        read_meta(run_dir / "best.safetensors")


EPOCHS = ["--epochs", "0", "3"]
EMA = ["--ema", "0.9"]     # the "small_ema" run is SMALL + EPOCHS + EMA


def outcome(run_dir: Path) -> dict:
    """What must match between two runs of the same recipe and seed."""
    results = json.loads((run_dir / "results.json").read_text())
    return {"test_acc": results["test_acc"], "best_val_acc": results["best_val_acc"],
            "best_epoch": results["best_epoch"],
            "val_acc": [h["val_acc"] for h in history(run_dir)],
            "train_loss": [h["train_loss"] for h in history(run_dir)]}


def same_tensors(a: Path, b: Path) -> bool:
    ta, tb = load_file(a), load_file(b)
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def snapshot(directory: Path) -> dict[str, str]:
    """Every file under `directory` (hidden ones too) with its sha256: equal before and after means
    untouched."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}
