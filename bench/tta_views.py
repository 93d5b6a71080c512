"""Test accuracy of trained checkpoints under several test-time augmentation schemes, side by side.

Every distinct view (a mirror and a shift, with zero or reflect fill) is evaluated once per checkpoint;
each scheme then combines its views' logits or softmax with its weights. No training: run it on the
checkpoints a `bench/time_to_accuracy.py --keep-runs DIR` run kept.

    python bench/tta_views.py --dataset data/cifar10 --weights RUNS/seed*/*/last.safetensors
"""
from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass

import torch

from measure import environment_header

# (mirror, shift right px, shift down px, fill): the mirror comes after the shift
View = tuple[bool, int, int, str]
IDENTITY, MIRROR = (False, 0, 0, "constant"), (True, 0, 0, "constant")


@dataclass(frozen=True)
class Scheme:
    name: str
    views: tuple[tuple[View, float], ...]   # (view, weight)
    average: str                            # "logits" or "softmax"


def shifted(d: int, fill: str) -> tuple[tuple[View, float], ...]:
    """airbench's translated views: 1/8 each for (+d,+d) and (-d,-d), each plain and mirrored."""
    return tuple(((mirror, s, s, fill), 1 / 8) for s in (d, -d) for mirror in (False, True))


SCHEMES = (
    Scheme("plain", ((IDENTITY, 1.0),), "logits"),
    Scheme("mirror", ((IDENTITY, 0.5), (MIRROR, 0.5)), "logits"),
    Scheme("ours, 4 views: 2 px zero shifts, equal weights, softmax",
           ((IDENTITY, 1), (MIRROR, 1), ((False, 2, 2, "constant"), 1), ((True, 2, 2, "constant"), 1)),
           "softmax"),
    Scheme("ours, 4 views, logits", ((IDENTITY, 1), (MIRROR, 1), ((False, 2, 2, "constant"), 1),
                                     ((True, 2, 2, "constant"), 1)), "logits"),
    Scheme("airbench, 6 views: 1 px reflect shifts, weights 1/4 1/4 1/8 x4, logits",
           ((IDENTITY, 0.25), (MIRROR, 0.25), *shifted(1, "reflect")), "logits"),
    Scheme("6 views, 1 px zero shifts, logits", ((IDENTITY, 0.25), (MIRROR, 0.25), *shifted(1, "constant")),
           "logits"),
    Scheme("6 views, 1 px reflect, softmax", ((IDENTITY, 0.25), (MIRROR, 0.25), *shifted(1, "reflect")),
           "softmax"),
    Scheme("6 views, 2 px reflect, logits", ((IDENTITY, 0.25), (MIRROR, 0.25), *shifted(2, "reflect")),
           "logits"),
)


@torch.inference_mode()
def view_logits(model, normalize, images: torch.Tensor, view: View, batch_size: int) -> torch.Tensor:
    from cifar10_levels.data.augment import translate

    mirror, dx, dy, fill = view
    out = []
    for batch in images.split(batch_size):
        n = len(batch)
        full = (lambda value: torch.full((n,), value))
        x = batch if view == IDENTITY else translate(batch, full(dx), full(dy), max(abs(dx), abs(dy), 1),
                                                     full(mirror), fill)
        out.append(model(normalize(x)).float())
    return torch.cat(out)


def scheme_accuracy(scheme: Scheme, logits: dict, labels: torch.Tensor) -> float:
    total = sum(w for _, w in scheme.views)
    combined = sum(w / total * (logits[v] if scheme.average == "logits" else logits[v].softmax(1))
                   for v, w in scheme.views)
    return (combined.argmax(1) == labels).float().mean().item()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", nargs="+", required=True, metavar="CKPT")
    p.add_argument("--dataset", metavar="DIR", help="local CIFAR-10 in the uoft-cs/cifar10 layout")
    p.add_argument("--batch-size", type=int, default=500)
    args = p.parse_args(argv)
    from cifar10_levels.data.normalize import Normalizer
    from cifar10_levels.data.cifar10 import load_cifar10
    from cifar10_levels.checkpoint.weights import load_weights, resolve_weights

    print(environment_header())
    test = load_cifar10(args.dataset).test
    accs = {s.name: [] for s in SCHEMES}
    for text in args.weights:
        model, meta = load_weights(resolve_weights(text))
        model.eval()
        normalize = Normalizer(meta.img_size, tuple(meta.mean), tuple(meta.std))
        views = {v for s in SCHEMES for v, _ in s.views}
        logits = {v: view_logits(model, normalize, test.images, v, args.batch_size) for v in views}
        for s in SCHEMES:
            accs[s.name].append(scheme_accuracy(s, logits, test.labels))
    print(f"\n{len(args.weights)} checkpoint(s), {len(test.labels)} test images\n")
    print("| scheme | " + " | ".join(f"ckpt {i + 1}" for i in range(len(args.weights))) + " | mean |")
    print("|---" * (len(args.weights) + 2) + "|")
    for s in SCHEMES:
        values = accs[s.name]
        print(f"| {s.name} | " + " | ".join(f"{v:.2%}" for v in values) +
              f" | {statistics.mean(values):.2%} |")
    for i, text in enumerate(args.weights):
        print(f"ckpt {i + 1}: {text}")


if __name__ == "__main__":
    main()
