"""What an epoch of training reports: its loss, accuracy, images and seconds, summed over the
processes, and kept across a mid-epoch save and resume."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch


@dataclass
class EpochStats:
    loss: float
    acc: float
    images: int
    seconds: float


def dominant_label(targets: torch.Tensor) -> torch.Tensor:
    return targets.argmax(1) if targets.ndim == 2 else targets


class EpochTotals:
    """An epoch's training loss, correct predictions and images: this process's since the loop
    started, plus `carried`, the totals over every process that a mid-epoch save kept (TrainState's
    epoch_totals), so an epoch resumed mid-way reports the whole epoch."""

    def __init__(self, device, carried: dict | None = None):
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device)
        self.seen = 0
        self.carried = carried or {"loss_sum": 0.0, "correct": 0.0, "images": 0.0, "seconds": 0.0}
        self.start = time.perf_counter()

    def add(self, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor, images: int) -> None:
        self.seen += images
        self.loss_sum += loss.detach() * images
        self.correct += (logits.argmax(1) == dominant_label(targets)).sum()

    def summed(self, accelerator) -> dict:
        """The totals so far over every process (a collective: every process calls it at the same
        step) and this process's seconds, each with what was carried over."""
        seconds = time.perf_counter() - self.start
        device = accelerator.device
        totals = accelerator.reduce(torch.stack([self.loss_sum, self.correct,
                                                 torch.tensor(float(self.seen), device=device)]),
                                    reduction="sum")
        loss_sum, correct, images = (t.item() for t in totals)
        c = self.carried
        return {"loss_sum": loss_sum + c["loss_sum"], "correct": correct + c["correct"],
                "images": images + c["images"], "seconds": seconds + c["seconds"]}

    def stats(self, accelerator) -> EpochStats:
        totals = self.summed(accelerator)
        images = max(totals["images"], 1.0)
        return EpochStats(loss=totals["loss_sum"] / images, acc=totals["correct"] / images,
                          images=int(images), seconds=totals["seconds"])
