"""Levers on the fast recipe's training step on this CPU, as ratios against the plain step run in the
same rounds: smaller training images (progressive resizing), weight gradients of the small convs as
shifted matmuls, narrower conv groups, fewer Newton-Schulz iterations in Muon, and torch.compile.

    python bench/fast_step_levers.py --repeats 5            # add --compile for torch.compile (~1 min)

Every candidate is one cifar_speednet training step (forward, backward, the fast recipe's optimizer) at
batch 500 in bf16 autocast and channels_last, on random images. The rounds alternate the candidates; each
prints its median step time and the per-round ratio baseline / candidate (> 1: the lever is faster).
`shifted weight grad` computes the weight gradient of every 3x3 conv whose input is at most
--shifted-max-px wide as 9 matmuls of the output gradient with shifted views of the input, instead of
oneDNN's kernel (an experiment: train.py does not use it). `N Newton-Schulz iterations` runs Muon's
orthogonalization with N iterations instead of the recipe's 5 (airbench94_muon uses 3).
"""
from __future__ import annotations

import argparse
import copy
import functools
import time
from typing import Callable

import torch
import torch.nn.functional as F

from measure import environment_header, interleave, ratio

import cifar10_levels.models.speednet as speednet
import cifar10_levels.optim.muon as muon
from cifar10_levels.optim.factory import build_optimizer
from cifar10_levels.recipes import LEVELS


class ShiftedWeightGradConv(torch.autograd.Function):
    """3x3 'same' conv; backward: input grad by aten, weight grad as 9 shifted matmuls (channels_last)."""

    @staticmethod
    def forward(ctx, x, weight):
        ctx.save_for_backward(x, weight)
        return F.conv2d(x, weight, padding=1)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_input = torch.ops.aten.convolution_backward(
            grad, x, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [True, False, False])[0]
        n, cin, h, w = x.shape
        padded = F.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1)
        flat_grad = grad.permute(0, 2, 3, 1).reshape(-1, weight.shape[0]).t()
        grad_weight = torch.empty_like(weight)
        for kh in range(3):
            for kw in range(3):
                grad_weight[:, :, kh, kw] = flat_grad @ padded[:, kh:kh + h, kw:kw + w, :].reshape(-1, cin)
        return grad_input, grad_weight


def shifted_forward(max_px: int) -> Callable:
    def forward(self, x):
        if x.shape[-1] > max_px:
            return torch.nn.Conv2d.forward(self, x)
        weight = self.weight.to(torch.get_autocast_dtype("cpu")) if torch.is_autocast_enabled("cpu") \
            else self.weight
        with torch.autocast("cpu", enabled=False):
            return ShiftedWeightGradConv.apply(x.to(weight.dtype), weight)
    return forward


ORTHOGONALIZE = muon.orthogonalize


def make_step(base, batch: int, px: int, conv_forward: Callable, compiled: bool = False,
              ns_steps: int = 5):
    """A step function of its own copy of the model and optimizer; returns (step, first step seconds)."""
    model = copy.deepcopy(base)
    optimizer = build_optimizer(model, LEVELS["fast"], LEVELS["fast"].phases[0].lr)
    forward = torch.compile(model) if compiled else model
    images = torch.randn(batch, 3, px, px).to(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch,))

    def step() -> float:
        speednet.IdentityConv.forward = conv_forward
        muon.orthogonalize = functools.partial(ORTHOGONALIZE, steps=ns_steps)
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = forward(images)
        F.cross_entropy(logits.float(), labels, label_smoothing=0.2).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    first = step()
    step()
    return step, first


def initialised_net(widths: tuple[int, ...], batch: int):
    torch.manual_seed(0)
    net = speednet.cifar_speednet(num_classes=10, widths=tuple(widths))
    net.init_from_data(torch.randint(0, 256, (max(batch, 64), 3, 32, 32), dtype=torch.uint8))
    return net.to(memory_format=torch.channels_last)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--repeats", type=int, default=5, help="rounds (each times every candidate once)")
    p.add_argument("--sizes", type=int, nargs="*", default=[28, 24], help="smaller training sizes (px)")
    p.add_argument("--widths", nargs="*", default=["64,192,192", "48,160,160"],
                   help="narrower conv-group widths to time, each as A,B,C (the recipe's: 64,256,256)")
    p.add_argument("--shifted-max-px", type=int, default=7)
    p.add_argument("--ns-steps", type=int, nargs="*", default=[3],
                   help="Newton-Schulz iterations in Muon to time (the recipe's: 5)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (compile time shown apart)")
    args = p.parse_args()
    print(environment_header())
    base = initialised_net(speednet.WIDTHS, args.batch)
    plain_forward = speednet.IdentityConv.forward
    candidates, notes = {}, {}
    candidates["baseline: 32 px, oneDNN"], _ = make_step(base, args.batch, 32, plain_forward)
    for px in args.sizes:
        candidates[f"{px} px training images"], _ = make_step(base, args.batch, px, plain_forward)
    for spec in args.widths:
        widths = tuple(int(w) for w in spec.split(","))
        candidates[f"widths {'/'.join(map(str, widths))}"], _ = make_step(
            initialised_net(widths, args.batch), args.batch, 32, plain_forward)
    candidates[f"shifted weight grad (convs at <= {args.shifted_max_px} px)"], _ = make_step(
        base, args.batch, 32, shifted_forward(args.shifted_max_px))
    for steps in args.ns_steps:
        candidates[f"{steps} Newton-Schulz iterations"], _ = make_step(
            base, args.batch, 32, plain_forward, ns_steps=steps)
    if args.compile:
        name = "torch.compile (inductor)"
        candidates[name], first = make_step(base, args.batch, 32, plain_forward, compiled=True)
        notes[name] = f"first step {first:.0f} s (compiling)"
    print(f"\ncifar_speednet training step, batch {args.batch}, bf16 autocast, channels_last; "
          f"{args.repeats} rounds\n")
    spreads = interleave(candidates, args.repeats)
    baseline = spreads["baseline: 32 px, oneDNN"]
    print("| candidate | step seconds, median (range) | speed ratio baseline / candidate, median (range) | note |")
    print("|---|---|---|---|")
    for name, spread in spreads.items():
        print(f"| {name} | {spread.format(3)} | {ratio(baseline, spread).format(3)} | {notes.get(name, '')} |")


if __name__ == "__main__":
    main()
