"""Ensemble overhead: the real evaluation path plus the votes, against bare forward passes.

    python bench/ensemble_overhead.py --archs resnet18 efficientnet_b0 convnext_atto --images 2000

Random weights and random uint8 images (speed does not depend on them). `bare` is each member's
model(normalize(batch)) alone; `ensemble` is what ensemble.py runs: loader, evaluation.evaluate (softmax,
gather_for_metrics), then every vote, the oracle, disagreement, confusion and the printed table.
Each timing is the best of --repeats.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cifar10_levels.data.normalize import Normalizer  # noqa: E402
from cifar10_levels.checkpoint.io import CheckpointMeta  # noqa: E402
from cifar10_levels.data.cifar10 import ImageSet  # noqa: E402
from cifar10_levels.cli.ensemble import format_report  # noqa: E402
from cifar10_levels.ensemble.evaluation import evaluate_member  # noqa: E402
from cifar10_levels.ensemble.members import Member, member_labels  # noqa: E402
from cifar10_levels.ensemble.report import build_report  # noqa: E402
from cifar10_levels.models.factory import create_model  # noqa: E402
from cifar10_levels.recipes import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402

CLASSES = [f"class{i}" for i in range(10)]


def best_of(repeats: int, fn) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


@torch.inference_mode()
def bare_forward(model, images: torch.Tensor, normalize: Normalizer, batch_size: int) -> None:
    for batch in images.split(batch_size):
        model(normalize(batch))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", nargs="+", default=["resnet18", "efficientnet_b0", "convnext_atto"])
    p.add_argument("--images", type=int, default=2000, help="test images; val gets half as many")
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    from accelerate import Accelerator

    torch.manual_seed(0)
    accelerator = Accelerator()
    splits = {name: ImageSet(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8),
                             torch.randint(0, 10, (n,)))
              for name, n in (("val", args.images // 2), ("test", args.images))}
    normalize = Normalizer(args.img_size, IMAGENET_MEAN, IMAGENET_STD)
    bare_total = eval_total = 0.0
    members, probs = [], {"val": [], "test": []}
    for arch in args.archs:
        model = create_model(arch, 10).eval()
        meta = CheckpointMeta(arch=arch, level="bench", img_size=args.img_size, num_classes=10,
                              class_names=CLASSES, mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD),
                              seed=0, epoch=0, val_acc=0.0)
        member = Member(Path(f"{arch}/best.safetensors"), meta, args.img_size)
        bare_forward(model, splits["test"].images[: args.batch_size], normalize, args.batch_size)  # warm-up
        bare = sum(best_of(args.repeats, lambda s=s: bare_forward(
            model, splits[s].images, normalize, args.batch_size))[0] for s in splits)
        evaluated = 0.0
        for s in splits:
            seconds, out = best_of(args.repeats, lambda s=s: evaluate_member(
                accelerator, model, member, splits[s], 1, args.batch_size))
            evaluated += seconds
            probs[s].append(out)
        members.append(member)
        bare_total += bare
        eval_total += evaluated
        print(f"{arch:<18} bare forward {bare:7.2f} s | through evaluate {evaluated:7.2f} s "
              f"({evaluated / bare - 1:+.1%})")
    stacked = {s: torch.stack(v) for s, v in probs.items()}
    labels = {s: splits[s].labels for s in splits}
    votes_s, report = best_of(args.repeats, lambda: build_report(members, stacked, labels))
    table_s, _ = best_of(args.repeats, lambda: format_report(report, member_labels([m.path for m in members])))
    overhead = eval_total - bare_total + votes_s + table_s
    print(f"images: val {len(labels['val'])} + test {len(labels['test'])} at {args.img_size} px, "
          f"batch {args.batch_size}, {torch.get_num_threads()} threads, best of {args.repeats}")
    print(f"sum of bare forward passes {bare_total:.2f} s; evaluate bookkeeping "
          f"{eval_total - bare_total:+.3f} s; votes+report {votes_s:.3f} s; table {table_s:.4f} s")
    print(f"overhead ratio (ensemble - bare) / bare = {overhead / bare_total:.2%} "
          f"(votes and report alone: {(votes_s + table_s) / bare_total:.2%}); target < 10%")


if __name__ == "__main__":
    main()
