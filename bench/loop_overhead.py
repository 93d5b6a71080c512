"""Training images/s of our full loop against a bare PyTorch loop, same model, batch and precision.

Ours is the real path: a Trainer built from the same flags as train.py, timing loop.train_one_epoch
(DataLoader of uint8 batches, the level's augmentation, Accelerate, non-finite checks, metrics,
logging). The bare loop is forward + backward + optimizer step over pre-loaded, already normalized
tensors at the recipe size, with the same optimizer, loss and autocast. Rounds alternate bare, ours,
bare, ours...; the ratio is ours / bare per round (1.0 = no overhead).

    python bench/loop_overhead.py --arch resnet18 --img-size 32 --level 1
    python bench/loop_overhead.py --arch test_resnet --img-size 32 --level 2

Any train.py flag works (--batch-size, --mixed-precision, --channels-last, --compile ...). Defaults
added here: --no-pretrained --report-to none --no-progress --train-limit 1024. Give your local copy with
--dataset DIR, as for train.py (without it, the Hugging Face Hub or its cache).
"""
from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from measure import CpuClock, Spread, environment_header, interleave, ratio

from cifar10_levels.cli.train import parse_run_config
from cifar10_levels.optim.factory import build_optimizer
from cifar10_levels.models.factory import set_train_mode
from cifar10_levels.recipes import Phase
from cifar10_levels.train.trainer import Trainer

BENCH_DEFAULTS = ["--no-pretrained", "--report-to", "none", "--no-progress", "--train-limit", "1024"]


def build_trainer(train_argv: list[str], output_dir: Path) -> Trainer:
    config = parse_run_config(BENCH_DEFAULTS + train_argv + ["--output-dir", str(output_dir)]).config
    return Trainer(config)


def timed_epoch_of_ours(trainer: Trainer, phase: Phase):
    """One call of the real train_one_epoch (through Trainer.train_epoch) on the prepared loader;
    returns (images, seconds)."""
    epochs = iter(range(10**9))

    def run() -> tuple[int, float]:
        set_train_mode(trainer.model, phase.train_backbone)
        trainer.prepared_train.set_epoch(next(epochs))
        trainer.state.step = 0
        start = time.perf_counter()
        stats = trainer.train_epoch(phase, trainer.prepared_train)
        return stats.images, time.perf_counter() - start

    return run


class TimedAugment:
    """Wraps the trainer's augmentation and adds up the wall time spent in it (inside the loop)."""

    def __init__(self, augment):
        self.augment = augment
        self.seconds, self.calls = 0.0, 0

    def pixels(self, images, labels, mix):
        start = time.perf_counter()
        out = self.augment.pixels(images, labels, mix)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out

    def resize(self, batch):
        start = time.perf_counter()
        out = self.augment.resize(batch)
        self.seconds += time.perf_counter() - start
        return out

    def isolated_ms(self, trainer: Trainer, mix: bool, batches: int) -> float:
        """The same calls on their own, back to back: ms per batch."""
        images, labels = trainer.data.train.images, trainer.data.train.labels
        size = trainer.recipe.batch_size
        self.augment(images[:size], labels[:size], mix)  # warm-up: first-touch of the output buffers
        start = time.perf_counter()
        for i in range(batches):
            self.augment(images[i * size:(i + 1) * size], labels[i * size:(i + 1) * size], mix)
        return (time.perf_counter() - start) / batches * 1e3


class FixedBatch:
    """Stands in for the level's augmentation: the same pre-normalized batch every step, so a round
    times the loop's own machinery (DataLoader, Accelerate, metrics, checks) without the augmentation."""

    def __init__(self, trainer: Trainer):
        with torch.no_grad():
            self.batch = trainer.normalize(trainer.data.train.images[:trainer.recipe.batch_size])
        self.num_classes = len(trainer.data.class_names)

    def pixels(self, images, labels, mix):
        # a mixing phase's loss takes soft targets, as Mixup/CutMix would give it
        return self.batch, nn.functional.one_hot(labels, self.num_classes).float() if mix else labels

    def resize(self, batch):
        return batch


