"""Train and evaluate with Accelerate: a plain PyTorch loop, phase by phase."""
from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field

import torch

from .errors import UserError
from .recipes import Phase

LOG_EVERY = 50            # steps between tracker points (each one syncs the device once)
STOP_CHECK_EVERY = 10     # steps between checks for SIGTERM/SIGINT across processes


class Diverged(UserError):
    """Losses stayed non-finite: stop, keep the best checkpoint so far."""


class Stopped(Exception):
    """SIGTERM/SIGINT arrived: state was saved, the run can be resumed."""


@dataclass
class TrainState:
    """Where a run is; saved beside Accelerate's state so --resume continues it."""

    phase: int = 0
    epoch: int = 0                # epoch within the phase
    step: int = 0                 # batches done within that epoch
    global_step: int = 0
    epochs_done: int = 0
    best_val_acc: float = -1.0
    best_epoch: int = -1
    nonfinite: int = 0
    train_seconds: float = 0.0
    history: list[dict] = field(default_factory=list)


def dominant_label(targets: torch.Tensor) -> torch.Tensor:
    return targets.argmax(1) if targets.ndim == 2 else targets


class StopFlag:
    """SIGTERM/SIGINT set Accelerate's trigger; every process sees it at the next check."""

    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.accelerator.set_trigger()

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def requested(self) -> bool:
        return self.accelerator.check_trigger()


@dataclass
class EpochStats:
    loss: float
    acc: float
    images: int
    seconds: float


def nonfinite_on_any_process(accelerator, loss: torch.Tensor) -> bool:
    """Every process skips together: one rank skipping DDP's backward would hang the others."""
    flag = torch.isfinite(loss.detach()).logical_not().float()
    return accelerator.reduce(flag, reduction="sum").item() > 0


def train_one_epoch(run, phase: Phase, loader, skip: int) -> EpochStats:
    """One pass over the (sharded) training loader. `run` is a Trainer holding the parts."""
    acc_ = run.accelerator
    model, optimizer, scheduler = run.model, run.optimizer, run.scheduler
    mixing = run.recipe.mixes(phase)
    loss_fn = run.soft_loss if mixing else run.hard_loss
    device = acc_.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    seen = 0
    start = time.perf_counter()
    state = run.state
    amp = run.amp
    scaled = amp.scaler is not None
    streak = torch.tensor(float(state.nonfinite), device=device)  # non-finite losses in a row
    bar = run.progress_bar(len(loader) + skip, initial=skip, desc=f"{phase.name} ep {state.epoch + 1}")
    for i, (images, labels) in enumerate(loader, start=skip):
        with acc_.accumulate(model):
            x, targets = run.augment(images, labels, mixing)
            with amp.autocast():
                logits = model(x)
            loss = loss_fn(logits.float(), targets)
            streak = (streak + 1) * torch.isfinite(loss.detach()).logical_not()
            # fp16's GradScaler skips non-finite steps by itself, so only the other precisions
            # pay a device sync to skip them (NaN gradients would ruin the weights)
            if scaled or not nonfinite_on_any_process(acc_, loss):
                acc_.backward(loss)
                optimizer.step()
            # a skipped step still advances the schedule, which follows the batch count and ends with
            # the phase; after a scaler skip Accelerate holds it back only for optimizers without
            # fused scaling (the fast recipe's Muon/SGD): fused AdamW skips inside its kernel
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        n = labels.shape[0]
        seen += n
        loss_sum += loss.detach() * n
        correct += (logits.argmax(1) == dominant_label(targets)).sum()
        state.step = i + 1
        state.global_step += 1
        if not scaled or state.global_step % STOP_CHECK_EVERY == 0:
            run.check_divergence(phase, streak, loss)
        if bar is not None:
            bar.update(1)
        if state.global_step % LOG_EVERY == 0:
            elapsed = time.perf_counter() - start
            run.log_step(loss.item(), scheduler.get_last_lr()[0], seen * acc_.num_processes / elapsed)
        if i == skip + 10:
            run.warn_if_slow((time.perf_counter() - start) / 11)
        if state.global_step % STOP_CHECK_EVERY == 0 and run.stop.requested():
            run.save_state()
            raise Stopped
    if bar is not None:
        bar.close()
    run.check_divergence(phase, streak, loss)
    seconds = time.perf_counter() - start
    totals = acc_.reduce(torch.stack([loss_sum, correct, torch.tensor(float(seen), device=device)]),
                         reduction="sum")
    total_seen = max(totals[2].item(), 1.0)
    return EpochStats(loss=totals[0].item() / total_seen, acc=totals[1].item() / total_seen,
                      images=int(total_seen), seconds=seconds)
