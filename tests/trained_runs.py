"""Tiny trained runs shared by the export, predict, evaluate, resume and EMA tests (each trained once per session)."""
from __future__ import annotations

from pathlib import Path

from conftest import train
from test_crash_safety import RUN, SMALL

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
