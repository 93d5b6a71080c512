"""Per-step costs behind the loop's design choices, in ms per call on this machine.

Four groups, each printed as median (min-max) over interleaved rounds:
- the optimizer step: AdamW per-tensor (torch's CPU default), foreach, and fused (what optim.py uses);
- the batch gather from the in-memory uint8 set: `images[index]` vs `index_select` (what data.py uses);
- level 1's augmentation on a uint8 batch, piece by piece and whole (`augment.TrainAugment`);
- level 2's on top of it: RandAugment per image (`randaugment.py`) against torchvision's
  `v2.RandAugment` called once per group of 8 images (what it replaced), random erasing, Mixup/CutMix,
  the resize to 128 px (ours and `F.interpolate`), and the whole `TrainAugment` of the mixing phase.

    python bench/step_costs.py --archs test_resnet resnet18 --repeats 5
"""
from __future__ import annotations

import argparse
import time
from typing import Callable

import torch
import torch.nn.functional as F

from measure import Spread, environment_header, interleave

from cifar10_levels.data.augment import TrainAugment, color_jitter_standardize_, random_crop_flip
from cifar10_levels.data.normalize import Normalizer, resize_bilinear
from cifar10_levels.data.randaugment import randaugment
from cifar10_levels.recipes import LEVELS


def ms_per_call(fn: Callable[[], object], calls: int) -> Callable[[], float]:
    fn()

    def measure() -> float:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - start) / calls * 1e3

    return measure


def optimizer_steps(arch: str, calls: int) -> dict[str, Callable[[], float]]:
    import timm

    model = timm.create_model(arch, num_classes=10)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    kinds = {"per-tensor": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}
    return {f"AdamW step, {arch}, {kind}":
            ms_per_call(torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01, **kw).step, calls)
            for kind, kw in kinds.items()}


def batch_gathers(batch: int, calls: int) -> dict[str, Callable[[], float]]:
    images = torch.randint(0, 256, (45000, 3, 32, 32), dtype=torch.uint8)
    index = torch.randperm(len(images))[:batch]
    return {f"gather {batch} of 45,000 uint8 images, images[index]": ms_per_call(lambda: images[index], calls),
            f"gather {batch} of 45,000 uint8 images, index_select": ms_per_call(
                lambda: images.index_select(0, index), calls)}


def augmentation(batch: int, calls: int) -> dict[str, Callable[[], float]]:
    recipe = LEVELS["1"]
    images = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8)
    labels = torch.zeros(batch, dtype=torch.long)
    floats = images.float()
    normalize = Normalizer(32, recipe.mean, recipe.std)
    policy = TrainAugment(recipe.augment, normalize, 0.0, 10, torch.device("cpu"))
    pad, strength = recipe.augment.crop_padding, recipe.augment.color_jitter
    return {f"level 1, batch {batch}: random crop (pad {pad}) + flip": ms_per_call(
                lambda: random_crop_flip(images, pad, True), calls),
            f"level 1, batch {batch}: uint8 -> float": ms_per_call(images.float, calls),
            f"level 1, batch {batch}: copy + colour jitter {strength} + standardize in place": ms_per_call(
                lambda: color_jitter_standardize_(floats.clone(), strength, normalize, max_value=255), calls),
            f"level 1, batch {batch}: whole TrainAugment": ms_per_call(lambda: policy(images, labels, False), calls)}


def level2_augmentation(batch: int, calls: int) -> dict[str, Callable[[], float]]:
    from torchvision.transforms import v2

    recipe = LEVELS["2"]
    a = recipe.augment
    images = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(batch) % 10
    floats = images.float()
    policy = TrainAugment(a, Normalizer(recipe.img_size, recipe.mean, recipe.std), recipe.label_smoothing,
                          10, torch.device("cpu"))
    library = v2.RandAugment(a.randaugment_ops, a.randaugment_magnitude)
    name = f"level 2, batch {batch}:"
    return {f"{name} RandAugment {a.randaugment_ops}x{a.randaugment_magnitude}, per image (ours)": ms_per_call(
                lambda: randaugment(images, a.randaugment_ops, a.randaugment_magnitude), calls),
            f"{name} torchvision v2.RandAugment, one draw per 8 images": ms_per_call(
                lambda: torch.cat([library(group) for group in images.split(8)]), calls),
            f"{name} copy + random erasing {a.random_erasing} (timm)": ms_per_call(
                lambda: policy.erasing(floats.clone()), calls),
            f"{name} copy + Mixup/CutMix (timm)": ms_per_call(lambda: policy.mixup(floats.clone(), labels), calls),
            f"{name} resize 32 -> {recipe.img_size} px (two matmuls, ours)": ms_per_call(
                lambda: resize_bilinear(floats, recipe.img_size), calls),
            f"{name} resize 32 -> {recipe.img_size} px with F.interpolate": ms_per_call(
                lambda: F.interpolate(floats, size=recipe.img_size, mode="bilinear", align_corners=False), calls),
            f"{name} whole TrainAugment (mixing phase)": ms_per_call(lambda: policy(images, labels, True), calls)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", nargs="+", default=["test_resnet", "resnet18"])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--calls", type=int, default=50, help="calls per measurement")
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    args = p.parse_args(argv)
    print(environment_header() + "\n")
    print("| what | ms per call, median (min-max) |")
    print("|---|---|")
    groups = [optimizer_steps(arch, args.calls) for arch in args.archs]
    groups += [batch_gathers(args.batch_size, args.calls), augmentation(args.batch_size, args.calls),
               level2_augmentation(args.batch_size, args.calls)]
    for group in groups:
        result: dict[str, Spread] = interleave(group, args.repeats)
        for name, spread in result.items():
            print(f"| {name} | {spread.format(3)} |", flush=True)


if __name__ == "__main__":
    main()
