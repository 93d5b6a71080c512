"""Fixtures: a temporary home for every cache, a seeded random state for every test, the tiny data
sets (tests/helpers/data.py) and a one-process Accelerator."""
from __future__ import annotations

import atexit
import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from helpers.data import make_dataset, make_structured_dataset
from helpers.slurm import missing_reason as slurm_missing_reason, start_cluster as start_slurm_cluster

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

SEED = 0


@pytest.fixture(autouse=True)
def seeded():
    """Every test starts from the same random state, whatever ran before it: a draw is the same
    draw on every run, alone or in the suite."""
    import torch

    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)


@pytest.fixture(scope="session")
def tiny_cifar(tmp_path_factory) -> Path:
    """400 train / 100 test images, hub layout (plain_text/*.parquet)."""
    return make_dataset(tmp_path_factory.mktemp("tiny_cifar"))


@pytest.fixture(scope="session")
def structured_cifar(tmp_path_factory) -> Path:
    """500 train / 200 test images whose class is a spatial pattern in random colours (hub layout)."""
    return make_structured_dataset(tmp_path_factory.mktemp("structured_cifar"))


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("CIFAR10_LEVELS_CACHE", str(tmp_path_factory.getbasetemp() / "decode_cache"))


@pytest.fixture
def accelerator():
    """A one-process Accelerator whose global state is cleared afterwards."""
    from accelerate import Accelerator

    from helpers.commands import reset_accelerate

    yield Accelerator()
    reset_accelerate()


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A two-node Slurm cluster on localhost, for the whole session."""
    reason = slurm_missing_reason()
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"Slurm tests cannot run: {reason}; CI must run them (.ci/run installs "
                        "slurm-wlm and munge)")
        pytest.skip(f"Slurm tests skipped: {reason}")
    yield from start_slurm_cluster(tmp_path_factory.mktemp("slurm"))
