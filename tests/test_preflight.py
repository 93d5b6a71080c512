"""Preflight: what can be checked without training is checked before any image is decoded or the
model is built, and every problem is reported at once, one line each naming the flag and the fix."""
from __future__ import annotations

import pytest
import shutil
from pathlib import Path

from timm.models import get_pretrained_cfg

from cifar10_levels.data.cifar10 import load_cifar10
from cifar10_levels.data.checks import dataset_problem

from helpers.commands import run_cli

README_CONFIGS = """---
configs:
- config_name: plain_text
  data_files:
  - split: train
    path: plain_text/train-*
  - split: test
    path: plain_text/test-*
  default: true
---
"""


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


@pytest.mark.slow
def test_two_problems_offline_are_reported_together_and_nothing_is_written(tmp_path):
    home, cache, out = tmp_path / "home", tmp_path / "decode_cache", tmp_path / "out"
    home.mkdir()
    result = run_cli("train.py", "--level", "1", "--arch", "test_resnet", "--output-dir", out,
                     "--report-to", "none", "--no-progress", cwd=tmp_path,
                     env={"HOME": str(home), "CIFAR10_LEVELS_CACHE": str(cache),
                          "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    assert result.returncode == 2, result.stdout + result.stderr
    err = result.stderr
    assert "Traceback" not in err and "ConnectionError" not in err
    assert err.startswith("error: 2 problems")
    dataset, weights = (next(line for line in err.splitlines() if line.strip().startswith(flag))
                        for flag in ("--dataset", "--pretrained-file"))
    assert "offline mode is set" in dataset and "set HF_DATASETS_OFFLINE" not in dataset
    assert "hf download uoft-cs/cifar10 --repo-type dataset --local-dir DIR" in dataset
    assert "--dataset DIR" in dataset
    hub_id = get_pretrained_cfg("test_resnet").hf_hub_id
    assert f"hf download {hub_id} model.safetensors --local-dir DIR" in weights
    assert "--pretrained-file DIR/model.safetensors" in weights and "--no-pretrained" in weights
    assert not out.exists() and not cache.exists()
    assert files_under(home) == []


def test_the_hf_download_layout_is_what_the_loader_reads(tiny_cifar, tmp_path):
    """`hf download uoft-cs/cifar10 --repo-type dataset --local-dir DIR` gives README.md (whose
    `configs` name the split files) and plain_text/*.parquet."""
    copy = tmp_path / "cifar10"
    shutil.copytree(tiny_cifar / "plain_text", copy / "plain_text")
    (copy / "README.md").write_text(README_CONFIGS)
    assert dataset_problem(str(copy), hub_up=False) is None
    data = load_cifar10(str(copy))
    assert (len(data.train), len(data.test)) == (360, 100)


def test_layout_problems_name_what_is_missing(tiny_cifar, tmp_path):
    only_test = tmp_path / "only_test" / "plain_text"
    only_test.mkdir(parents=True)
    shutil.copy(tiny_cifar / "plain_text" / "test-00000-of-00001.parquet", only_test)
    message = dataset_problem(str(only_test.parent), hub_up=False)
    assert "no 'train' split files" in message and "hf download" in message
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no dataset files found" in dataset_problem(str(empty), hub_up=False)


def fake_hub_cache(root: Path, folder: str, filename: str) -> None:
    """huggingface_hub's cache layout: refs/main names the snapshot that holds the file."""
    (root / folder / "refs").mkdir(parents=True)
    (root / folder / "refs" / "main").write_text("0" * 40)
    snapshot = root / folder / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / filename).write_bytes(b"cached")


def test_cached_weights_and_dataset_pass_offline(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from cifar10_levels.models.pretrained import pretrained_weights_problem

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    assert "hf download" in pretrained_weights_problem("test_resnet", hub_up=False)
    assert "hf download" in dataset_problem(None, hub_up=False)
    hub_id = get_pretrained_cfg("test_resnet").hf_hub_id
    fake_hub_cache(tmp_path, "models--" + hub_id.replace("/", "--"), "model.safetensors")
    fake_hub_cache(tmp_path, "datasets--uoft-cs--cifar10", "README.md")
    assert pretrained_weights_problem("test_resnet", hub_up=False) is None
    assert dataset_problem(None, hub_up=False) is None
    assert pretrained_weights_problem("test_resnet", hub_up=True) is None
