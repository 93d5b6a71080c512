"""The training loop on its own: train_one_epoch takes its parts as arguments (no Trainer), steps the
optimizer and schedule once per batch, skips non-finite losses and stops with Diverged."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from cifar10_levels.train.loop import train_one_epoch
from cifar10_levels.runtime.precision import Amp
from cifar10_levels.recipes import Augment, get_recipe
from cifar10_levels.train.step_hooks import Diverged, StepHooks, StopFlag
from cifar10_levels.checkpoint.train_state import TrainState
from cifar10_levels.cli.train import parse_run_config

BATCHES, BATCH = 6, 8


def parts(accelerator, tmp_path, poison: bool = False, max_nonfinite: int = 20):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    images = torch.randint(0, 256, (BATCHES * BATCH, 3, 4, 4), dtype=torch.uint8)
    labels = torch.randint(0, 10, (BATCHES * BATCH,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=BATCH)

    class Augment:  # TrainAugment's two steps, the loop's whole use of it
        def pixels(self, x, y, mix):
            x = x.float() / 255
            return (x * float("nan") if poison else x), y

        def resize(self, x):
            return x

    augment = Augment()

    logged = []
    config = parse_run_config(["--output-dir", str(tmp_path), "--no-progress",
                                  "--max-nonfinite", str(max_nonfinite)]).config
    hooks = StepHooks(accelerator, config, check_every_step=True, stop=StopFlag(accelerator),
                      log_step=lambda metrics, step: logged.append(step), warn_if_slow=lambda s: None,
                      save_state=lambda: None)
    hooks.count_from("full", TrainState())
    return model, optimizer, scheduler, loader, augment, hooks


def test_one_epoch_from_explicit_parts_steps_once_per_batch(accelerator, tmp_path):
    model, optimizer, scheduler, loader, augment, hooks = parts(accelerator, tmp_path)
    before = [p.detach().clone() for p in model.parameters()]
    stats = train_one_epoch(accelerator, model, optimizer, scheduler, loader, augment, False,
                            nn.CrossEntropyLoss(), Amp("no", None), hooks)
    assert stats.images == BATCHES * BATCH and 0 <= stats.acc <= 1 and stats.loss > 0
    assert hooks.step == hooks.global_step == BATCHES and scheduler.last_epoch == BATCHES
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_nonfinite_losses_skip_the_step_and_stop_with_diverged(accelerator, tmp_path):
    model, optimizer, scheduler, loader, augment, hooks = parts(accelerator, tmp_path, poison=True,
                                                                       max_nonfinite=4)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(Diverged, match=r"non-finite \(nan\) for 4 steps in a row, up to step 4 in phase "
                                       r"'full'; no checkpoint saved yet"):
        train_one_epoch(accelerator, model, optimizer, scheduler, loader, augment, False,
                        nn.CrossEntropyLoss(), Amp("no", None), hooks)
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters()))  # every step skipped
    assert scheduler.last_epoch == 4  # the schedule still follows the batch count


def test_one_rule_says_which_phases_mix():
    level2 = get_recipe("2")
    assert [level2.mixes(p) for p in level2.phases] == [False, True]
    no_alpha = level2.with_overrides(augment=Augment(mixup_alpha=0.0, cutmix_alpha=0.0))
    assert not any(no_alpha.mixes(p) for p in no_alpha.phases)
    cutmix_only = level2.with_overrides(augment=Augment(cutmix_alpha=1.0))
    assert cutmix_only.mixes(cutmix_only.phases[1])
