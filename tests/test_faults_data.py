"""Fault corpus: data we read that a user or a crash can damage.

Images and labels inside a data set's parquet files; the decode cache (~/.cache/cifar10_levels) and
the ensemble's probability caches, damaged in each way that would otherwise train on zeros or vote
on NaN (a damaged cache is rebuilt, never trusted); images given to cifar10-predict (16-bit
greyscale, a FIFO). Bad input: exit 2, one line naming the file and what is wrong, no traceback,
nothing written. docs/bad_inputs.md lists the cases.
"""
from __future__ import annotations

import io
import os
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cifar10_levels.cli.predict import find_images, load_image, main as predict_main
from cifar10_levels.cli.train import train_main

from helpers.commands import TINY_TRAIN
from helpers.data import CLASS_NAMES, make_dataset, make_images
from helpers.faults import assert_refused, call, sha256_tree, write_checkpoint


def png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def write_raw_split(path: Path, items: list[dict], labels: list) -> None:
    """A split whose image column holds exactly `items` ({'bytes': ..., 'path': ...})."""
    import datasets

    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=CLASS_NAMES)})
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict({"img": items, "label": labels}, features=features).to_parquet(str(path))


def damaged_dataset(root: Path, damage: str) -> Path:
    rng = np.random.RandomState(0)
    labels = list(np.arange(20) % 10)
    items = [{"bytes": png(im), "path": None} for im in make_images(np.array(labels), rng)]
    if damage == "truncated image":
        items[3] = {"bytes": items[3]["bytes"][:60], "path": None}
    elif damage == "text as an image":
        items[3] = {"bytes": b"not an image at all\n" * 4, "path": None}
    elif damage == "missing label":
        labels[3] = None
    for split in ("train", "test"):
        write_raw_split(root / "plain_text" / f"{split}-00000-of-00001.parquet", items, labels)
    return root


DAMAGES = {"truncated image": "image 3 cannot be decoded", "text as an image": "image 3 cannot be decoded",
           "missing label": "label 3 is None"}


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_images_and_labels_are_one_line(damage, tmp_path):
    data = damaged_dataset(tmp_path / "data", damage)
    before = sha256_tree(tmp_path)
    outcome = call(train_main, "--dataset", data, "--output-dir", tmp_path / "out", *TINY_TRAIN,
                   "--arch", "test_resnet", "--epochs", "0", "1", "--batch-size", "4")
    line = assert_refused(outcome, f"{data}: split 'train' {DAMAGES[damage]}")
    assert "download them again" in line
    assert sha256_tree(tmp_path) == before


