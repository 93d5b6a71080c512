"""Mixed precision: which one a run uses, and where its autocast and gradient scaler come from."""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

# torch's default; tests raise it to force overflowing (skipped) steps
INITIAL_SCALE = 2.0 ** 16
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def default_precision(recipe) -> str:
    """bf16 where the GPU computes it natively (compute capability >= 8), else fp16 with scaling; on a
    CPU fp32 until measured (precision_probe.py times bf16 against it for the run's own model)."""
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.get_device_capability()[0] >= 8 else "fp16"
    return "no"


def autocast_for(device: torch.device | str, precision: str) -> AbstractContextManager:
    """The autocast a forward pass in `precision` runs under on `device` ("no": none)."""
    dtype = AUTOCAST_DTYPES.get(precision)
    device_type = device if isinstance(device, str) else device.type
    return torch.autocast(device_type, dtype=dtype) if dtype is not None else nullcontext()


@dataclass
class Amp:
    """The run's precision as the loop uses it: its autocast and the gradient scaler (or None)."""

    name: str
    scaler: torch.amp.GradScaler | None
    device_type: str = "cpu"
    ours: bool = False    # fp16 on a CPU: Accelerate adds neither autocast nor scaler, so we do
    # precision_probe.PrecisionVerdict (not imported: the probe builds its autocasts here): on a CPU
    # without --mixed-precision, the speeds that chose the precision
    measured: object | None = None

    def autocast(self) -> AbstractContextManager:
        """Around the prepared model, which Accelerate already autocasts (unless the autocast is ours)."""
        return self.unprepared_autocast() if self.ours else nullcontext()

    def unprepared_autocast(self) -> AbstractContextManager:
        """Around a model Accelerate did not prepare (the EMA's average, the probes' copies)."""
        return autocast_for(self.device_type, self.name)

    def unscale_for_clipping(self, optimizer) -> None:
        """Accelerate's clip_grad_norm_ unscales fp16 gradients only with a scaler it made (CUDA), not
        with the one we hand it on a CPU; the scaler's step then knows they are unscaled."""
        if self.scaler is not None and self.ours:
            self.scaler.unscale_(getattr(optimizer, "optimizer", optimizer))

    @classmethod
    def for_accelerator(cls, accelerator, precision: str) -> "Amp":
        """Call before `prepare`: Accelerate's optimizer wrapper, backward and save_state use its scaler.

        On a CPU Accelerate accepts fp16 but does nothing with it (no autocast, no scaler): we add both.
        """
        if precision == "fp16" and accelerator.device.type == "cpu":
            accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=INITIAL_SCALE)
            return cls("fp16", accelerator.scaler, "cpu", ours=True)
        return cls(accelerator.mixed_precision, accelerator.scaler, accelerator.device.type)
