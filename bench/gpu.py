"""GPU training images/s of levels 1-4 (train.py's default precision, channels_last, with and
without --compile) against a bare loop on the same GPU, with peak GPU memory. Every row names the GPU it was measured on.

    python bench/gpu.py --dataset DIR           # levels 1-4, DIR: your local CIFAR-10 copy
    python bench/gpu.py --level 2 --no-compile-variant

Where CUDA is not available it says so and exits 0: a CPU figure is never reported as a GPU one.
"""
from __future__ import annotations

import argparse
import gc
import tempfile
from pathlib import Path

import torch

from measure import Spread, environment_header, gpu_name, interleave, ratio

GPU_LEVELS = ("1", "2", "3", "4")


def measure(level: str, compile_model: bool, extra: list[str], repeats: int) -> dict:
    from loop_overhead import build_trainer, timed_epoch_of_bare_loop, timed_epoch_of_ours

    flags = ["--level", level, "--channels-last", *extra]  # precision: train.py's default or --mixed-precision
    if compile_model:
        flags.append("--compile")
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(flags, Path(tmp))
        index = len(trainer.recipe.phases) - 1
        phase = trainer.recipe.phases[index]
        trainer.prepare_phase(index, phase)
        runs = {"bare": timed_epoch_of_bare_loop(trainer, phase, len(trainer.prepared_train)),
                "ours": timed_epoch_of_ours(trainer, phase)}
        peaks = {name: 0 for name in runs}

        def with_peak(name):
            def run() -> float:
                torch.cuda.reset_peak_memory_stats()
                images, seconds = runs[name]()
                speed = images / seconds
                peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated())
                return speed
            return run

        for warm_up in runs.values():
            warm_up()  # compiles, autotunes, fills the caching allocator
        result: dict[str, Spread] = interleave({n: with_peak(n) for n in runs}, repeats)
        recipe = trainer.recipe
        row = {"level": level, "arch": recipe.arch, "size": recipe.img_size, "batch": recipe.batch_size,
               "compile": compile_model, "result": result, "peaks": peaks}
        del trainer, runs
    gc.collect()
    torch.cuda.empty_cache()
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="other flags: train.py's")
    p.add_argument("--level", nargs="+", default=list(GPU_LEVELS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-compile-variant", action="store_true", help="skip the --compile rows")
    args, extra = p.parse_known_args(argv)
    if not torch.cuda.is_available():
        print("no GPU found (torch.cuda.is_available() is False): no GPU numbers measured; "
              "run this on a machine with CUDA")
        return 0
    if not any(flag.startswith("--train-limit") for flag in extra):
        extra += ["--train-limit", "5120"]
    gpu = gpu_name()
    print(environment_header())
    from cifar10_levels.runtime.precision import default_precision
    from cifar10_levels.recipes import get_recipe
    print(f"\nimages/s, median (min-max) of {args.repeats} interleaved rounds; precision "
          f"{default_precision(get_recipe('1'))} unless --mixed-precision is given, channels_last; "
          "peak = torch.cuda.max_memory_allocated\n")
    print("| GPU | level | arch | size | batch | compile | bare img/s | ours img/s | ours / bare | "
          "peak GiB bare | peak GiB ours |")
    print("|---" * 11 + "|")
    variants = (False,) if args.no_compile_variant else (False, True)
    for level in args.level:
        for compile_model in variants:
            row = measure(level, compile_model, extra, args.repeats)
            res, peaks = row["result"], row["peaks"]
            print(f"| {gpu} | {row['level']} | {row['arch']} | {row['size']} | {row['batch']} | "
                  f"{'yes' if row['compile'] else 'no'} | {res['bare'].format()} | {res['ours'].format()} | "
                  f"{ratio(res['ours'], res['bare']).format(3)} | {peaks['bare'] / 2**30:.2f} | "
                  f"{peaks['ours'] / 2**30:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
