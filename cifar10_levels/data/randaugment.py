"""RandAugment on a uint8 batch with a fresh draw of ops for every image: torchvision's ops and magnitudes.

torchvision's `v2.RandAugment` draws its ops once per call, so a batch given to it gets the same two
ops on every image, and calling it per image (or per small group) costs more in Python than in
pixels (`bench/step_costs.py`). Here every image draws its own ops and signs exactly as
`v2.RandAugment.forward` does for one image, and each op runs once per batch on the images that drew it:
- the geometric ops (and Identity) use nearest-neighbour sampling at a fixed magnitude, so each one is
  a fixed map from output to source pixel; the maps are made once by torchvision itself (its op run on
  an image of pixel numbers) and applied as one gather;
- Brightness, Color, Contrast and Sharpness blend with a per-image factor, written as torchvision's
  kernels are;
- Posterize and AutoContrast (unsigned, one magnitude) are torchvision's kernels; Solarize and
  Equalize are exact rewrites of them without `torch.where` over uint8 pixels (slow on CPU).
tests/test_randaugment.py checks every op and sign, pixel for pixel, against torchvision's output.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

NUM_MAGNITUDE_BINS = 31  # torchvision's default
GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
BLENDS = ("Brightness", "Color", "Contrast", "Sharpness")
UNSIGNED_KERNELS = ("Posterize", "Solarize", "AutoContrast", "Equalize")
# randaugment() relies on this order: Identity, then the geometric ops, sort first in a batch
OPS = ("Identity",) + GEOMETRIC + BLENDS + UNSIGNED_KERNELS


@dataclass(frozen=True)
class OpSpace:
    """torchvision's RandAugment ops at one magnitude, for images of one size."""

    magnitudes: tuple[float, ...]  # per op of OPS, before the sign
    signed: tuple[bool, ...]
    source_maps: torch.Tensor  # (2 * len(OPS), H*W): source pixel per output pixel; H*W = fill
    policy: object  # the torchvision transform whose kernels the unsigned ops call


def _torchvision_policy(magnitude: int):
    from torchvision.transforms import v2

    return v2.RandAugment(num_ops=1, magnitude=magnitude, num_magnitude_bins=NUM_MAGNITUDE_BINS)


def apply_torchvision_op(policy, images: torch.Tensor, name: str, magnitude: float) -> torch.Tensor:
    """One op exactly as torchvision's RandAugment applies it (its dispatcher, so its parameters)."""
    return policy._apply_image_or_video_transform(images, name, magnitude,
                                                  interpolation=policy.interpolation, fill=policy._fill)


@functools.lru_cache(maxsize=8)
def op_space(magnitude: int, height: int, width: int) -> OpSpace:
    policy = _torchvision_policy(magnitude)
    if set(policy._AUGMENTATION_SPACE) != set(OPS):
        raise RuntimeError(f"torchvision's RandAugment ops {sorted(policy._AUGMENTATION_SPACE)} are not "
                           f"the ones this module implements: {sorted(OPS)}")
    magnitudes, signed = [], []
    for name in OPS:
        magnitudes_fn, is_signed = policy._AUGMENTATION_SPACE[name]
        values = magnitudes_fn(NUM_MAGNITUDE_BINS, height, width)
        magnitudes.append(float(values[magnitude]) if values is not None else 0.0)
        signed.append(bool(is_signed))
    # Pixel numbers 1..H*W as a float image: torchvision's nearest-neighbour geometric ops copy them
    # to where each output pixel comes from (0 where it fills), which is the op as an index map.
    pixel_numbers = torch.arange(1, height * width + 1, dtype=torch.float32).view(1, 1, height, width)
    identity = torch.arange(height * width)
    maps = []
    for sign in (1.0, -1.0):
        for name, value, is_signed in zip(OPS, magnitudes, signed):
            if name not in GEOMETRIC:
                maps.append(identity)
                continue
            moved = apply_torchvision_op(policy, pixel_numbers, name, sign * value if is_signed else value)
            source = moved.round().long().view(-1) - 1
            maps.append(torch.where(source < 0, height * width, source))
    return OpSpace(tuple(magnitudes), tuple(signed), torch.stack(maps), policy)


