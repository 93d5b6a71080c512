"""fp16 with gradient scaling and bf16 through train.py on the CPU, and the CUDA precision default.

Accelerate ignores fp16 on a CPU, so train.py adds torch's CPU autocast and GradScaler itself and
hands the scaler to Accelerate: the loop, the optimizer wrapper, backward and save_state are the
ones a CUDA fp16 run uses.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

from cifar10_levels.runtime import precision
from cifar10_levels.train import setup, trainer
from cifar10_levels.cli.train import train_main
from cifar10_levels.recipes import get_recipe

from helpers.commands import TINY_TRAIN

# 160 images in batches of 8: 20 optimizer steps in one epoch
SMALL = ["--arch", "test_resnet", "--train-limit", "160", "--eval-limit", "20", "--batch-size", "8",
         "--epochs", "0", "1"]


@pytest.fixture
def recorded(monkeypatch):
    """The Trainer of an in-process run, and the dtypes its classifier computed in while training."""
    seen = {"dtypes": set()}
    create_model, finish = setup.create_model, trainer.Trainer.finish

    def create_recording(*args, **kwargs):
        model = create_model(*args, **kwargs)

        def record(module, inputs, output) -> None:
            if module.training:
                seen["dtypes"].add(output.dtype)
        model.get_classifier().register_forward_hook(record)
        return model

    def finish_recording(self, seconds):
        seen["trainer"] = self
        return finish(self, seconds)

    monkeypatch.setattr(setup, "create_model", create_recording)
    monkeypatch.setattr(trainer.Trainer, "finish", finish_recording)
    from accelerate.state import AcceleratorState, GradientState

    def reset() -> None:  # in-process runs before and after this one ask for other precisions
        AcceleratorState._reset_state(True)
        GradientState._reset_state()

    reset()
    yield seen
    reset()


def run(tiny_cifar, tmp_path, *args: str) -> dict:
    argv = ["--dataset", str(tiny_cifar), "--output-dir", str(tmp_path), *TINY_TRAIN, *SMALL, *args]
    assert train_main(argv) == 0
    (results,) = tmp_path.glob("*/results.json")
    return json.loads(results.read_text())


@pytest.mark.slow
def test_fp16_autocasts_and_the_scaler_skips_overflowing_steps(tiny_cifar, tmp_path, recorded,
                                                                monkeypatch, capsys):
    initial = 2.0 ** 30  # far above what fp16 gradients hold: the first steps overflow
    monkeypatch.setattr(precision, "INITIAL_SCALE", initial)
    results = run(tiny_cifar, tmp_path, "--mixed-precision", "fp16")
    assert recorded["dtypes"] == {torch.float16}
    assert results["precision"] == "fp16" and "precision fp16;" in capsys.readouterr().out
    run_ = recorded["trainer"]
    scaler = run_.amp.scaler
    assert isinstance(scaler, torch.amp.GradScaler) and run_.accelerator.scaler is scaler
    steps = len(run_.prepared_train)
    skipped = round(math.log2(initial / scaler.get_scale()))  # each overflow halves the scale
    adam_steps = {int(s["step"]) for s in run_.optimizer.optimizer.state.values()}
    assert 0 < skipped < steps and adam_steps == {steps - skipped}, (skipped, adam_steps)
    assert run_.scheduler.scheduler.last_epoch == steps  # the schedule still ran to its end
    assert results["test_acc"] > 0 and math.isfinite(results["test_loss"])
    (state,) = tmp_path.glob("*/state")
    assert (state / "scaler.pt").exists()  # --resume restores the scale


@pytest.mark.slow
def test_bf16_run_computes_in_bf16(tiny_cifar, tmp_path, recorded):
    # two steps show the dtype: bf16 on a CPU without bf16 units costs seconds a step
    results = run(tiny_cifar, tmp_path, "--mixed-precision", "bf16", "--train-limit", "16")
    assert recorded["dtypes"] == {torch.bfloat16}
    assert results["precision"] == "bf16" and recorded["trainer"].amp.scaler is None


@pytest.mark.parametrize("capability, expected", [((7, 5), "fp16"), ((7, 0), "fp16"),
                                                  ((8, 0), "bf16"), ((8, 9), "bf16"),
                                                  ((9, 0), "bf16")])
def test_cuda_default_is_bf16_from_compute_capability_8(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert precision.default_precision(get_recipe("1")) == expected
