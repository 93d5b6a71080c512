"""Everything about a run that is not the recipe: where it writes, what it reads, how it runs."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class RunOptions:
    """Everything about a run that is not the recipe."""

    output_dir: Path = Path("ckpts")
    dataset: str | None = None
    train_limit: int | None = None
    eval_limit: int | None = None
    pretrained_file: str | None = None
    resume: bool = False                   # continue the saved run (with --resume auto: one was found)
    resume_auto: bool = False              # --resume auto: resume decided by the run directory
    checkpoint_every: float | None = None  # seconds between mid-epoch resume-state saves
    overwrite: bool = False                # replace the run already in the run directory
    mixed_precision: str | None = None     # None: run_setup.choose_precision
    grad_accum: int = 1
    lr_scaling: str = "none"               # none | linear (lr x global batch / recipe batch)
    compile: bool = False
    channels_last: bool | None = None      # None: on for CUDA
    max_nonfinite: int = 20                # consecutive non-finite losses before stopping
    report_to: str = "wandb"
    wandb_project: str = "cifar10-levels"
    wandb_entity: str | None = None
    run_name: str | None = None
    log_checkpoint: bool = False
    progress: bool = True
    time_budget: float | None = None       # seconds the whole process may take (--time-budget)
