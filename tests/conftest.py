"""Shared fixtures: a tiny learnable CIFAR-10 look-alike in the Hub layout, and a way to run the CLIs."""
from __future__ import annotations

import atexit
import io
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# One colour per class: the class shows in the image, so tiny models learn it in an epoch or two.
PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240], [240, 50, 230], [128, 128, 0], [0, 0, 128]])

# Caches that default to ~ (datasets' Arrow files, W&B, matplotlib, ours) go to a temporary home, for
# this process and every command the tests start: the suite writes nothing outside temporary dirs.
TEST_HOME = Path(tempfile.mkdtemp(prefix="cifar10-levels-tests-home-"))
atexit.register(shutil.rmtree, TEST_HOME, ignore_errors=True)
os.environ["HOME"] = str(TEST_HOME)
for variable in ("HF_HOME", "HF_DATASETS_CACHE", "HF_HUB_CACHE", "XDG_CACHE_HOME", "MPLCONFIGDIR",
                 "WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
    os.environ.pop(variable, None)
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"


def make_images(labels: np.ndarray, rng: np.random.RandomState, size: int = 32) -> np.ndarray:
    """Class colour on a noisy background, with a bright square at a random place."""
    n = len(labels)
    images = rng.randint(0, 80, size=(n, size, size, 3))
    for i, c in enumerate(labels):
        images[i, 4:-4, 4:-4] = (PALETTE[c] * 0.8 + images[i, 4:-4, 4:-4] * 0.5).clip(0, 255)
        y, x = rng.randint(0, size - 8, 2)
        images[i, y:y + 6, x:x + 6] = 255
    return images.astype(np.uint8)


def write_split(path: Path, images: np.ndarray, labels: np.ndarray, mode: str = "RGB",
                names: list[str] = CLASS_NAMES, columns=("img", "label")) -> None:
    import datasets
    from PIL import Image

    pil = [Image.fromarray(im).convert(mode) for im in images]
    features = datasets.Features({columns[0]: datasets.Image(),
                                  columns[1]: datasets.ClassLabel(names=names)})
    ds = datasets.Dataset.from_dict({columns[0]: pil, columns[1]: labels.tolist()}, features=features)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(path))


def make_dataset(root: Path, n_train: int = 400, n_test: int = 100, seed: int = 0,
                 images=make_images) -> Path:
    """Train and test splits in the hub layout, `images(labels, rng)` drawing each split's pixels."""
    rng = np.random.RandomState(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = np.arange(n) % 10
        write_split(root / "plain_text" / f"{split}-00000-of-00001.parquet",
                    images(labels, rng), labels)
    return root


@pytest.fixture(scope="session")
def tiny_cifar(tmp_path_factory) -> Path:
    """400 train / 100 test images, hub layout (plain_text/*.parquet)."""
    return make_dataset(tmp_path_factory.mktemp("tiny_cifar"))


def make_structured_images(labels: np.ndarray, rng: np.random.RandomState, size: int = 32) -> np.ndarray:
    """Class = a spatial pattern, never a colour: horizontal or vertical stripes (period 4 or 8),
    checkerboards (cell 2 or 4), a disk, a ring, a plus or an X, at a random phase or place, in random
    foreground/background colours, with noise. Every pattern is its own mirror image, so flips keep
    the class; only spatial features tell the classes apart."""
    n = len(labels)
    yy, xx = np.mgrid[:size, :size]
    images = np.empty((n, size, size, 3))
    for i, c in enumerate(labels):
        oy, ox = rng.randint(0, 8, 2)
        cy, cx = rng.randint(10, size - 10, 2)
        dy, dx = yy - cy, xx - cx
        radius = np.hypot(dy, dx)
        mask = [((yy + oy) // 2) % 2, ((yy + oy) // 4) % 2, ((xx + ox) // 2) % 2, ((xx + ox) // 4) % 2,
                ((yy + oy) // 2 + (xx + ox) // 2) % 2, ((yy + oy) // 4 + (xx + ox) // 4) % 2,
                radius < 7, (radius > 5) & (radius < 8),
                ((abs(dy) < 2) | (abs(dx) < 2)) & (abs(dy) < 9) & (abs(dx) < 9),
                ((abs(dy - dx) < 2) | (abs(dy + dx) < 2)) & (abs(dy) < 8)][c].astype(float)[..., None]
        fg, bg = rng.randint(0, 256, 3), rng.randint(0, 256, 3)
        while np.abs(fg - bg).sum() < 150:  # the pattern must show
            fg, bg = rng.randint(0, 256, 3), rng.randint(0, 256, 3)
        images[i] = mask * fg + (1 - mask) * bg + rng.normal(0, 20, (size, size, 3))
    return images.clip(0, 255).astype(np.uint8)


def make_structured_dataset(root: Path, n_train: int = 500, n_test: int = 200, seed: int = 0) -> Path:
    return make_dataset(root, n_train, n_test, seed, images=make_structured_images)


@pytest.fixture(scope="session")
def structured_cifar(tmp_path_factory) -> Path:
    """500 train / 200 test images whose class is a spatial pattern in random colours (hub layout)."""
    return make_structured_dataset(tmp_path_factory.mktemp("structured_cifar"))


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("CIFAR10_LEVELS_CACHE", str(tmp_path_factory.getbasetemp() / "decode_cache"))


# fp32 unless a test says otherwise: the CPU precision probe (tests/test_precision_probe.py) would time
# each new model and batch shape once more
FP32 = ["--mixed-precision", "no"]
TINY_TRAIN = ["--no-pretrained", "--img-size", "32", "--batch-size", "32", "--no-progress",
              "--report-to", "none", *FP32]


def run_cli(script: str, *args: str, cwd: Path | None = None, env: dict | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
    """Run train.py / ensemble.py exactly as a user would."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


def train_in_process(argv: list[str]) -> subprocess.CompletedProcess:
    """train.py's own entry point (`train_main`) in this process, its output and exit code captured:
    the same code as the command without paying a new interpreter's imports (~4 s) on every run."""
    from accelerate.state import AcceleratorState, GradientState

    from cifar10_levels.cli.train import train_main

    stdout, stderr = io.StringIO(), io.StringIO()
    with redirect_stdout(stdout), redirect_stderr(stderr):
        try:
            code = train_main(argv)
        except SystemExit as exit_:  # argparse's usage errors
            code = exit_.code if isinstance(exit_.code, int) else 1
        finally:
            AcceleratorState._reset_state(True)
            GradientState._reset_state()
    return subprocess.CompletedProcess(["train.py", *argv], code, stdout.getvalue(), stderr.getvalue())


def train(dataset: Path, out: Path, *args: str, env: dict | None = None, check: bool = True,
          new_process: bool = False, probe_precision: bool = False) -> subprocess.CompletedProcess:
    """A tiny training run: in this process, or as the real command where the environment is part of
    the test (`env`) or `new_process` asks for it; `probe_precision`: no --mixed-precision, so the run
    measures its precision as a user's run on a CPU does."""
    tiny = [a for a in TINY_TRAIN if a not in FP32] if probe_precision else TINY_TRAIN
    argv = ["--dataset", dataset, "--output-dir", out, *tiny, *args]
    if env is None and not new_process:
        result = train_in_process([str(a) for a in argv])
    else:
        result = run_cli("train.py", *argv, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"train.py failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture
def accelerator():
    """A one-process Accelerator whose global state is cleared afterwards."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    yield Accelerator()
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
