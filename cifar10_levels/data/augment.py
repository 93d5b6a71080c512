"""Batched training augmentation on the device: uint8 32x32 in, normalized model-size floats out.

Pixel ops (crop, flip, RandAugment) run on the uint8 32x32 batch; colour jitter, normalization,
random erasing and Mixup/CutMix on the float 32x32 batch; the resize to the model's size comes
last. Randomness comes from the process's global RNGs, which the loop seeds differently on every
process.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .normalize import Normalizer
from .randaugment import randaugment
from ..recipes import Augment

GRAY_WEIGHTS = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)


def translate(x: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, padding: int,
              flip: torch.Tensor | None = None, fill: str = "constant") -> torch.Tensor:
    """Each image shifted right by dx[i] and down by dy[i] (|shift| <= padding), the uncovered border
    filled with zeros ("constant") or the mirrored edge ("reflect"), then mirrored where `flip` is
    set, for a whole uint8 batch as one gather from the padded batch."""
    n, c, h, w = x.shape
    cols = torch.arange(w, device=x.device).expand(n, w)
    if flip is not None:
        cols = torch.where(flip.view(n, 1), cols.flip(1), cols)
    rows = torch.arange(h, device=x.device) + (padding - dy.view(n, 1))
    index = (rows * (w + 2 * padding)).unsqueeze(2) + (cols + (padding - dx.view(n, 1))).unsqueeze(1)
    padded = F.pad(x, (padding,) * 4, mode=fill).reshape(n, c, -1)
    return padded.gather(2, index.view(n, 1, h * w).expand(n, c, h * w)).view(n, c, h, w)


def random_crop_flip(x: torch.Tensor, padding: int, flip: bool | torch.Tensor,
                     fill: str = "constant") -> torch.Tensor:
    """RandomCrop(size, padding) with `fill` (translate's), then a horizontal flip of a random half,
    or of the images where `flip` is a True mask (a fresh tensor; `x` is left alone)."""
    n = x.shape[0]
    dx = torch.randint(-padding, padding + 1, (n,), device=x.device)
    dy = torch.randint(-padding, padding + 1, (n,), device=x.device)
    if isinstance(flip, bool):
        flip = (torch.rand(n, device=x.device) < 0.5) if flip else None
    return translate(x, dx, dy, padding, flip, fill)


class AlternatingFlip:
    """airbench's flip: a fixed random half of the images mirrored in even epochs, the other half in
    odd ones, so each image is seen both ways in every two epochs (a fresh coin per epoch repeats
    a side half the time).

    Which half an image belongs to is a parity of its pixels under weights drawn from `seed`: the
    same on every process and after --resume, with no dataset index threaded through the loader.
    """

    def __init__(self, seed: int, pixels: int = 3 * 32 * 32):
        generator = torch.Generator().manual_seed(seed)
        self.weights = torch.randint(0, 2, (pixels,), generator=generator)
        self.epoch = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(N,) bool: which images of the uint8 batch to mirror this epoch."""
        flat = x.reshape(x.shape[0], -1)
        self.weights = self.weights.to(x.device)  # a no-op once moved: not copied every batch
        half = (flat.long() * self.weights[: flat.shape[1]]).sum(1) % 2 == 1
        return half ^ bool(self.epoch % 2)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) luma of an (N, 3, H, W) float batch, as one batched matmul (no full-size temporary)."""
    n, _, h, w = x.shape
    return (GRAY_WEIGHTS.to(x.device, x.dtype).view(1, 3) @ x.reshape(n, 3, h * w)).view(n, 1, h, w)


def color_jitter_standardize_(x: torch.Tensor, strength: float, normalize: Normalizer,
                              max_value: float = 1.0) -> torch.Tensor:
    """Colour jitter, then mean/std normalization, in place on a float batch with values in
    [0, max_value]. Jitter = brightness, then contrast, then saturation, each a per-image factor in
    [1-s, 1+s], clamped to [0, max_value].

    The three are linear in x, so with g the grey image and m its mean,
    saturation(contrast(brightness(x))) = b*c*(s*x + (1-s)*g) + (1-c)*b*m; normalization is a
    per-channel increasing affine map, so it folds into the same pass and moves the clamp's bounds.
    """
    if not strength:
        return normalize.standardize_(x, max_value)
    n = x.shape[0]
    b, c, s = torch.empty(3, n, 1, 1, 1, device=x.device).uniform_(1 - strength, 1 + strength)
    gray = grayscale(x)
    mean = gray.mean(dim=(2, 3), keepdim=True)
    shift, scale = normalize.shift_scale(x.device, max_value)
    x.mul_(s * b * c / scale).addcmul_(gray, (1 - s) * b * c / scale).add_(((1 - c) * b * mean - shift) / scale)
    # [0, max_value] normalized, per channel (clamp with tensor bounds is far slower than with numbers)
    for k, (m, sd) in enumerate(zip(normalize.mean, normalize.std)):
        x[:, k].clamp_(-m / sd, (1 - m) / sd)
    return x


class TrainAugment:
    """A recipe's training policy on a uint8 batch on the device; set_epoch(n) before each epoch."""

    def __init__(self, policy: Augment, normalize: Normalizer, label_smoothing: float,
                 num_classes: int, device: torch.device, seed: int = 0):
        self.policy = policy
        self.normalize = normalize
        self.alternating_flip = AlternatingFlip(seed) if policy.flip and policy.flip_alternate else None
        self.erasing = None
        if policy.random_erasing > 0:
            from timm.data.random_erasing import RandomErasing
            self.erasing = RandomErasing(probability=policy.random_erasing, mode="pixel",
                                         device=str(device))
        self.mixup = None
        if policy.mixup_alpha > 0 or policy.cutmix_alpha > 0:
            from timm.data import Mixup
            self.mixup = Mixup(mixup_alpha=policy.mixup_alpha, cutmix_alpha=policy.cutmix_alpha,
                               switch_prob=0.5, mode="batch", label_smoothing=label_smoothing,
                               num_classes=num_classes)

    def set_epoch(self, epoch: int) -> None:
        if self.alternating_flip is not None:
            self.alternating_flip.epoch = epoch

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, mix: bool
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (inputs, targets); targets are soft (N, C) when Mixup/CutMix ran, else labels."""
        batch, targets = self.pixels(images, labels, mix)
        return self.resize(batch), targets

    def resize(self, batch: torch.Tensor) -> torch.Tensor:
        """pixels' batch at the model's size and memory layout."""
        return self.normalize.resize(batch)

    def pixels(self, images: torch.Tensor, labels: torch.Tensor, mix: bool
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(the augmented batch, normalized, still at 32 px; targets): what a teacher takes at its
        own size (train.distill)."""
        p = self.policy
        x = images
        if p.crop_padding or p.flip:
            flip = self.alternating_flip(x) if self.alternating_flip is not None else p.flip
            x = random_crop_flip(x, p.crop_padding, flip, p.crop_fill)
        if p.randaugment_ops:
            x = randaugment(x, p.randaugment_ops, p.randaugment_magnitude)
        # from here on one float buffer (0-255 values), changed in place
        x = color_jitter_standardize_(x.float(), p.color_jitter, self.normalize, max_value=255)
        # Erasing and Mixup/CutMix run at 32 px too, in timm's order; resizing last keeps every op
        # on 16x fewer pixels than at 128 px, and the upsampled result carries the same content.
        if self.erasing is not None:
            x = self.erasing(x)
        targets = labels
        if mix and self.mixup is not None:
            x, targets = self.mixup(x, labels)
        return x, targets
