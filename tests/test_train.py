"""train.py end to end on the tiny fixture, as a user runs it."""
import json
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import ROOT, run_cli, train

LEVEL_ARCHS = {"1": "test_resnet", "2": "test_resnet", "3": "test_efficientnet", "4": "test_convnext"}


@pytest.mark.parametrize("level", sorted(LEVEL_ARCHS))
def test_every_level_learns_and_writes_checkpoints_and_results(tiny_cifar, tmp_path, level):
    arch = LEVEL_ARCHS[level]
    result = train(tiny_cifar, tmp_path, "--level", level, "--arch", arch,
                   "--epochs", "1", "4", "--lr", "1e-2", "3e-3")
    run = tmp_path / f"L{level}-{arch}-s42"
    results = json.loads((run / "results.json").read_text())
    assert results["best_val_acc"] > 0.5 and results["test_acc"] > 0.5  # chance is 0.1
    assert set(results["per_class_acc"]) >= {"airplane", "truck"}
    assert results["num_params"] > 0 and results["images_per_s"] > 0
    assert results["recipe"]["level"] == level and results["recipe"]["arch"] == arch
    for name in ("best", "last"):
        with safe_open(str(run / f"{name}.safetensors"), "pt") as f:
            meta = f.metadata()
        assert json.loads(meta["arch"]) == arch and json.loads(meta["img_size"]) == 32
        assert len(json.loads(meta["class_names"])) == 10
    assert "test accuracy" in result.stdout and "truck" in result.stdout
    if results["recipe"]["tta"] > 1:
        assert results["test_acc_tta"] is not None and "with TTA" in result.stdout
    if level in ("2", "4"):
        assert "dominant label" in result.stdout  # Mixup/CutMix training accuracy is named


def test_phase_one_leaves_backbone_and_batchnorm_statistics_untouched(tiny_cifar, tmp_path):
    from accelerate.utils import set_seed

    from cifar10_levels.models import create_model

    train(tiny_cifar, tmp_path, "--arch", "test_resnet", "--epochs", "2", "0", "--lr", "1e-2", "1e-2")
    after = load_file(str(tmp_path / "L1-test_resnet-s42" / "last.safetensors"))
    set_seed(42)  # the run's seed: the same initial weights
    before = create_model("test_resnet", 10).state_dict()
    head = {k for k in before if k.startswith("fc.")}
    assert any("running_mean" in k for k in before)
    for key, value in before.items():
        if key in head:
            assert not torch.equal(value, after[key]), "the head must train in phase 1"
        else:
            assert torch.equal(value, after[key]), f"{key} changed during the head-only phase"


def test_help_answers_without_importing_torch():
    code = ("import sys; from cifar10_levels.cli import train_parser; "
            "train_parser().format_help(); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "False"
    help_text = subprocess.run([sys.executable, str(ROOT / "train.py"), "--help"],
                               capture_output=True, text=True).stdout
    for flag in ("--level", "--arch", "--img-size", "--epochs", "--lr", "--batch-size",
                 "--weight-decay", "--seed", "--no-pretrained", "--pretrained-file", "--output-dir",
                 "--train-limit", "--eval-limit", "--resume", "--dataset"):
        assert flag in help_text


def test_pretrained_without_network_fails_fast_with_a_fix(tiny_cifar, tmp_path):
    result = run_cli("train.py", "--dataset", tiny_cifar, "--output-dir", tmp_path, "--arch",
                     "resnet18", "--img-size", "32", "--report-to", "none", timeout=60)
    assert result.returncode == 2
    assert "--no-pretrained" in result.stderr and "--pretrained-file" in result.stderr
    assert "Traceback" not in result.stderr