# ---- the decode cache ----------------------------------------------------------------------
def rewrite(path: Path, change) -> None:
    """The cache with `change(tensors, metadata)` applied, its metadata (checksum) kept as it was."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(path))
    change(tensors, metadata)
    save_file(tensors, str(path), metadata=metadata)


CACHE_DAMAGES = {
    "images zeroed": lambda t, m: t["train.images"].zero_(),
    "one pixel flipped": lambda t, m: t["test.images"].view(-1)[:1].add_(1),
    "labels out of range": lambda t, m: t["train.labels"].fill_(12),
    "images as floats": lambda t, m: t.update({"train.images": t["train.images"].float()}),
    "a split missing": lambda t, m: t.pop("test.images"),
    "fewer images": lambda t, m: t.update({"train.images": t["train.images"][:10].clone()}),
}


@pytest.mark.parametrize("damage", [*CACHE_DAMAGES, "truncated", "not safetensors"])
def test_a_damaged_decode_cache_is_rebuilt(damage, tmp_path, monkeypatch, capsys):
    from cifar10_levels.data.cifar10 import cache_dir, load_cifar10

    monkeypatch.setenv("CIFAR10_LEVELS_CACHE", str(tmp_path / "cache"))
    data = make_dataset(tmp_path / "data", 60, 20)
    first = load_cifar10(str(data))
    (cache,) = cache_dir().glob("decoded-*.safetensors")
    if damage == "truncated":
        cache.write_bytes(cache.read_bytes()[:1000])
    elif damage == "not safetensors":
        cache.write_text("garbage\n")
    else:
        rewrite(cache, CACHE_DAMAGES[damage])
    capsys.readouterr()
    again = load_cifar10(str(data))
    assert f"warning: {cache}: damaged decode cache" in capsys.readouterr().err
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(again, split).images, getattr(first, split).images)
        assert torch.equal(getattr(again, split).labels, getattr(first, split).labels)
    load_cifar10(str(data))  # rebuilt: read back without a word
    assert "damaged" not in capsys.readouterr().err


# ---- the ensemble's probability caches -----------------------------------------------------
def probability_cache(tmp_path: Path, probs: torch.Tensor, labels: torch.Tensor, **metadata) -> Path:
    from safetensors.torch import save_file

    from cifar10_levels.data.cifar10 import tensor_sha256

    path = tmp_path / ".member.probs.safetensors"
    save_file({"probs": probs, "labels": labels}, str(path),
              metadata={"probs_sha256": tensor_sha256(probs), **metadata})
    return path


LABELS = torch.arange(20) % 10
GOOD = torch.softmax(torch.randn(20, 10, generator=torch.Generator().manual_seed(0)), 1)
PROBABILITY_DAMAGES = {
    "NaN scores": GOOD.clone().index_fill_(0, torch.tensor([3]), float("nan")),
    "too few classes": torch.softmax(GOOD[:, :5], 1),
    "too few samples": GOOD[:10],
    "rows not summing to 1": GOOD * 3,
    "half precision": GOOD.half(),
}


@pytest.mark.parametrize("damage", PROBABILITY_DAMAGES)
def test_damaged_probability_cache_is_recomputed(damage, tmp_path):
    from cifar10_levels.ensemble.cache import load_cached

    path = probability_cache(tmp_path, PROBABILITY_DAMAGES[damage].contiguous(), LABELS)
    assert load_cached(path, LABELS, 10) is None


def test_probability_cache_whose_checksum_does_not_match_is_recomputed(tmp_path):
    from cifar10_levels.ensemble.cache import EvalSetting, load_cached, save_cached

    path = tmp_path / ".member.probs.safetensors"
    save_cached(path, GOOD, LABELS, SimpleNamespace(sha256="0" * 64), EvalSetting("test", None, 1, 32, "x"))
    assert torch.equal(load_cached(path, LABELS, 10), GOOD)
    rewrite(path, lambda t, m: t.update(probs=t["probs"].roll(1, 1)))  # still probabilities
    assert load_cached(path, LABELS, 10) is None


# ---- images for cifar10-predict ------------------------------------------------------------
def test_sixteen_bit_greyscale_is_scaled_not_saturated(tmp_path):
    from PIL import Image

    grey = np.random.RandomState(0).randint(0, 256, (40, 40)).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "eight.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "sixteen.png")
    assert Image.open(tmp_path / "sixteen.png").mode.startswith("I")
    assert torch.equal(load_image(tmp_path / "sixteen.png"), load_image(tmp_path / "eight.png"))


@pytest.fixture
def fifo(tmp_path):
    """A FIFO; a writer stands by so that a reader which opens it is not blocked for ever."""
    path = tmp_path / "photo.png"
    os.mkfifo(path)
    writer = threading.Thread(target=lambda: open(path, "wb").close(), daemon=True)
    writer.start()
    yield path
    os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))  # releases the writer if nobody read
    writer.join(timeout=60)


def test_a_fifo_is_not_read_as_an_image(fifo, tmp_path):
    from PIL import Image

    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(tmp_path / "real.png")
    write_checkpoint(tmp_path / "model.safetensors")
    assert find_images([str(fifo), str(tmp_path / "real.png")]) == [tmp_path / "real.png"]
    outcome = call(predict_main, "--weights", tmp_path / "model.safetensors", fifo, tmp_path / "real.png")
    assert outcome.code == 0 and f"warning: {fifo}: not a regular file; skipped" in outcome.stderr


def test_a_decode_cache_without_its_checksum_is_rebuilt_as_an_older_one(tmp_path, monkeypatch, capsys):
    from cifar10_levels.data.cifar10 import cache_dir, load_cifar10

    monkeypatch.setenv("CIFAR10_LEVELS_CACHE", str(tmp_path / "cache"))
    data = make_dataset(tmp_path / "data", 60, 20)
    first = load_cifar10(str(data))
    (cache,) = cache_dir().glob("decoded-*.safetensors")
    rewrite(cache, lambda t, m: m.pop("sha256"))
    capsys.readouterr()
    again = load_cifar10(str(data))
    err = capsys.readouterr().err
    assert f"warning: {cache}: decode cache of an older version (no checksum)" in err
    assert "damaged" not in err
    assert torch.equal(again.train.images, first.train.images)
