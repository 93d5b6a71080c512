"""CIFAR-10 through `datasets`: decoded once into uint8 tensors, split 45,000/5,000 stratified."""
from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..offline import go_offline, hub_reachable, unavailable_reason

HUB_ID = "uoft-cs/cifar10"
NUM_CLASSES = 10
VAL_FRACTION = 0.1          # 500 of each class's 5,000 train images
SPLIT_SEED = 42
CACHE_ENV = "CIFAR10_LEVELS_CACHE"
DAMAGED = "the data set's files are damaged: download them again"
GET_LOCAL_COPY = (f"make a local copy once where the Hub is reachable: hf download {HUB_ID} "
                  "--repo-type dataset --local-dir DIR, then pass --dataset DIR")


def cache_dir() -> Path:
    """Where decoded tensors are kept; read at call time so the variable can change in-process."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "cifar10_levels"))


@dataclass
class ImageSet:
    images: torch.Tensor    # uint8 (N, 3, 32, 32)
    labels: torch.Tensor    # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor | np.ndarray) -> "ImageSet":
        index = torch.as_tensor(index, dtype=torch.long)
        return ImageSet(self.images[index], self.labels[index])


@dataclass
class CIFAR10:
    train: ImageSet
    val: ImageSet
    test: ImageSet
    class_names: list[str]
    source: str


def stratified_split(labels: np.ndarray, fraction: float, seed: int = SPLIT_SEED
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Indices (rest, held_out): `fraction` of every class held out, chosen by `seed`."""
    rng = np.random.RandomState(seed)
    held = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        members = members[rng.permutation(len(members))]
        held.append(members[: int(round(len(members) * fraction))])
    held_out = np.sort(np.concatenate(held))
    rest = np.setdiff1d(np.arange(len(labels)), held_out)
    return rest, held_out


