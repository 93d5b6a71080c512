"""What a run records: Accelerate's trackers (W&B offline by default) and history.jsonl."""
from __future__ import annotations

import os
from pathlib import Path

from .files import append_line

REPORT_CHOICES = ("wandb", "tensorboard", "all", "none")


def tracker_names(report_to: str) -> list[str]:
    """Accelerate `log_with` names for --report-to."""
    return {"wandb": ["wandb"], "tensorboard": ["tensorboard"], "all": ["wandb", "tensorboard"],
            "none": []}[report_to]


def wandb_mode() -> str:
    """The user's WANDB_MODE wins; without a usable key, log offline instead of failing."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path.home() / ".netrc"
    if netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return "online"
    return "offline"


class RunLog:
    """Only the main process writes: Accelerate's trackers already log there alone."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.run_dir: Path = trainer.run_dir
        self.started = False

    @property
    def main(self) -> bool:
        return self.trainer.accelerator.is_main_process

    def start(self) -> None:
        pass

    def step(self, metrics: dict, step: int) -> None:
        pass

    def epoch(self, record: dict) -> None:
        import json
        if self.main:
            append_line(self.run_dir / "history.jsonl", json.dumps(record))

    def final(self, results: dict, test, data) -> None:
        pass

    def finish(self) -> None:
        pass
