"""Does bf16 pay on this CPU? fp32 vs bf16 for a matmul, a conv, and a cifar_speednet training step.

A CPU run without --mixed-precision times both on its own model (cifar10_levels/precision_probe.py);
this benchmark shows why, on the machine at hand, with kernels and a model step. Each row alternates fp32 and bf16
rounds and prints the median rate of each and the per-round ratio bf16 / fp32 (> 1: bf16 is faster).

    python bench/cpu_precision.py --repeats 5
"""
from __future__ import annotations

import argparse
import time
from typing import Callable

import torch
import torch.nn.functional as F

from measure import Spread, environment_header, interleave, ratio

import cifar10_levels.models.speednet  # noqa: F401  (registers cifar_speednet with timm)


def rate(work: float, step: Callable[[], None], calls: int = 3) -> Callable[[], float]:
    """work units per second of `step`, best of `calls` calls (after one warm-up call)."""
    step()

    def measure() -> float:
        best = float("inf")
        for _ in range(calls):
            start = time.perf_counter()
            step()
            best = min(best, time.perf_counter() - start)
        return work / best

    return measure


def matmul_gflops(dtype: torch.dtype, n: int = 2048) -> Callable[[], float]:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return rate(2 * n ** 3 / 1e9, lambda: a @ b)


def conv_gflops(dtype: torch.dtype, batch: int = 64, channels: int = 256, size: int = 16
                ) -> Callable[[], float]:
    """Forward + backward of a 3x3 conv as in the speednet's middle layers, channels_last."""
    x = torch.randn(batch, channels, size, size, dtype=dtype).to(memory_format=torch.channels_last)
    w = torch.randn(channels, channels, 3, 3, dtype=dtype).to(memory_format=torch.channels_last)
    x.requires_grad_(), w.requires_grad_()

    def step() -> None:
        F.conv2d(x, w, padding=1).sum().backward()

    return rate(3 * 2 * batch * channels * channels * 9 * size * size / 1e9, step)


def speednet_images(bf16: bool, batch: int = 500) -> Callable[[], float]:
    """Training images/s of cifar_speednet (forward, backward), channels_last, bf16 by autocast."""
    import timm

    model = timm.create_model("cifar_speednet", num_classes=10).to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, 32, 32).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()

    return rate(batch, step, calls=2)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds (fp32, bf16, ...)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the script, not the CPU")
    args = p.parse_args(argv)
    size, batch = (128, 8) if args.quick else (2048, 64)
    print(environment_header())
    print(f"AMX tiles: {torch.cpu._is_amx_tile_supported()}, oneDNN: {torch.backends.mkldnn.is_available()}, "
          f"ATen CPU capability: {torch.backends.cpu.get_cpu_capability()}\n")
    dtype = (lambda bf16: torch.bfloat16 if bf16 else torch.float32)
    rows = [(f"matmul {size}x{size}", "GFLOP/s", lambda bf16: matmul_gflops(dtype(bf16), size)),
            (f"conv 3x3 256->256 at 16 px, batch {batch}, fwd+bwd", "GFLOP/s",
             lambda bf16: conv_gflops(dtype(bf16), batch)),
            (f"cifar_speednet training step, batch {batch * 8}", "img/s",
             lambda bf16: speednet_images(bf16, batch * 8))]
    print("| work | unit | fp32 | bf16 | bf16 / fp32 |")
    print("|---|---|---|---|---|")
    for name, unit, make in rows:
        result: dict[str, Spread] = interleave({"fp32": make(False), "bf16": make(True)}, args.repeats)
        print(f"| {name} | {unit} | {result['fp32'].format(0)} | {result['bf16'].format(0)} | "
              f"{ratio(result['bf16'], result['fp32']).format(2)} |", flush=True)


if __name__ == "__main__":
    main()
