"""Our extras around each training step: divergence check, progress bar, step logging, the slow-run
warning, and raising Stopped on SIGTERM/SIGINT (the trainer then saves the state)."""
from __future__ import annotations

import signal
import time
from typing import Callable

import torch

from ..tracking.console import progress_bar
from ..errors import UserError
from ..checkpoint.meta import BEST_NAME
from ..checkpoint.train_state import TrainState
from .checkpoint_timer import CheckpointTimer
from .config import RunConfig
from .epoch_totals import EpochTotals

LOG_EVERY = 50            # steps between tracker points (each one syncs the device once)
STOP_CHECK_EVERY = 10     # steps between checks for SIGTERM/SIGINT across processes
SLOW_CHECK_STEP = 11      # the step whose mean time estimates the whole run's


class Diverged(UserError):
    """Losses stayed non-finite: stop, keep the best checkpoint so far."""


class Stopped(Exception):
    """SIGTERM/SIGINT arrived: the run stops after this step; once its state is saved, it can be resumed."""


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


class StepHooks:
    """The run's hooks, called by train_one_epoch: `start_epoch`, `after_step` each batch, `end_epoch`.
    They count the steps from the position `start_epoch` is given; the trainer, the TrainState's one
    writer, copies the count into it (`step`, `global_step`, `nonfinite`, `totals`).

    `check_every_step`: without fp16's scaler the loop syncs every step anyway (to skip non-finite
    losses together), so the divergence check costs nothing there; with it, every STOP_CHECK_EVERY.
    `save_state`: the trainer's mid-epoch save, called when --checkpoint-every is due.
    """

    def __init__(self, accelerator, config: RunConfig, *, check_every_step: bool, stop: StopFlag,
                 log_step: Callable[[dict, int], None], warn_if_slow: Callable[[float], None],
                 save_state: Callable[[], None]):
        self.accelerator, self.config = accelerator, config
        self.check_every_step, self.stop = check_every_step, stop
        self.log_step, self.warn_if_slow, self.save_state = log_step, warn_if_slow, save_state
        self.checkpoint_timer = CheckpointTimer(accelerator, config.checkpoint_every) \
            if config.checkpoint_every else None
        self.phase_name, self.epoch = "", 0
        self.step = self.global_step = self.nonfinite = 0
        self.streak = torch.zeros(())   # non-finite losses in a row, kept on the device
        self.steps = 0
        self.started = 0.0
        self.bar = None
        self.totals: EpochTotals | None = None
        self.carried: dict | None = None

    def count_from(self, phase_name: str, state: TrainState) -> None:
        """Before an epoch: count on from `state`'s position (read, never written)."""
        self.phase_name, self.epoch = phase_name, state.epoch
        self.step, self.global_step, self.nonfinite = state.step, state.global_step, state.nonfinite
        self.carried = state.epoch_totals if state.step else None  # a resume mid-epoch goes on from them

    def start_epoch(self, batches_left: int) -> EpochTotals:
        """The epoch's totals, which the loop adds each batch to."""
        done = self.step  # batches already done when resuming mid-epoch
        self.totals = EpochTotals(self.accelerator.device, self.carried)
        self.started = time.perf_counter()
        self.steps = 0
        self.streak = torch.tensor(float(self.nonfinite), device=self.accelerator.device)
        self.bar = progress_bar(not self.config.no_progress and self.accelerator.is_local_main_process,
                                batches_left + done, done, f"{self.phase_name} ep {self.epoch + 1}")
        return self.totals

    def after_step(self, loss: torch.Tensor, lr: float) -> None:
        """After the loop added the batch to the totals. Raises Diverged, or Stopped on SIGTERM/SIGINT
        (the trainer then saves the state)."""
        self.streak = (self.streak + 1) * torch.isfinite(loss.detach()).logical_not()
        self.steps += 1
        self.step += 1
        self.global_step += 1
        if self.check_every_step or self.global_step % STOP_CHECK_EVERY == 0:
            self.check_divergence(loss)
        if self.bar is not None:
            self.bar.update(1)
        if self.global_step % LOG_EVERY == 0:
            seconds = time.perf_counter() - self.started
            self.log_step({"train/step_loss": loss.item(), "train/lr": lr,
                           "train/images_per_s": self.totals.seen * self.accelerator.num_processes / seconds},
                          self.global_step)
        if self.steps == SLOW_CHECK_STEP:
            self.warn_if_slow((time.perf_counter() - self.started) / SLOW_CHECK_STEP)
        if self.global_step % STOP_CHECK_EVERY == 0 and self.stop.requested():
            raise Stopped
        if self.global_step % STOP_CHECK_EVERY == 0 and self.checkpoint_timer is not None \
                and self.checkpoint_timer.due():
            self.save_state()  # --checkpoint-every: mid-epoch, at the same step everywhere

    def saved(self) -> None:
        """The state was saved: --checkpoint-every counts from now."""
        if self.checkpoint_timer is not None:
            self.checkpoint_timer.saved()

    def end_epoch(self, loss: torch.Tensor) -> None:
        if self.bar is not None:
            self.bar.close()
        self.check_divergence(loss)

    def check_divergence(self, loss: torch.Tensor) -> None:
        self.nonfinite = int(self.streak.item())
        if self.nonfinite >= self.config.max_nonfinite:
            best = self.config.run_dir / BEST_NAME
            kept = f"best checkpoint kept: {best}" if best.exists() else "no checkpoint saved yet"
            raise Diverged(
                f"loss was non-finite ({loss.item()}) for {self.nonfinite} steps in a row, up to "
                f"step {self.global_step} in phase '{self.phase_name}'; {kept}; "
                "try --mixed-precision bf16 (where supported) or no, or a lower --lr")
