"""Mixed precision: which one a run uses, and where its autocast and gradient scaler come from."""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .precision_probe import PrecisionVerdict

# torch's default; tests raise it to force overflowing (skipped) steps
INITIAL_SCALE = 2.0 ** 16


def default_precision(recipe) -> str:
    """bf16 where the GPU computes it natively (compute capability >= 8), else fp16 with scaling; on a
    CPU fp32 until measured (precision_probe.py times bf16 against it for the run's own model)."""
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.get_device_capability()[0] >= 8 else "fp16"
    return "no"


@dataclass
class Amp:
    """The run's precision as the loop uses it: an autocast context and the gradient scaler (or None)."""

    name: str
    scaler: torch.amp.GradScaler | None
    cpu_dtype: torch.dtype | None = None   # autocast we add; Accelerate autocasts inside the prepared model
    measured: PrecisionVerdict | None = None  # on a CPU without --mixed-precision: the speeds that chose it

    def autocast(self) -> AbstractContextManager:
        return torch.autocast("cpu", dtype=self.cpu_dtype) if self.cpu_dtype else nullcontext()

    def unscale_for_clipping(self, optimizer) -> None:
        """Accelerate's clip_grad_norm_ unscales fp16 gradients only with a scaler it made (CUDA), not
        with the one we hand it on a CPU; the scaler's step then knows they are unscaled."""
        if self.scaler is not None and self.cpu_dtype == torch.float16:
            self.scaler.unscale_(getattr(optimizer, "optimizer", optimizer))

    @classmethod
    def for_accelerator(cls, accelerator, precision: str) -> "Amp":
        """Call before `prepare`: Accelerate's optimizer wrapper, backward and save_state use its scaler.

        On a CPU Accelerate accepts fp16 but does nothing with it (no autocast, no scaler): we add both.
        """
        if precision == "fp16" and accelerator.device.type == "cpu":
            accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=INITIAL_SCALE)
            return cls("fp16", accelerator.scaler, torch.float16)
        return cls(accelerator.mixed_precision, accelerator.scaler)
