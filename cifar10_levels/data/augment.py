"""Batched augmentation on the training device: uint8 32x32 in, normalized model-size floats out.

Pixel ops (crop, flip, RandAugment) run on the uint8 32x32 batch; colour jitter, normalization,
random erasing and Mixup/CutMix on the float 32x32 batch; the resize to the model's size comes
last. Randomness comes from the process's global RNGs, which the loop seeds differently on every
process.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .randaugment import randaugment
from ..recipes import Augment

GRAY_WEIGHTS = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)

# Test-time views: (horizontal flip, shift right px, shift down px); a view mirrors first, then
# shifts. The first N of a scheme are used.
TTA_VIEWS: tuple[tuple[bool, int, int], ...] = (
    (False, 0, 0), (True, 0, 0), (False, 2, 2), (True, -2, -2), (False, -2, 2),
    (True, 2, -2), (False, 2, -2), (True, -2, 2),
)


@dataclass(frozen=True)
class TtaScheme:
    views: tuple[tuple[bool, int, int], ...]
    weights: tuple[float, ...]     # of each view's softmax (renormalized over the first N)
    fill: str                      # the shifted border: "constant" (zeros) or "reflect"


TTA_SCHEMES = {
    # levels 1-4: 2-px shifts with zero fill (the training crop's), equal weights
    "shift2": TtaScheme(TTA_VIEWS, (1.0,) * len(TTA_VIEWS), "constant"),
    # airbench94's: identity and mirror 1/4 each; 1-px shifts down-right and up-left, each plain
    # and mirrored, 1/8 each, reflect fill (bench/tta_views.py compares the two on the fast recipe)
    "shift1": TtaScheme(((False, 0, 0), (True, 0, 0), (False, 1, 1), (True, -1, 1), (False, -1, -1),
                         (True, 1, -1)), (2.0, 2.0, 1.0, 1.0, 1.0, 1.0), "reflect"),
}


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


def color_jitter_standardize_(x: torch.Tensor, strength: float, normalize: "Normalizer",
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
    tta_scheme: str = "shift2"     # this model's test-time views (TTA_SCHEMES)

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
        return self.normalize.resize(x), targets


def tta_scheme(name: str, count: int) -> TtaScheme:
    """The first `count` views of scheme `name`, weights summing to 1."""
    from ..errors import UserError

    scheme = TTA_SCHEMES[name]
    if not 1 <= count <= len(scheme.views):
        raise UserError(f"--tta {count}: this model's test-time views ({name}) are 1 to "
                        f"{len(scheme.views)}")
    weights = scheme.weights[:count]
    return TtaScheme(scheme.views[:count], tuple(w / sum(weights) for w in weights), scheme.fill)


def tta_views(images: torch.Tensor, count: int, scheme: str = "shift2") -> list[torch.Tensor]:
    """The first `count` deterministic views of a uint8 batch (identity first)."""
    chosen = tta_scheme(scheme, count)
    views = []
    n = images.shape[0]
    for flip, dx, dy in chosen.views:
        if not (flip or dx or dy):
            views.append(images)
            continue
        full = (lambda value: torch.full((n,), value, device=images.device))
        # a view mirrors first, then shifts: the same as shifting by -dx, then mirroring
        views.append(translate(images, full(-dx if flip else dx), full(dy), max(abs(dx), abs(dy), 1),
                               full(flip), chosen.fill))
    return views
