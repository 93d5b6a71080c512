"""Images/s of each level's training data path, next to the naive per-image PIL pipeline, as a ratio.

Measured on this process's device (CPU here): uint8 32x32 batches from data.make_loader go through
augment.TrainAugment (crop, flip, RandAugment, colour jitter, normalize, resize to the recipe size,
random erasing, Mixup/CutMix when a phase of the level mixes) and come out as normalized float batches
at the recipe's size. The naive pipeline is what the write-up implies: per image, PIL resize to the
recipe size, torchvision RandAugment (where the level uses it), ToTensor, Normalize, in a plain
DataLoader with 2 workers and with 0. It skips crop, flip, jitter, erasing and Mixup, so the ratio
flatters it. Both see the same synthetic uint8 images (or --dataset PATH).

    python bench/data_pipeline.py               # every level
    python bench/data_pipeline.py --level 2
"""
from __future__ import annotations

import argparse
import time

import torch

from measure import CpuClock, Spread, environment_header, interleave, ratio

from cifar10_levels.data.augment import TrainAugment
from cifar10_levels.data.normalize import Normalizer
from cifar10_levels.data.cifar10 import NUM_CLASSES, ImageSet, load_cifar10, make_loader
from cifar10_levels.recipes import LEVELS, Recipe, get_recipe


def synthetic_images(count: int, seed: int = 0) -> ImageSet:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=generator)
    return ImageSet(images, torch.arange(count) % NUM_CLASSES)


class PILImages(torch.utils.data.Dataset):
    """The write-up's dataset: one PIL image per __getitem__, transformed one at a time."""

    def __init__(self, images: ImageSet, transform):
        self.pixels = images.images.permute(0, 2, 3, 1).numpy()
        self.labels = images.labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.pixels[i])), self.labels[i]


def naive_transform(recipe: Recipe):
    from torchvision import transforms as T

    steps = [T.Resize(recipe.img_size)] if recipe.img_size != 32 else []
    if recipe.augment.randaugment_ops:
        steps.append(T.RandAugment(recipe.augment.randaugment_ops, recipe.augment.randaugment_magnitude))
    steps += [T.ToTensor(), T.Normalize(recipe.mean, recipe.std)]
    return T.Compose(steps)


def one_pass(loader, work=lambda images, labels: None) -> tuple[int, float]:
    """One pass over `loader`, applying `work` to each batch: (images, seconds)."""
    seen = 0
    start = time.perf_counter()
    for images, labels in loader:
        work(images, labels)
        seen += len(labels)
    if not seen:
        raise SystemExit("no full batch: pass more images (--ours-images / --naive-images)")
    return seen, time.perf_counter() - start


def images_per_second(loader) -> float:
    seen, seconds = one_pass(loader)
    return seen / seconds


def measure_level(recipe: Recipe, ours_images: ImageSet, naive_images: ImageSet, workers: list[int],
                  repeats: int, device: torch.device = torch.device("cpu")
                  ) -> tuple[dict[str, Spread], Spread]:
    """Wall images/s of every candidate, and ours in images per CPU-second of this process."""
    augment = TrainAugment(recipe.augment, Normalizer(recipe.img_size, recipe.mean, recipe.std),
                           recipe.label_smoothing, NUM_CLASSES, device)
    mixes = any(recipe.mixes(phase) for phase in recipe.phases)
    ours_loader = make_loader(ours_images, recipe.batch_size, train=True, seed=recipe.seed)

    clock = CpuClock()
    def augment_batch(images, labels):
        augment(images.to(device, non_blocking=True), labels.to(device, non_blocking=True), mixes)

    def ours_pass() -> tuple[int, float]:
        seen, seconds = one_pass(ours_loader, augment_batch)
        if device.type == "cuda":  # the last batch's kernels finish inside the timed pass
            start = time.perf_counter()
            torch.cuda.synchronize()
            seconds += time.perf_counter() - start
        return seen, seconds

    ours = clock.timed(ours_pass)

    candidates = {}
    for count in workers:
        loader = torch.utils.data.DataLoader(
            PILImages(naive_images, naive_transform(recipe)),
            batch_size=min(recipe.batch_size, len(naive_images)),
            shuffle=True, drop_last=True, num_workers=count, persistent_workers=count > 0)
        images_per_second(loader)  # warm-up: starts the workers, which then persist
        candidates[f"naive {count} workers"] = lambda loader=loader: images_per_second(loader)
    ours()  # warm-up: first-call costs (imports, caches)
    clock.rates.clear()
    candidates["ours"] = ours
    return interleave(candidates, repeats), Spread(clock.rates)


def policy_text(recipe: Recipe) -> str:
    a = recipe.augment
    parts = [f"crop pad {a.crop_padding}" if a.crop_padding else "", "flip" if a.flip else "",
             f"RandAugment {a.randaugment_ops}x{a.randaugment_magnitude}" if a.randaugment_ops else "",
             f"jitter {a.color_jitter}" if a.color_jitter else "",
             f"erasing {a.random_erasing}" if a.random_erasing else "",
             "Mixup/CutMix" if any(recipe.mixes(p) for p in recipe.phases) else ""]
    return ", ".join(p for p in parts if p)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--level", nargs="+", default=list(LEVELS), help="levels to measure (default: all)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds (naive, ours, naive, ...)")
    p.add_argument("--ours-images", type=int, default=4096,
                   help="images per measurement of ours (at least 4 batches of the level)")
    p.add_argument("--naive-images", type=int, default=512, help="images per naive measurement")
    p.add_argument("--workers", type=int, nargs="+", default=[2, 0], help="naive DataLoader workers")
    p.add_argument("--dataset", help="real CIFAR-10 (uoft-cs/cifar10 layout) instead of synthetic")
    p.add_argument("--device", default="cpu", help="where ours augments (cuda: the device-side path)")
    p.add_argument("--threads", type=int, help="torch intra-op threads of this process (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    print(environment_header())
    if args.dataset:
        train = load_cifar10(args.dataset).train
        print(f"data: {args.dataset} (first training images)")
    else:
        largest = max(4 * get_recipe(level).batch_size for level in args.level)
        train = synthetic_images(max(args.ours_images, largest))
        print("data: synthetic uint8 32x32 noise images")
    print(f"measured: uint8 32 px in -> normalized float at the recipe size out, ours on {args.device}; "
          f"images/s median (min-max) of {args.repeats} interleaved rounds\n")
    names = [f"naive {w} workers" for w in args.workers]
    print("| level | policy (ours) | size | ours img/s | ours img per CPU-s | "
          + " | ".join(f"{n} img/s" for n in names)
          + " | " + " | ".join(f"ours / {n}" for n in names) + " |")
    print("|---" * (5 + 2 * len(names)) + "|")
    for level in args.level:
        recipe = get_recipe(level)
        ours_count = min(max(args.ours_images, 4 * recipe.batch_size), len(train))
        ours_images = train.subset(torch.arange(ours_count))
        naive_images = train.subset(torch.arange(min(args.naive_images, len(train))))
        result, ours_cpu = measure_level(recipe, ours_images, naive_images, args.workers, args.repeats,
                                         torch.device(args.device))
        cells = [recipe.level, policy_text(recipe), f"{recipe.img_size} px", result["ours"].format(),
                 ours_cpu.format()]
        cells += [result[n].format() for n in names]
        cells += [ratio(result["ours"], result[n]).format(1, "x") for n in names]
        print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
