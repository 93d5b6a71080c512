"""Each member's probabilities cached beside its checkpoint, keyed by the file's content hash and
everything else that changes them, so trying the votes again costs nothing."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .members import Member
from ..data.cifar10 import tensor_sha256
from ..files import atomic_path

CACHE_SUFFIX = ".probs.safetensors"


@dataclass(frozen=True)
class EvalSetting:
    """Everything besides the checkpoint that changes a member's probabilities."""

    split: str
    eval_limit: int | None
    tta: int
    img_size: int
    data_sha256: str        # the split's images and labels, so another dataset never hits the cache


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_path(member: Member, setting: EvalSetting) -> Path:
    key = hashlib.sha256(json.dumps([member.sha256, asdict(setting)]).encode()).hexdigest()[:16]
    limit = setting.eval_limit or "all"
    return member.path.parent / (f".{member.path.stem}.{setting.split}-n{limit}-tta{setting.tta}-"
                                 f"{setting.img_size}px-{key}{CACHE_SUFFIX}")


def load_cached(path: Path, labels: torch.Tensor, num_classes: int) -> torch.Tensor | None:
    """The cached probabilities, only when they are what save_cached wrote for these labels: the
    checksum, shape and values hold; None otherwise (then they are computed again)."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            checksum = (f.metadata() or {}).get("probs_sha256")
        saved = load_file(str(path))
    except Exception:
        return None  # a damaged cache is recomputed
    probs = saved.get("probs")
    if probs is None or not torch.equal(saved.get("labels", torch.empty(0)), labels) \
            or probs.dtype not in (torch.float32, torch.float64) \
            or tuple(probs.shape) != (len(labels), num_classes) or checksum != tensor_sha256(probs) \
            or not bool(torch.isfinite(probs).all()) \
            or not torch.allclose(probs.sum(1), torch.ones(len(labels), dtype=probs.dtype), atol=1e-3):
        return None
    return probs


def save_cached(path: Path, probs: torch.Tensor, labels: torch.Tensor, member: Member,
                setting: EvalSetting) -> None:
    header = {"checkpoint_sha256": member.sha256, "probs_sha256": tensor_sha256(probs),
              **{k: json.dumps(v) for k, v in asdict(setting).items()}}
    try:
        with atomic_path(path) as tmp:
            save_file({"probs": probs.contiguous(), "labels": labels.contiguous()}, tmp, metadata=header)
    except OSError:
        pass  # a read-only checkpoint directory only loses the cache
