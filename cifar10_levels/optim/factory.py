"""The optimizer and learning-rate schedule of a phase."""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from ..recipes import Recipe


def scaled_lr(lr: float, recipe: Recipe, global_batch: int, scaling: str) -> float:
    return lr * global_batch / recipe.batch_size if scaling == "linear" else lr


def build_optimizer(model: nn.Module, recipe: Recipe, lr: float) -> torch.optim.Optimizer:
    """The recipe's optimizer. "fast": Muon with SGD (muon.py). "adamw": AdamW over the trainable
    parameters; without `decay_norm_bias`, timm's two groups (no decay on 1-d parameters: norm
    weights, biases; nor on the model's own no_weight_decay() names)."""
    if recipe.optimizer == "fast":
        from .muon import muon_with_sgd

        return muon_with_sgd(model, lr, recipe.weight_decay, recipe.batch_size,
                             decay_biases=recipe.decay_norm_bias,
                             whiten_bias_fraction=recipe.whiten_bias_fraction)
    if recipe.decay_norm_bias:
        params = [p for p in model.parameters() if p.requires_grad]
    else:
        from timm.optim import param_groups_weight_decay

        skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
        params = param_groups_weight_decay(model, recipe.weight_decay, no_weight_decay_list=skip)
    # fused: one kernel for every tensor; on a CPU ~4x faster than the per-tensor default
    # (bench/step_costs.py), on CUDA the fastest too; same update rule
    return torch.optim.AdamW(params, lr=lr, weight_decay=recipe.weight_decay, fused=True)


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe, total_steps: int | Callable[[], int],
                    steps_per_epoch: float):
    """Per-step cosine (or linear) decay within a phase, after a linear warmup of the recipe's
    `warmup_epochs` (in the scheduler's steps, `steps_per_epoch` of them an epoch). A parameter group
    with "schedule_fraction" f < 1 runs the same schedule over the first f of the steps, then lr 0.
    `total_steps` may be a function, read at every step: a --time-budget run that re-plans its steps
    (behind or well ahead of its pace) changes it, and the schedule then ends with the new plan."""
    total = total_steps if callable(total_steps) else (lambda: total_steps)
    warmup = min(round(recipe.warmup_epochs * steps_per_epoch), max(total() - 1, 0))

    def schedule(fraction: float):
        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            steps = max(round(fraction * total()), warmup + 1) if fraction < 1 else total()
            t = min((step - warmup) / max(steps - warmup, 1), 1.0)
            return 0.5 * (1 + math.cos(math.pi * t)) if recipe.schedule == "cosine" else 1 - t
        return factor

    fractions = [group.get("schedule_fraction", 1.0) for group in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, [schedule(f) for f in fractions])