def timed_epoch_of_bare_loop(trainer: Trainer, phase: Phase, batches: int):
    """Forward + backward + step over pre-normalized tensors: what a hand-written loop costs."""
    recipe = trainer.recipe
    model = copy.deepcopy(trainer.base_model)
    optimizer = build_optimizer(model, recipe, phase.lr)
    if trainer.config.compile:
        model = torch.compile(model)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    images, labels = trainer.data.train.images, trainer.data.train.labels
    size = recipe.batch_size
    with torch.no_grad():
        data = [(trainer.normalize(images[i:i + size]), labels[i:i + size])
                for i in range(0, batches * size, size)]
    precision = trainer.accelerator.mixed_precision
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    device = trainer.accelerator.device
    data = [(x.to(device), y.to(device)) for x, y in data]
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    def run() -> tuple[int, float]:
        set_train_mode(model, phase.train_backbone)
        start = time.perf_counter()
        for x, y in data:
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = model(x)
            loss = loss_fn(logits.float(), y)
            if scaler is None:
                loss.backward()
                optimizer.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return len(data) * size, time.perf_counter() - start

    return run


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="other flags: train.py's")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds (bare, ours, ...)")
    p.add_argument("--phase", type=int, help="phase index to time (default: the last, all layers)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    p.add_argument("--no-augment", action="store_true",
                   help="ours without the augmentation (a fixed pre-normalized batch): the loop alone")
    args, train_argv = p.parse_known_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    print(environment_header())
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(train_argv, Path(tmp))
        recipe = trainer.recipe
        index = len(recipe.phases) - 1 if args.phase is None else args.phase
        phase = recipe.phases[index]
        trainer.prepare_phase(index, phase)
        timed = None
        if args.no_augment:
            trainer.augment = FixedBatch(trainer)
        else:
            trainer.augment = timed = TimedAugment(trainer.augment)
        batches = len(trainer.prepared_train)
        print(f"recipe: level {recipe.level}, {recipe.arch} at {recipe.img_size} px, batch "
              f"{recipe.batch_size}, phase '{phase.name}' (mix={phase.mix}), precision "
              f"{trainer.accelerator.mixed_precision}, {batches} batches "
              f"({batches * recipe.batch_size} images) per measurement, data {trainer.data.source}"
              f"{'; ours WITHOUT augmentation (--no-augment)' if args.no_augment else ''}")
        clocks = {"bare": CpuClock(), "ours": CpuClock()}
        candidates = {"bare": clocks["bare"].timed(timed_epoch_of_bare_loop(trainer, phase, batches)),
                      "ours": clocks["ours"].timed(timed_epoch_of_ours(trainer, phase))}
        for warm_up in candidates.values():
            warm_up()
        for clock in clocks.values():
            clock.rates.clear()
        if timed is not None:
            timed.seconds, timed.calls = 0.0, 0
        result: dict[str, Spread] = interleave(candidates, args.repeats)
        cpu = {name: Spread(clock.rates) for name, clock in clocks.items()}
        if timed is not None:
            in_loop = timed.seconds / max(timed.calls, 1) * 1e3
            alone = timed.isolated_ms(trainer, phase.mix, batches)
    print(f"\nimages/s, median (min-max) of {args.repeats} interleaved rounds\n")
    print("| level | arch | size | batch | precision | bare loop img/s | our loop img/s | ours / bare "
          "| ours / bare, per CPU-second |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {recipe.level} | {recipe.arch} | {recipe.img_size} | {recipe.batch_size} | "
          f"{trainer.accelerator.mixed_precision} | {result['bare'].format(1)} | "
          f"{result['ours'].format(1)} | {ratio(result['ours'], result['bare']).format(3)} | "
          f"{ratio(cpu['ours'], cpu['bare']).format(3)} |")
    if timed is not None:
        step_ms = recipe.batch_size / result["ours"].median * 1e3
        print(f"\nours' augmentation: {in_loop:.3f} ms per batch inside the loop ({in_loop / step_ms:.1%} of "
              f"its {step_ms:.1f} ms step), {alone:.3f} ms per batch run alone")


if __name__ == "__main__":
    main()
