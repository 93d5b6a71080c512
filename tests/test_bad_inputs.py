"""The bad-input corpus: every case is one line naming the flag or file, exit code 2, nothing written.

The corpus (conceptually tests/bad_inputs/) is generated into a tmp dir by the `bad_inputs` fixture;
docs/bad_inputs.md lists every case with its command and message.
"""
from __future__ import annotations

import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState, GradientState

from cifar10_levels.checkpoint.io import CheckpointMeta, load_checkpoint, save_checkpoint
from cifar10_levels.cli.train import train_main
from cifar10_levels.errors import UserError
from cifar10_levels.models.factory import create_model

from helpers.commands import ROOT, run_cli
from helpers.data import CLASS_NAMES, make_images, write_split

TINY = ["--no-pretrained", "--img-size", "32", "--batch-size", "32", "--no-progress",
        "--report-to", "none", "--arch", "test_resnet", "--epochs", "0", "1"]


def checkpoint_meta(arch: str = "test_resnet", num_classes: int = 10) -> CheckpointMeta:
    names = CLASS_NAMES if num_classes == 10 else [f"class{i}" for i in range(num_classes)]
    return CheckpointMeta(arch=arch, level="1", img_size=32, num_classes=num_classes,
                          class_names=names, mean=[0.5] * 3, std=[0.25] * 3, seed=0, epoch=1,
                          val_acc=0.5)