def stratified_subset(labels: np.ndarray, limit: int, seed: int = SPLIT_SEED) -> np.ndarray:
    """Sorted indices of exactly `limit` samples (all if fewer), each class's share as even as the
    class sizes allow: largest remainders of the proportional shares, ties to the lower class."""
    if limit >= len(labels):
        return np.arange(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    shares = counts * limit / len(labels)
    take = np.floor(shares).astype(int)
    order = np.argsort(-(shares - take), kind="stable")
    take[order[: limit - take.sum()]] += 1
    rng = np.random.RandomState(seed)
    chosen = []
    for cls, n in zip(classes, take):
        members = np.flatnonzero(labels == cls)
        chosen.append(members[rng.permutation(len(members))[:n]])
    return np.sort(np.concatenate(chosen))


def _decode(split, name: str, where: str) -> ImageSet:
    from datasets import Image
    from PIL import Image as PILImage

    missing = {"img", "label"} - set(split.column_names)
    if missing:
        raise UserError(f"{where}: split '{name}' lacks column(s) {sorted(missing)}; "
                        "expected the uoft-cs/cifar10 layout (columns 'img' and 'label')")
    if len(split) == 0:
        raise UserError(f"{where}: split '{name}' is empty")
    raw_labels = split["label"]
    missing_label = next((i for i, v in enumerate(raw_labels)
                          if not isinstance(v, (int, np.integer)) or isinstance(v, bool)), None)
    if missing_label is not None:
        raise UserError(f"{where}: split '{name}' label {missing_label} is "
                        f"{raw_labels[missing_label]!r}, not a class number; {DAMAGED}")
    labels = np.asarray(raw_labels, dtype=np.int64)
    bad = labels[(labels < 0) | (labels >= NUM_CLASSES)]
    if len(bad):
        raise UserError(f"{where}: split '{name}' has label {int(bad[0])} outside 0-{NUM_CLASSES - 1}")
    raw = split.cast_column("img", Image(decode=False))["img"]
    images = np.empty((len(raw), 32, 32, 3), dtype=np.uint8)
    for i, item in enumerate(raw):
        try:
            item = item or {}
            if not item.get("bytes") and not (item.get("path") and Path(item["path"]).is_file()):
                raise ValueError("no image bytes, and no image file")  # a FIFO would block
            with PILImage.open(io.BytesIO(item["bytes"]) if item.get("bytes") else item["path"]) as pil:
                if pil.size != (32, 32) or pil.mode != "RGB":
                    raise UserError(f"{where}: split '{name}' image {i} is {pil.size[0]}x{pil.size[1]} "
                                    f"{pil.mode}; CIFAR-10 images are 32x32 RGB")
                images[i] = np.asarray(pil)
        except (OSError, ValueError, SyntaxError, PILImage.DecompressionBombError) as err:
            reason = "not an image file" if isinstance(err, PILImage.UnidentifiedImageError) else \
                str(err).splitlines()[0][:120] if str(err) else type(err).__name__
            raise UserError(f"{where}: split '{name}' image {i} cannot be decoded ({reason}); "
                            f"{DAMAGED}") from None
    return ImageSet(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
                    torch.from_numpy(labels))


def cache_problem() -> str | None:
    """Why loading cannot write the caches it needs (datasets' Arrow files, our decoded tensors),
    which live under HOME unless set apart; None when it can."""
    import datasets.config

    from ..files import unwritable_dir

    for directory in (Path(datasets.config.HF_DATASETS_CACHE), cache_dir()):
        problem = unwritable_dir(directory)
        if problem is not None:
            where, why = problem
            detail = why if where == directory else f"{where} {why}"
            return (f"cannot write the data set cache {directory} ({detail}; HOME is {Path.home()}); "
                    f"set HOME to a writable directory, or HF_HOME and {CACHE_ENV} to writable "
                    "directories")
    return None


def _load_dataset_dict(source: str | None):
    import datasets

    problem = cache_problem()
    if problem is not None:  # else datasets' own error reads as a bad data set
        raise UserError(f"--dataset: {problem}")
    datasets.disable_progress_bars()
    if source is None:
        reachable = hub_reachable()
        why_not = None if reachable else unavailable_reason()  # before go_offline sets the variables
        if not reachable:
            go_offline()  # a cached copy still loads; otherwise fail now, not after retries
        try:
            return datasets.load_dataset(HUB_ID), HUB_ID
        except Exception as err:
            reason = (f"{type(err).__name__}: {str(err).splitlines()[0][:160]}" if reachable
                      else f"not in the local cache, and {why_not}")
            raise UserError(f"--dataset: cannot load {HUB_ID} ({reason}); {GET_LOCAL_COPY}") from None
    path = Path(source)
    if not path.exists():
        raise UserError(f"--dataset {source}: no such file or directory")
    go_offline()  # a local path never needs the network
    try:
        return datasets.load_dataset(str(path)), str(path)
    except Exception as err:
        raise UserError(f"--dataset {source}: not a dataset in the uoft-cs/cifar10 layout "
                        f"({type(err).__name__}: {str(err).splitlines()[0][:200]})") from None


def _cache_path(dd) -> Path:
    key = "-".join(dd[s]._fingerprint for s in sorted(dd))
    return cache_dir() / f"decoded-{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors"


def tensor_sha256(*tensors: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(t.contiguous().numpy().tobytes())
    return digest.hexdigest()


class OlderCache(Exception):
    """A decode cache written without the checksum of its tensors."""


def _read_cache(cache: Path, dd) -> dict[str, ImageSet] | None:
    """The decoded splits kept in `cache`, only when every shape, type and label and the checksum
    written with them hold; None otherwise (then the cache is rebuilt)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(cache), framework="pt") as f:
            checksum = (f.metadata() or {}).get("sha256")
        t = load_file(cache)
    except Exception:
        return None
    if checksum is None:
        raise OlderCache
    splits = {}
    for name in ("train", "test"):
        images, labels = t.get(f"{name}.images"), t.get(f"{name}.labels")
        n = len(dd[name])
        if images is None or labels is None or images.dtype != torch.uint8 \
                or tuple(images.shape) != (n, 3, 32, 32) or labels.dtype != torch.int64 \
                or tuple(labels.shape) != (n,) or not bool(((labels >= 0) & (labels < NUM_CLASSES)).all()):
            return None
        splits[name] = ImageSet(images, labels)
    if checksum != tensor_sha256(*(t for s in splits.values() for t in (s.images, s.labels))):
        return None
    return splits


def _decoded_splits(dd, where: str) -> dict[str, ImageSet]:
    """Decode every PNG once; later runs read the uint8 tensors from a safetensors cache, checked
    before use: a damaged one is rebuilt."""
    import sys

    from safetensors.torch import save_file

    from ..files import atomic_path

    cache = _cache_path(dd)
    if cache.is_file():
        try:
            splits, problem = _read_cache(cache, dd), "damaged decode cache"
        except OlderCache:
            splits, problem = None, "decode cache of an older version (no checksum)"
        if splits is not None:
            return splits
        if os.environ.get("LOCAL_RANK", "0") == "0":
            print(f"warning: {cache}: {problem}; decoding the data set again", file=sys.stderr)
    splits = {s: _decode(dd[s], s, where) for s in ("train", "test")}
    tensors = {f"{s}.{k}": getattr(v, k) for s, v in splits.items() for k in ("images", "labels")}
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache) as tmp:
            save_file(tensors, tmp, metadata={"sha256": tensor_sha256(*tensors.values())})
    except OSError:
        pass  # the cache is an optimisation only
    return splits


def load_cifar10(source: str | None = None, train_limit: int | None = None,
                 eval_limit: int | None = None) -> CIFAR10:
    """Train/val/test as uint8 tensors; val = 10% of each class of the train split (seed 42)."""
    dd, where = _load_dataset_dict(source)
    for name in ("train", "test"):
        if name not in dd:
            raise UserError(f"{where}: no '{name}' split (found {sorted(dd)}); "
                            "expected the uoft-cs/cifar10 layout")
    feature = dd["train"].features.get("label")
    class_names = list(getattr(feature, "names", None) or [str(i) for i in range(NUM_CLASSES)])
    splits = _decoded_splits(dd, where)
    full_train, test = splits["train"], splits["test"]
    rest, held = stratified_split(full_train.labels.numpy(), VAL_FRACTION)
    train, val = full_train.subset(rest), full_train.subset(held)
    if train_limit:
        train = train.subset(stratified_subset(train.labels.numpy(), train_limit))
    if eval_limit:
        val = val.subset(stratified_subset(val.labels.numpy(), eval_limit))
        test = test.subset(stratified_subset(test.labels.numpy(), eval_limit))
    return CIFAR10(train, val, test, class_names, where)


class IndexedImages(torch.utils.data.Dataset):
    """A dataset whose batches are gathered in one indexing op (no per-sample Python)."""

    def __init__(self, images: ImageSet):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images.images[i], self.images.labels[i]

    def __getitems__(self, indices: list[int]):
        index = torch.as_tensor(indices, dtype=torch.long)
        # index_select copies whole images (~15x faster than images[index] for uint8 on a CPU:
        # bench/step_costs.py)
        return self.images.images.index_select(0, index), self.images.labels.index_select(0, index)


def _as_batch(batch):
    return batch


def make_loader(images: ImageSet, batch_size: int, train: bool, seed: int) -> torch.utils.data.DataLoader:
    """uint8 batches; Accelerate shards them across processes and moves them to the device."""
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        IndexedImages(images), batch_size=batch_size, shuffle=train, drop_last=train,
        collate_fn=_as_batch, generator=generator if train else None,
        pin_memory=torch.cuda.is_available())
