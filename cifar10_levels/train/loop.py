"""The training loop: one epoch of plain PyTorch, wrapped by Accelerate."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..data.augment import TrainAugment
from .distill import Teachers
from .ema import WeightEma
from ..runtime.precision import Amp
from .epoch_totals import EpochStats
from .step_hooks import StepHooks


def nonfinite_on_any_process(accelerator, loss: torch.Tensor) -> bool:
    """Every process skips together: one rank skipping DDP's backward would hang the others."""
    flag = torch.isfinite(loss.detach()).logical_not().float()
    return accelerator.reduce(flag, reduction="sum").item() > 0


def train_one_epoch(accelerator, model: nn.Module, optimizer, scheduler, loader,
                    augment: TrainAugment, mix: bool, loss_fn: Callable, amp: Amp,
                    hooks: StepHooks, clip_grad: float = 0.0, ema: WeightEma | None = None,
                    teachers: Teachers | None = None) -> EpochStats:
    """One pass over the (sharded) training loader: batch -> augment -> forward -> loss -> backward
    -> step -> log. `mix`: Mixup/CutMix on (then `loss_fn` takes soft targets). `clip_grad` (> 0) and
    `ema` act once per optimizer step, on the batch that ends an accumulation. `teachers`: their
    vote on the same augmented batch adds the distillation term to the loss."""
    loss = torch.zeros((), device=accelerator.device)  # an epoch resumed after its last batch has none left
    totals = hooks.start_epoch(len(loader))
    for images, labels in loader:
        with accelerator.accumulate(model):
            batch, targets = augment.pixels(images, labels, mix)
            with amp.autocast():
                logits = model(augment.resize(batch)).float()
            loss = loss_fn(logits, targets)
            if teachers is not None:
                loss = teachers.distilled(loss, logits, batch, images)
            # fp16's GradScaler skips non-finite steps by itself, so only the other precisions
            # pay a device sync to skip them (NaN gradients would ruin the weights)
            if amp.scaler is not None or not nonfinite_on_any_process(accelerator, loss):
                accelerator.backward(loss)
                if clip_grad and accelerator.sync_gradients:
                    amp.unscale_for_clipping(optimizer)
                    accelerator.clip_grad_norm_(model.parameters(), clip_grad)
                optimizer.step()
            # a skipped step still advances the schedule, which follows the batch count and ends with
            # the phase; after a scaler skip Accelerate holds it back only for optimizers without
            # fused scaling (the fast recipe's Muon/SGD): fused AdamW skips inside its kernel
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None and accelerator.sync_gradients:
                ema.update()
        totals.add(loss, logits, targets, labels.shape[0])
        hooks.after_step(loss, scheduler.get_last_lr()[0])
    hooks.end_epoch(loss)
    return totals.stats(accelerator)