def make_corpus(root: Path) -> None:
    """Every bad file, generated: no committed blobs."""
    rng = np.random.RandomState(0)
    labels = np.arange(20) % 10
    images = make_images(labels, rng)
    split = "plain_text/{}-00000-of-00001.parquet"
    write_split(root / "only_train" / split.format("train"), images, labels)
    for name in ("train", "test"):
        write_split(root / "wrong_column" / split.format(name), images, labels,
                    columns=("image", "label"))
        write_split(root / "label_out_of_range" / split.format(name), images,
                    np.where(labels == 9, 10, labels), names=CLASS_NAMES + ["extra"])
        write_split(root / "wrong_image_size" / split.format(name), make_images(labels, rng, 16),
                    labels)
        write_split(root / "empty" / split.format(name), images[:0], labels[:0])

    model = create_model("test_resnet", 10)
    good = root / "good.safetensors"
    save_checkpoint(good, model.state_dict(), checkpoint_meta())
    data = good.read_bytes()
    (root / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (root / "zero_bytes.safetensors").write_bytes(b"")
    (root / "text.safetensors").write_text("these are not the weights you are looking for\n" * 4)
    (root / "huge_header.safetensors").write_bytes(struct.pack("<Q", 2 ** 40) + b'{"a": 1}' * 8)
    save_checkpoint(root / "hundred_classes.safetensors",
                    create_model("test_resnet", 100).state_dict(), checkpoint_meta(num_classes=100))
    save_checkpoint(root / "unknown_arch.safetensors", model.state_dict(),
                    checkpoint_meta(arch="no_such_net"))
    save_checkpoint(root / "classes_not_matching_weights.safetensors", model.state_dict(),
                    checkpoint_meta(num_classes=100))
    torch.save(model.state_dict(), root / "pickle.pt")
    torch.save(model.state_dict(), root / "pickle_named.safetensors")
    (root / "a_file").write_text("I am a file, not a directory\n")
    python_format = root / "cifar-10-batches-py"  # the original release's names; never unpickled
    python_format.mkdir()
    for name in ("data_batch_1", "data_batch_2", "test_batch", "batches.meta"):
        (python_format / name).write_bytes(b"not read")


@pytest.fixture(scope="session")
def bad_inputs(tmp_path_factory, tiny_cifar) -> Path:
    """A working dir holding bad_inputs/ and a link to the good tiny dataset."""
    work = tmp_path_factory.mktemp("corpus")
    make_corpus(work / "bad_inputs")
    (work / "tiny").symlink_to(tiny_cifar)
    return work


@dataclass(frozen=True)
class Case:
    name: str
    args: tuple[str, ...]
    names: str                    # what the one-line message must name: the flag or the file


BAD = "bad_inputs/"
CASES = [
    Case("unknown level", ("--level", "9"), "--level 9"),
    Case("unknown arch", ("--arch", "no_such_net"), "--arch 'no_such_net' is unknown"),
    Case("negative epochs", ("--epochs", "-1", "2"), "--epochs"),
    Case("zero epochs", ("--epochs", "0", "0"), "--epochs"),
    Case("epochs for the wrong number of phases", ("--epochs", "3"), "--epochs"),
    Case("zero lr", ("--lr", "0", "1e-3"), "--lr"),
    Case("negative lr", ("--lr", "-0.001", "1e-3"), "--lr"),
    Case("negative lr in exponent notation", ("--lr", "-1e-3", "1e-4"), "--lr"),
    Case("negative seed", ("--seed", "-1"), "--seed"),
    Case("zero batch size", ("--batch-size", "0"), "--batch-size"),
    Case("negative batch size", ("--batch-size", "-8"), "--batch-size"),
    Case("odd batch with Mixup/CutMix", ("--level", "2", "--batch-size", "33"), "--batch-size 33"),
    Case("batch larger than the training subset", ("--train-limit", "16"), "--batch-size 32"),
    Case("img-size a ViT rejects", ("--arch", "test_vit", "--img-size", "40"), "--img-size 40"),
    Case("img-size a ConvNeXt rejects", ("--arch", "test_convnext", "--img-size", "24"), "--img-size 24"),
    Case("img-size too small", ("--img-size", "8"), "--img-size 8"),
    Case("colour jitter above 1", ("--color-jitter", "1.5"), "--color-jitter 1.5"),
    Case("negative Mixup alpha", ("--mixup-alpha", "-1"), "--mixup-alpha -1"),
    Case("EMA decay of 1", ("--ema", "1"), "--ema 1"),
    Case("negative gradient clipping norm", ("--clip-grad", "-1"), "--clip-grad -1"),
    Case("negative warmup", ("--warmup-epochs", "-0.5"), "--warmup-epochs -0.5"),
    Case("dataset path missing", ("--dataset", "no/such/dir"), "--dataset no/such/dir"),
    Case("dataset is one parquet file", ("--dataset", "tiny/plain_text/train-00000-of-00001.parquet"),
         "--dataset tiny/plain_text/train-00000-of-00001.parquet"),
    Case("dataset in the CIFAR-10 python format", ("--dataset", BAD + "cifar-10-batches-py"),
         "--dataset " + BAD + "cifar-10-batches-py"),
    Case("dataset without a test split", ("--dataset", BAD + "only_train"), BAD + "only_train"),
    Case("dataset without the img column", ("--dataset", BAD + "wrong_column"), BAD + "wrong_column"),
    Case("labels out of range", ("--dataset", BAD + "label_out_of_range"), BAD + "label_out_of_range"),
    Case("wrong image size", ("--dataset", BAD + "wrong_image_size"), BAD + "wrong_image_size"),
    Case("empty dataset", ("--dataset", BAD + "empty"), BAD + "empty"),
    Case("truncated safetensors", ("--pretrained-file", BAD + "truncated.safetensors"),
         BAD + "truncated.safetensors"),
    Case("zero-byte file", ("--pretrained-file", BAD + "zero_bytes.safetensors"),
         BAD + "zero_bytes.safetensors"),
    Case("text file named .safetensors", ("--pretrained-file", BAD + "text.safetensors"),
         BAD + "text.safetensors"),
    Case("huge declared header", ("--pretrained-file", BAD + "huge_header.safetensors"),
         BAD + "huge_header.safetensors"),
    Case("checkpoint with 100 classes", ("--pretrained-file", BAD + "hundred_classes.safetensors"),
         BAD + "hundred_classes.safetensors"),
    Case("checkpoint of an unknown arch", ("--pretrained-file", BAD + "unknown_arch.safetensors"),
         BAD + "unknown_arch.safetensors"),
    Case("class count not matching the weights",
         ("--pretrained-file", BAD + "classes_not_matching_weights.safetensors"),
         BAD + "classes_not_matching_weights.safetensors"),
    Case("pickle .pt file", ("--pretrained-file", BAD + "pickle.pt"), BAD + "pickle.pt"),
    Case("pickle named .safetensors", ("--pretrained-file", BAD + "pickle_named.safetensors"),
         BAD + "pickle_named.safetensors"),
    Case("output directory is a file", ("--output-dir", BAD + "a_file"), "--output-dir"),
    Case("--resume with nothing to resume", ("--resume",), "--resume"),
    Case("--resume with --overwrite", ("--resume", "--overwrite"), "--resume and --overwrite"),
    Case("--resume auto with --overwrite", ("--resume", "auto", "--overwrite"),
         "--resume auto and --overwrite"),
    Case("--resume with a value other than auto", ("--resume", "last"), "--resume"),
    Case("checkpoint interval not a duration", ("--checkpoint-every", "often"), "--checkpoint-every"),
    Case("run name that is a path", ("--run-name", "../elsewhere"), "--run-name"),
    Case("time budget not a duration", ("--time-budget", "10minutes"), "--time-budget"),
    Case("time budget too short to train", ("--time-budget", "1s"), "--time-budget 0m01s: too short"),
]


def command(case: Case) -> list[str]:
    """train.py flags: the tiny dataset and a fresh output dir unless the case sets its own."""
    args = list(case.args)
    base = [*TINY]
    if "--dataset" not in args:
        base += ["--dataset", "tiny"]
    if "--output-dir" not in args:
        base += ["--output-dir", "out"]
    return base + args


def tree(path: Path) -> dict[str, tuple[int, int]]:
    """Every entry under `path` with its size and mtime: equal before and after means untouched."""
    if path.is_file():
        return {"": (path.stat().st_size, path.stat().st_mtime_ns)}
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(path.rglob("*"))}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, bad_inputs, monkeypatch, capsys):
    monkeypatch.chdir(bad_inputs)
    out = Path("out")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    (out / "earlier_results.txt").write_text("keep me\n")
    before = {p: tree(Path(p)) for p in ("out", "bad_inputs", "tiny/")}
    try:
        assert train_main(command(case)) == 2
    finally:  # a case that fails after the Accelerator exists (a budget too short) must not leave
        # its state, with the precision this run measured, to the next in-process run
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and case.names in last, err
    assert "Traceback" not in err
    assert {p: tree(Path(p)) for p in before} == before


