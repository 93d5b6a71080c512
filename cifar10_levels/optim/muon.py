"""The fast recipe's optimizer: Muon for cifar_speednet's conv filters and Nesterov SGD for its biases
and head, as one torch optimizer (one state_dict, one scheduler)."""
from __future__ import annotations

import torch
from torch import nn
from torch.optim.sgd import sgd

# the models whose parts muon_with_sgd knows: models.speednet.VARIANTS (optim imports no other folder;
# tests/test_speednet.py checks the two agree)
MUON_ARCHS = ("cifar_speednet", "cifar_speednet_m", "cifar_speednet_s")
# SGD lrs per image of the batch as fractions of the Muon lr (the loss is a batch mean, so lr x batch
# size; --lr scales every group), and momenta.
BIAS_LR_PER_IMAGE = 0.053 / 0.24
HEAD_LR_PER_IMAGE = 0.67 / 0.24
SGD_MOMENTUM = 0.85
MUON_MOMENTUM = 0.6


def muon_with_sgd(model: nn.Module, lr: float, weight_decay: float, batch_size: int,
                  decay_biases: bool = True, whiten_bias_fraction: float = 1.0) -> MuonWithSGD:
    """Muon for cifar_speednet's conv filters; Nesterov SGD (lr per image x batch) for the whitening
    bias, the BatchNorm shifts and the head.

    weight_decay is the fraction of an SGD-trained weight decayed per step at full lr;
    decay_biases=False: none on the biases (the whitening bias and BatchNorm shifts).
    whiten_bias_fraction < 1: the whitening bias has a group of its own whose schedule ends (lr 0,
    the bias frozen) after that fraction of the phase's steps (the scheduler reads
    "schedule_fraction").
    """
    filters = [p for p in model.groups.parameters() if p.ndim == 4]
    norm_biases = [p for p in model.groups.parameters() if p.ndim == 1]
    biases = [([model.whiten_bias] + norm_biases, 1.0)] if whiten_bias_fraction >= 1 else \
        [([model.whiten_bias], whiten_bias_fraction), (norm_biases, 1.0)]
    groups = [dict(params=filters, lr=lr, muon=True, momentum=MUON_MOMENTUM, weight_decay=0.0)]
    for params, per_image, decay, fraction in (
            *((b, BIAS_LR_PER_IMAGE, decay_biases, f) for b, f in biases),
            (list(model.head.parameters()), HEAD_LR_PER_IMAGE, True, 1.0)):
        group_lr = lr * per_image * batch_size
        groups.append(dict(params=params, lr=group_lr, muon=False, momentum=SGD_MOMENTUM,
                           weight_decay=weight_decay / group_lr if decay else 0.0,
                           schedule_fraction=fraction))
    return MuonWithSGD(groups)


def orthogonalize(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Newton-Schulz iteration towards the nearest semi-orthogonal matrix (Muon's update).

    fp32: on CPUs without AMX bf16 matmuls of these small matrices measured slower.
    """
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.float()
    x = x / (x.norm() + eps)
    transposed = x.shape[0] > x.shape[1]
    if transposed:
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if transposed else x).to(g.dtype)


class MuonWithSGD(torch.optim.Optimizer):
    """One optimizer (one state_dict, one scheduler) with Muon groups and Nesterov SGD groups.

    Muon groups: weights renormalised to norm sqrt(out_channels), then an orthogonalised Nesterov
    momentum step. SGD groups: torch's Nesterov SGD with coupled weight decay.
    """

    def __init__(self, groups: list[dict]):
        super().__init__(groups, dict(lr=0.0, muon=False, momentum=0.0, weight_decay=0.0,
                                      schedule_fraction=1.0))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if group["muon"]:
                self._muon_step(params, group)
            elif params:
                bufs = [self.state[p].get("momentum_buffer") for p in params]
                sgd(params, [p.grad for p in params], bufs, weight_decay=group["weight_decay"],
                    momentum=group["momentum"], lr=group["lr"], dampening=0.0, nesterov=True,
                    maximize=False)
                for p, buf in zip(params, bufs):
                    self.state[p]["momentum_buffer"] = buf
        return loss

    def _muon_step(self, params: list[torch.Tensor], group: dict) -> None:
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p)
            buf = state["momentum_buffer"]
            buf.mul_(group["momentum"]).add_(p.grad)
            g = p.grad.add(buf, alpha=group["momentum"])
            p.mul_(p.shape[0] ** 0.5 / p.norm().clamp(min=1e-12))  # scale-free filters: fix the norm
            p.add_(orthogonalize(g.reshape(len(g), -1)).view_as(p), alpha=-group["lr"])