def remap_pixels(x: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Output pixel p of image i is input pixel source[i, p] (row-major), or 0 where it is H*W."""
    n, c, h, w = x.shape
    flat = torch.cat([x.reshape(n, c, h * w), x.new_zeros(n, c, 1)], dim=2)
    return flat.gather(2, source.view(n, 1, h * w).expand(n, c, h * w)).view(n, c, h, w)


def _per_image(values: torch.Tensor) -> torch.Tensor:
    return values.view(-1, 1, 1, 1)


def _blend(images: torch.Tensor, degenerate: torch.Tensor, ratio: torch.Tensor, alpha: torch.Tensor
           ) -> torch.Tensor:
    """torchvision's _blend with one ratio per image: ratio*images + alpha*degenerate, alpha = 1-ratio."""
    out = images.float().mul_(_per_image(ratio))  # addcmul rounds as torchvision's add_(alpha=) does
    return torch.addcmul(out, degenerate, _per_image(alpha), out=out).clamp_(0, 255).to(torch.uint8)


def _gray(images: torch.Tensor) -> torch.Tensor:
    """torchvision's floored grey of a uint8 RGB batch, as float (N, 1, H, W); same expression."""
    r, g, b = images.float().unbind(dim=1)
    return r.mul_(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).floor_().unsqueeze(1)


def _sharpen(images: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """torchvision's adjust_sharpness with one factor per image (borders kept).

    Its blur is a 3x3 kernel of 1s with 5 in the middle, over 13, rounded: here a separable 3x3 sum
    (a depthwise conv is slow on a CPU at these sizes). The sum is an integer over 13, never within
    1/26 of a .5, so the float rounding order cannot change the rounded result.
    """
    out = images.float()
    rows = out[..., :, :-2] + out[..., :, 1:-1] + out[..., :, 2:]
    inner = out[..., 1:-1, 1:-1]
    blurred = (rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :]).add_(inner, alpha=4)
    blurred.div_(13).round_()
    inner.add_(blurred.sub_(inner).mul_(_per_image(alpha)))
    return out.clamp_(0, 255).to(torch.uint8)


def _apply_blend(name: str, images: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """A blend op with its signed magnitude per image (float64): factor 1 + value, as torchvision's
    Python floats give it (1 - factor is -value exactly, not the float32 difference)."""
    ratio, alpha = (1.0 + value).float(), (-value).float()
    if name == "Brightness":
        return images.float().mul_(_per_image(ratio)).clamp_(0, 255).to(torch.uint8)
    if name == "Color":
        return _blend(images, _gray(images), ratio, alpha)
    if name == "Contrast":
        return _blend(images, _gray(images).mean(dim=(1, 2, 3), keepdim=True), ratio, alpha)
    return _sharpen(images, alpha)


def _equalize(images: torch.Tensor) -> torch.Tensor:
    """torchvision's equalize_image (PIL's lookup table), with the images it leaves alone (step 0)
    given an identity table instead of a torch.where over every pixel (slow for uint8 on a CPU)."""
    n, c, h, w = images.shape
    flat = images.reshape(n, c, h * w).long()
    hist = flat.new_zeros(n, c, 256, dtype=torch.int32)
    hist.scatter_add_(2, flat, hist.new_ones(1).expand_as(flat))
    cum_hist = hist.cumsum(dim=2)
    last = cum_hist.argmax(dim=2, keepdim=True)
    step = (h * w - hist.gather(2, last)).div_(255, rounding_mode="floor")
    lut = cum_hist[..., :-1].add_(step // 2).div_(step.clamp(min=1), rounding_mode="floor").clamp_(0, 255)
    lut = torch.cat([lut.new_zeros(n, c, 1), lut], dim=2)
    lut = torch.where(step == 0, torch.arange(256, dtype=lut.dtype, device=lut.device), lut)
    return lut.to(torch.uint8).gather(2, flat).view(n, c, h, w)


def _apply_unsigned(space: OpSpace, name: str, images: torch.Tensor) -> torch.Tensor:
    magnitude = space.magnitudes[OPS.index(name)]
    if name == "Solarize":  # 255 - x is x ^ 255 in uint8; torch.where on uint8 is slow on a CPU
        return images ^ (images >= 255 * magnitude).to(torch.uint8).mul_(255)
    if name == "Equalize":
        return _equalize(images)
    return apply_torchvision_op(space.policy, images, name, magnitude)


def randaugment(x: torch.Tensor, num_ops: int, magnitude: int) -> torch.Tensor:
    """`num_ops` rounds of torchvision's RandAugment ops on a uint8 (N, C, H, W) batch, drawn per image
    as torchvision draws them for one image: a uniform op, and a 50/50 sign for the signed ones."""
    if x.dtype != torch.uint8:
        raise TypeError(f"randaugment takes uint8 images, got {x.dtype}")
    space = op_space(magnitude, x.shape[-2], x.shape[-1])
    signed = torch.tensor(space.signed)
    for _ in range(num_ops):
        ops = torch.randint(len(OPS), (len(x),))
        x = apply_ops(x, space, ops, (torch.rand(len(x)) <= 0.5) & signed[ops])
    return x


def apply_ops(x: torch.Tensor, space: OpSpace, ops: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Image i gets op `OPS[ops[i]]`, with its magnitude negated where `negative[i]`."""
    count = len(OPS)
    # sort the batch by op so that every op works on one contiguous slice; undone at the end
    order = ops.argsort(stable=True)
    ops, negative = ops[order], negative[order]
    x = x.index_select(0, order.to(x.device))
    ends = ops.bincount(minlength=count).cumsum(0).tolist()
    # Identity and the geometric ops sort first: one gather for the geometric ones
    start, end = ends[0], ends[len(GEOMETRIC)]
    if end > start:
        source = space.source_maps[ops[start:end] + count * negative[start:end]].to(x.device)
        x[start:end] = remap_pixels(x[start:end], source)
    for name in BLENDS + UNSIGNED_KERNELS:
        k = OPS.index(name)
        start, end = ends[k - 1], ends[k]
        if start == end:
            continue
        images = x[start:end]
        if name in BLENDS:
            value = (1.0 - 2.0 * negative[start:end].double()) * space.magnitudes[k]
            images.copy_(_apply_blend(name, images, value.to(x.device)))
        else:
            images.copy_(_apply_unsigned(space, name, images))
    return x.index_select(0, order.argsort().to(x.device))