CHECKPOINTS = {  # file: what load_checkpoint's message says about it
    "truncated.safetensors": "corrupt safetensors file", "zero_bytes.safetensors": "too short",
    "text.safetensors": "not a valid safetensors file", "huge_header.safetensors": "header",
    "unknown_arch.safetensors": "'no_such_net' is unknown",
    "classes_not_matching_weights.safetensors": "weights do not match test_resnet with 100 classes",
    "pickle_named.safetensors": "not a valid safetensors file", "missing.safetensors": "no such file",
}


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_load_checkpoint_refuses_bad_files(name, bad_inputs):
    path = bad_inputs / "bad_inputs" / name
    with pytest.raises(UserError) as err:
        load_checkpoint(path, "--weights")
    message = str(err.value)
    assert message.startswith(f"--weights {path}: ") and CHECKPOINTS[name] in message, message
    assert "\n" not in message


def test_load_checkpoint_refuses_a_class_count_the_caller_cannot_use(bad_inputs):
    path = bad_inputs / "bad_inputs" / "hundred_classes.safetensors"
    assert load_checkpoint(path)[1].num_classes == 100
    with pytest.raises(UserError, match="a checkpoint with 100 classes; this needs 10"):
        load_checkpoint(path, "--weights", num_classes=10)


def test_good_checkpoint_of_the_corpus_loads(bad_inputs):
    model, meta = load_checkpoint(bad_inputs / "bad_inputs" / "good.safetensors", num_classes=10)
    assert meta.arch == "test_resnet" and model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize("args, names", [
    (("--lr", "0", "1e-3"), "--lr"),
    (("--pretrained-file", BAD + "truncated.safetensors"), BAD + "truncated.safetensors"),
], ids=["flag", "checkpoint"])
def test_real_command_exits_2_without_traceback(args, names, bad_inputs):
    result = run_cli("train.py", *command(Case("subprocess", args, names)), cwd=bad_inputs)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and names in last, result.stderr
    assert not (bad_inputs / "out" / "L1-test_resnet-s42").exists()


@pytest.mark.parametrize("name", ["truncated.safetensors", "hundred_classes.safetensors"])
def test_ensemble_refuses_bad_checkpoints(name, bad_inputs):
    good, bad = BAD + "good.safetensors", BAD + name
    result = run_cli("ensemble.py", "--weights", good, bad, "--dataset", "tiny", cwd=bad_inputs)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and bad in result.stderr.strip().splitlines()[-1]


def test_every_case_is_documented():
    table = (ROOT / "docs" / "bad_inputs.md").read_text()
    assert all(f"| {case.name} |" in table for case in CASES)
