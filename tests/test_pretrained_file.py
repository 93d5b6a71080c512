"""A checkpoint of ours starts a new run through --pretrained-file, cifar_speednet included."""
import pytest
import torch
from safetensors.torch import load_file

from helpers.commands import train
from helpers.runs import trained_run

pytestmark = pytest.mark.slow  # whole training runs, in this process or started as commands

# two steps of 32 images: what phase 1 freezes and what the start loads show after any training
TRAIN_LIMIT = 64
FEW_STEPS = ["--train-limit", str(TRAIN_LIMIT), "--eval-limit", "20"]


def test_resnet_checkpoint_as_pretrained_file(tiny_cifar, tmp_path_factory, tmp_path):
    source = trained_run("resnet", tiny_cifar, tmp_path_factory) / "best.safetensors"
    train(tiny_cifar, tmp_path, "--arch", "test_resnet", "--img-size", "48", "--pretrained-file",
          source, "--epochs", "1", "0", "--lr", "1e-2", "1e-2", *FEW_STEPS)
    before = load_file(str(source))
    after = load_file(str(tmp_path / "L1-test_resnet-s42" / "last.safetensors"))
    backbone = [k for k in before if not k.startswith("fc.")]
    assert backbone and all(torch.equal(before[k], after[k]) for k in backbone)  # frozen in phase 1


def test_speednet_checkpoint_as_pretrained_file_keeps_its_whitening(tiny_cifar, tmp_path_factory,
                                                                     tmp_path):
    from cifar10_levels.data.cifar10 import load_cifar10
    from cifar10_levels.models.speednet import SpeedNet

    source = trained_run("speednet", tiny_cifar, tmp_path_factory) / "best.safetensors"
    train(tiny_cifar, tmp_path, "--level", "fast", "--epochs", "1", *FEW_STEPS, "--pretrained-file", source)
    loaded = load_file(str(tmp_path / "Lfast-cifar_speednet-s42" / "last.safetensors"))["whiten_weight"]
    assert torch.equal(loaded, load_file(str(source))["whiten_weight"])
    fresh = SpeedNet()  # what a run from scratch on these images would have used instead
    fresh.init_from_data(load_cifar10(str(tiny_cifar), train_limit=TRAIN_LIMIT).train.images)
    assert not torch.allclose(fresh.whiten_weight, loaded)


def test_pretrained_file_of_another_arch_is_refused(tiny_cifar, tmp_path_factory, tmp_path):
    source = trained_run("resnet", tiny_cifar, tmp_path_factory) / "best.safetensors"
    result = train(tiny_cifar, tmp_path, "--level", "fast", "--pretrained-file", source, check=False)
    assert result.returncode == 2 and "checkpoint of test_resnet" in result.stderr
