"""--checkpoint-every: when the resume state is due mid-epoch, decided on the main process's clock and
sent to every process, so that all of them save at the same step."""
from __future__ import annotations

import time
from typing import Callable

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast


class CheckpointTimer:
    """`due()` is called by every process at the same steps; `saved()` after every save of the state."""

    def __init__(self, accelerator: Accelerator, every: float, clock: Callable[[], float] = time.monotonic):
        self.accelerator, self.every, self.clock = accelerator, every, clock
        self.saved_at = clock()

    def saved(self) -> None:
        self.saved_at = self.clock()

    def due(self) -> bool:
        late = self.accelerator.is_main_process and self.clock() - self.saved_at >= self.every
        flag = torch.tensor([float(late)], device=self.accelerator.device)
        if self.accelerator.num_processes > 1:
            flag = broadcast(flag, from_process=0)
        return bool(flag.item())
