"""The baseline a user would write by hand: a plain PyTorch loop doing level 1's work, for comparison.

Same data (the 45,000-image split, or all 50,000 with --full-train), same model (timm, from scratch),
same per-image augmentation (RandomCrop 32 pad 4, flip, ColorJitter 0.2; --no-jitter drops it), same
AdamW lr/weight decay, cosine per step, batch 128, fp32 — written the textbook way: torchvision v2
transforms per image in DataLoader workers, no Accelerate, test accuracy of the last epoch.
Prints one markdown row per seed and mean ± sd, like time_to_accuracy.py, so the two compare.

    python bench/plain_loop.py --seeds 42 43 44          # vs time_to_accuracy.py's level-1 reference
"""
from __future__ import annotations

import argparse
import statistics
import time

from measure import environment_header

from cifar10_levels.recipes import IMAGENET_MEAN, IMAGENET_STD



def make_transform(jitter: bool):
    from torchvision.transforms import v2
    import torch

    steps = [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()]
    if jitter:
        steps.append(v2.ColorJitter(0.2, 0.2, 0.2))
    return v2.Compose([*steps, v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class Augmented:
    """Per-image transform over uint8 tensors, as a torchvision-style Dataset."""

    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.labels[i]


def train_plain(seed: int, args) -> tuple[float, float]:
    """(test accuracy, seconds from data in memory to test accuracy)."""
    import timm
    import torch
    import torch.nn.functional as F

    from cifar10_levels.data.cifar10 import load_cifar10

    start = time.perf_counter()
    torch.manual_seed(seed)
    data = load_cifar10(args.dataset)
    images, labels = data.train.images, data.train.labels
    if args.full_train:
        images, labels = torch.cat([images, data.val.images]), torch.cat([labels, data.val.labels])
    loader = torch.utils.data.DataLoader(
        Augmented(images, labels, make_transform(not args.no_jitter)), batch_size=128, shuffle=True,
        drop_last=True, num_workers=args.workers, persistent_workers=args.workers > 0)
    model = timm.create_model(args.arch, pretrained=False, num_classes=10)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs * len(loader))
    for _ in range(args.epochs):
        model.train()
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    model.eval()
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    correct = 0
    with torch.no_grad():
        for x, y in zip(data.test.images.split(500), data.test.labels.split(500)):
            correct += (model((x.float() / 255 - mean) / std).argmax(1) == y).sum().item()
    return correct / len(data.test), time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", metavar="DIR", help="local CIFAR-10 in the uoft-cs/cifar10 layout "
                   "(default: the Hugging Face Hub or its cache, as train.py)")
    p.add_argument("--seeds", type=int, nargs="+", default=[42])
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (default 2)")
    p.add_argument("--no-jitter", action="store_true", help="crop and flip only")
    p.add_argument("--full-train", action="store_true", help="train on all 50,000 (no val hold-out)")
    args = p.parse_args(argv)

    print(environment_header())
    print(f"plain loop: {args.arch} 32 px, {args.epochs} epochs, AdamW lr {args.lr}, batch 128, "
          f"jitter {'off' if args.no_jitter else '0.2'}, train {'50,000' if args.full_train else '45,000'}, "
          f"{args.workers} workers\n")
    print("| seed | test acc | train + test time |")
    print("|---|---|---|")
    accs, times = [], []
    for seed in args.seeds:
        acc, seconds = train_plain(seed, args)
        accs.append(acc)
        times.append(seconds)
        print(f"| {seed} | {acc:.2%} | {seconds:.0f} s |", flush=True)
    sd = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)
    print(f"| mean ± sd ({len(accs)} seeds) | {statistics.mean(accs):.2%} ± {sd(accs):.2%} | "
          f"{statistics.mean(times):.0f} ± {sd(times):.0f} s |")


if __name__ == "__main__":
    main()
