"""An exponential moving average of the weights (timm's ModelEmaV3 in its warmup form): updated once per
optimizer step, evaluated beside the raw weights, and part of the state --resume restores."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..data.normalize import Normalizer
from ..evaluation.evaluate import EvalResult, evaluate
from ..runtime.precision import Amp


class WeightEma:
    """One per process, built from the unwrapped model where it lives (its device); every process
    holds the same average at the end of each epoch. The run's resume state carries it
    (checkpoint.resume_state.EMA_FILE): the averaged weights and the number of updates."""

    def __init__(self, model: nn.Module, decay: float):
        from timm.utils.model_ema import ModelEmaV3

        self.model, self.decay = model, decay
        self.averaged = ModelEmaV3(model, decay=decay, use_warmup=True)
        self.updates = 0  # optimizer steps so far: the warmup form's decay grows with them

    @property
    def module(self) -> nn.Module:
        return self.averaged.module

    def update(self) -> None:
        self.updates += 1
        self.averaged.update(self.model, step=self.updates)

    def sync_across_processes(self, accelerator) -> None:
        """Each process's BatchNorm statistics followed its own batches: all take process 0's, as DDP
        does for the model's (timm's distribute_bn, as timm's train.py does for its EMA)."""
        if accelerator.num_processes > 1:
            from timm.utils import distribute_bn
            distribute_bn(self.module, accelerator.num_processes, reduce=False)

    def evaluate(self, accelerator, loader, normalize: Normalizer, amp: Amp, tta: int = 1) -> EvalResult:
        """Synced first, then evaluated in the precision the prepared model runs in (the average is not
        prepared: amp's whole autocast). The RNG states are put back after: each pass over a loader
        draws a seed from them, and the training augmentation must not see that extra draw (the raw
        weights train exactly as without --ema)."""
        self.sync_across_processes(accelerator)
        device = accelerator.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            return evaluate(accelerator, self.module, loader, normalize, tta,
                            autocast=amp.unprepared_autocast)


def resume_problem(state_dir: Path | None, ema: bool) -> str | None:
    """--resume with --ema of a run saved without an EMA (nothing to restore it from), or without
    --ema of a run saved with one."""
    from ..checkpoint.resume_state import EMA_FILE, damaged, saved_ema_decay

    if state_dir is None or (state_dir / EMA_FILE).is_file() == ema:
        return None
    if ema and saved_ema_decay(state_dir):
        return str(damaged(state_dir / EMA_FILE, "missing"))
    if ema:
        return (f"--ema: the run saved in {state_dir.parent} was trained without --ema; resume it "
                "without --ema, or start a new run")
    return (f"--resume: the run saved in {state_dir.parent} was trained with --ema; resume it with "
            "the same --ema, or start a new run")


def make_ema(accelerator, model: nn.Module, decay: float) -> WeightEma | None:
    """The run's EMA (None when `decay` is 0)."""
    if not decay:
        return None
    return WeightEma(model.to(accelerator.device), decay)  # prepare() would move the model there anyway


def final_weights(accelerator, model: nn.Module, ema: WeightEma, loader, normalize: Normalizer,
                  amp: Amp, tta: int, last: dict) -> dict:
    """The last epoch's raw and EMA weights on the test set, plain and with the recipe's TTA views:
    EMA on against off at equal epochs (the raw weights train the same either way)."""
    views = max(tta, 1)
    raw = evaluate(accelerator, model, loader, normalize, views, autocast=amp.autocast)
    averaged = ema.evaluate(accelerator, loader, normalize, amp, views)

    def row(result: EvalResult, val_acc: float) -> dict:
        return {"val_acc": val_acc, "test_acc": result.plain_acc,
                "test_acc_tta": result.acc if tta > 1 else None}

    return {"epoch": last["epoch"], "ema_decay": ema.decay, "raw": row(raw, last["val_acc"]),
            "ema": row(averaged, last["val_acc_ema"])}
