"""The model's input: a uint8 (or [0, 1] float) batch normalized by mean/std and resized to the
model's size on the device, the same for training, evaluation and prediction."""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@functools.lru_cache(maxsize=16)
def bilinear_weights(n_in: int, n_out: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(n_out, n_in) matrix of F.interpolate's bilinear weights along one axis (align_corners=False)."""
    eye = torch.eye(n_in, device=device, dtype=dtype).unsqueeze(1)
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=False).squeeze(1).T.contiguous()


def resize_bilinear(x: torch.Tensor, size: int) -> torch.Tensor:
    """F.interpolate(x, (size, size), "bilinear") as two matmuls: same values, faster on a CPU
    (bench/step_costs.py)."""
    rows = bilinear_weights(x.shape[-2], size, x.device, x.dtype)
    cols = bilinear_weights(x.shape[-1], size, x.device, x.dtype)
    return rows @ x @ cols.T


@dataclass(frozen=True)
class Normalizer:
    """uint8 or [0,1] float batch -> resized, normalized float batch for the model."""

    img_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channels_last: bool = False
    tta_scheme: str = "shift2"     # this model's test-time views (evaluation.tta.TTA_SCHEMES)

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        """Mean/std normalization at the input's own size: uint8, or floats in [0, 1]."""
        if x.dtype == torch.uint8:
            return self.standardize_(x.float(), max_value=255)
        return self.standardize_(x.clone())

    @functools.lru_cache(maxsize=8)
    def shift_scale(self, device: torch.device, max_value: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) as (1, 3, 1, 1) tensors for values in [0, max_value]; made once per device,
        not copied to it every batch."""
        shift = torch.tensor(self.mean, device=device).view(1, 3, 1, 1) * max_value
        return shift, torch.tensor(self.std, device=device).view(1, 3, 1, 1) * max_value

    def standardize_(self, x: torch.Tensor, max_value: float = 1.0) -> torch.Tensor:
        """In place on a float batch with values in [0, max_value]."""
        shift, scale = self.shift_scale(x.device, max_value)
        return x.sub_(shift).div_(scale)

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.img_size, self.img_size):
            x = resize_bilinear(x, self.img_size)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # Normalizing before the resize is exact (bilinear weights sum to 1) and touches 16x fewer
        # pixels at 32 -> 128 px.
        return self.resize(self.standardize(x))
