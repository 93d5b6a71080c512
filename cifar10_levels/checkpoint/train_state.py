"""Where a run is: phase, epoch, step, best so far and the history, saved for --resume."""
from __future__ import annotations

from dataclasses import dataclass, field


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
    best_weights: str = "raw"     # what best.safetensors holds: the raw weights or their EMA
    nonfinite: int = 0
    train_seconds: float = 0.0
    history: list[dict] = field(default_factory=list)
    budget_plan: dict | None = None   # --time-budget's plan (time_budget.BudgetPlan), kept for --resume
    # a mid-epoch save's training totals of that epoch so far (train.epoch_totals.EpochTotals.summed)
    epoch_totals: dict | None = None
    teachers_sha256: list[str] | None = None   # --teachers' files: a resume must find the same ones
