"""Two checkouts of this repo, the same reference runs, side by side in one sitting: are the results
bit-identical, and is the speed within noise? For refactors that must not change behaviour.

    git worktree add /tmp/before <commit>
    python bench/same_results.py --before /tmp/before --after . --dataset DIR

DIR is CIFAR-10 in the HF Hub layout (`hf download uoft-cs/cifar10 --repo-type dataset --local-dir DIR`).
The runs alternate (before, after, before, after) so a machine that slows down hurts both sides alike.
With --rerun-config, the after side's run is run once more from its own config.yaml
(`train.py --config RUN/config.yaml`), a third column that must match too.
Each side's `train.py` imports the package from its own checkout (the script's folder comes first on
sys.path). The fast recipe runs with bf16 fixed, so the CPU precision probe cannot choose differently.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from measure import environment_header

REFERENCES = {
    "level 1, resnet18 32 px, 3 epochs": ["--level", "1", "--arch", "resnet18", "--img-size", "32",
                                          "--no-pretrained", "--epochs", "0", "3", "--lr", "1e-3", "1e-3",
                                          "--mixed-precision", "no"],
    "fast recipe, 1 epoch": ["--level", "fast", "--epochs", "1", "--mixed-precision", "bf16"],
}
COMPARED = ("test_acc", "test_loss", "test_nll", "test_acc_tta", "best_val_acc", "best_epoch", "per_class_acc")


def run(checkout: Path, args: list[str], dataset: str, out: Path) -> tuple[dict, float]:
    command = [sys.executable, str(checkout / "train.py"), *args, "--dataset", dataset,
               "--output-dir", str(out), "--report-to", "none", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    start = time.perf_counter()
    subprocess.run(command, cwd=checkout, env=env, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    results_file = next(out.glob("*/results.json"))
    results = json.loads(results_file.read_text())
    compared = {key: results.get(key) for key in COMPARED}
    compared["best weights sha256"] = tensors_sha256(results_file.parent / "best.safetensors")
    return compared, seconds


def tensors_sha256(path: Path) -> str:
    """The weights alone (the file's metadata holds the package version, which a refactor may bump)."""
    from safetensors.torch import load_file

    digest = hashlib.sha256()
    for name, tensor in sorted(load_file(path).items()):
        digest.update(name.encode())
        digest.update(tensor.contiguous().view(-1).view(torch_uint8()).numpy().tobytes())
    return digest.hexdigest()[:16]


def torch_uint8():
    import torch

    return torch.uint8


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="checkout of the old code")
    parser.add_argument("--after", type=Path, required=True, help="checkout of the new code")
    parser.add_argument("--dataset", required=True, help="CIFAR-10 in the HF Hub layout")
    parser.add_argument("--only", choices=sorted(REFERENCES), help="run one reference only")
    parser.add_argument("--train-limit", help="train on N images only (a quicker, smaller comparison)")
    parser.add_argument("--rerun-config", action="store_true",
                        help="also rerun the after side from its run's config.yaml")
    args = parser.parse_args()
    print(environment_header())
    rerun = " | after, from its config.yaml" if args.rerun_config else ""
    print(f"| reference | metric | before | after{rerun} | same |\n|---|---|---|---|---|"
          f"{'---|' if rerun else ''}")
    limit = ["--train-limit", args.train_limit] if args.train_limit else []
    all_same = True
    for name, flags in REFERENCES.items():
        if args.only and name != args.only:
            continue
        measured = {}
        with tempfile.TemporaryDirectory() as tmp:
            for side in ("before", "after"):
                measured[side] = run(getattr(args, side).resolve(), [*flags, *limit, "--seed", "42"],
                                     args.dataset, Path(tmp, side))
            if args.rerun_config:
                saved = next(Path(tmp, "after").glob("*/config.yaml"))
                measured["rerun"] = run(args.after.resolve(), ["--config", str(saved)], args.dataset,
                                        Path(tmp, "rerun"))
        sides = [measured[side] for side in ("before", "after", "rerun") if side in measured]
        for key in sides[0][0]:
            values = [side[0][key] for side in sides]
            same = all(v == values[0] for v in values)
            all_same &= same
            print(f"| {name} | {key} | {' | '.join(map(str, values))} | {'yes' if same else '**no**'} |")
        seconds = [side[1] for side in sides]
        print(f"| {name} | wall seconds | {' | '.join(f'{s:.1f}' for s in seconds)} | ratio after/before "
              f"{seconds[1] / seconds[0]:.3f} |")
    print("bit-identical" if all_same else "RESULTS DIFFER")
    return 0 if all_same else 1


if __name__ == "__main__":
    sys.exit(main())
