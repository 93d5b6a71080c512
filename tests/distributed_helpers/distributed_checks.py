"""Test-only: the Trainer and evaluation.evaluate in 1, 2 or 3 real gloo processes on CPU.

    python distributed_checks.py DATASET OUT                                   # one process
    ACCELERATE_USE_CPU=1 torchrun --standalone --nproc_per_node N distributed_checks.py DATASET OUT

Writes OUT/eval-{N}.json (what evaluation.evaluate gathered on 1,001 samples) and, for the runs in RUNS
with N processes, OUT/{run}/L{level}-{arch}/last.safetensors.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from cifar10_levels.cli.train import parse_run_config  # noqa: E402
from cifar10_levels.recipes import Augment, Phase, Recipe  # noqa: E402

EVAL_SAMPLES = 1001
EVAL_BATCHES = (64, 100)          # 1,001 = 15 x 64 + 41 = 10 x 100 + 1: uneven in every world size
BATCH = 20                        # per process; the tiny fixture's 360 training images = 18 x 20
LR = 3e-3
NO_AUGMENT = Augment(crop_padding=0, flip=False, color_jitter=0.0)

# name: (processes, per-device batch, grad accumulation, lr, lr scaling); all should match "one".
RUNS = {
    "one": (1, 2 * BATCH, 1, LR, "none"),
    "two": (2, BATCH, 1, LR, "none"),
    "two_linear": (2, BATCH, 1, LR / 2, "linear"),
    "accum": (1, BATCH, 2, LR, "none"),
    "accum_linear": (1, BATCH, 2, LR / 2, "linear"),
}


def equivalence_recipe(batch_size: int, lr: float) -> Recipe:
    """LayerNorm model (no batch statistics), no augmentation, fp32: only the batch split differs."""
    return Recipe(level="dist", title="distributed equivalence", arch="test_convnext", img_size=32,
                  phases=(Phase("full", epochs=1, lr=lr, train_backbone=True),),
                  augment=NO_AUGMENT, batch_size=batch_size, pretrained=False, tta=0)


def train(dataset: str, out: str, batch_size: int, grad_accum: int, lr: float, scaling: str) -> None:
    from cifar10_levels.train.trainer import Trainer

    torch.set_num_threads(1)
    config = parse_run_config(["--output-dir", out, "--dataset", dataset, "--mixed-precision", "no",
                                  "--grad-accum", str(grad_accum), "--lr-scaling", scaling,
                                  "--report-to", "none", "--no-progress"]).config
    Trainer(dataclasses.replace(config, recipe=equivalence_recipe(batch_size, lr))).fit()


def evaluate_split(out: str) -> None:
    """evaluation.evaluate on 1,001 samples; the main process writes what it gathered."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from cifar10_levels.data.normalize import Normalizer
    from cifar10_levels.data.cifar10 import ImageSet, make_loader
    from cifar10_levels.evaluation.evaluate import evaluate
    from cifar10_levels.models.factory import create_model

    torch.set_num_threads(1)
    accelerator = Accelerator()
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (EVAL_SAMPLES, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (EVAL_SAMPLES,), generator=generator)
    set_seed(0)
    model = accelerator.prepare(create_model("test_resnet", 10))
    normalize = Normalizer(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    record = {"world_size": accelerator.num_processes}
    for batch in EVAL_BATCHES:
        loader = accelerator.prepare(make_loader(ImageSet(images, labels), batch, False, 0))
        result = evaluate(accelerator, model, loader, normalize)
        record[str(batch)] = {"count": len(result.labels), "acc": result.acc, "loss": result.loss,
                              "labels": result.labels.tolist(), "preds": result.preds.tolist(),
                              "probs": result.probs.tolist(),
                              "labels_in_order": bool(torch.equal(result.labels, labels))}
    if accelerator.is_main_process:
        Path(out, f"eval-{accelerator.num_processes}.json").write_text(json.dumps(record))
    accelerator.wait_for_everyone()


def main(dataset: str, out: str) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    evaluate_split(out)
    for name, (processes, batch, accum, lr, scaling) in RUNS.items():
        if processes == world:
            train(dataset, f"{out}/{name}", batch, accum, lr, scaling)


if __name__ == "__main__":
    main(*sys.argv[1:])
