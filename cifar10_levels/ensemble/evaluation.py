"""Evaluating the ensemble's members: each checkpoint's probabilities on val and test, from the
cache where present, else from one pass at the member's own size and normalization."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from accelerate import Accelerator
from torch import nn

from ..checkpoint.io import load_checkpoint
from ..data.cifar10 import ImageSet
from .cache import EvalSetting, cache_path, load_cached, save_cached
from .members import Member
from ..errors import UserError
from ..evaluation.inference import model_probabilities
from ..models.factory import size_problem


@dataclass
class MemberEval:
    probs: dict[str, torch.Tensor] = field(default_factory=dict)   # split -> (N, C)
    seconds: float = 0.0                                            # forward passes, 0 when cached
    cached: bool = True


def evaluate_member(accelerator: Accelerator, model: nn.Module, member: Member, images: ImageSet,
                    tta: int, batch_size: int) -> torch.Tensor:
    """Mean softmax over the TTA views, at the member's evaluation size and its normalization."""
    return model_probabilities(accelerator, model, member.meta, images, tta, batch_size,
                               img_size=member.eval_img_size).probs.float()


def evaluate_members(accelerator: Accelerator, members: list[Member], splits: dict[str, ImageSet],
                     data_hashes: dict[str, str], eval_limit: int | None, tta: int, batch_size: int,
                     write_cache: bool) -> list[MemberEval]:
    """Cached probabilities where present; every missing file is loaded (and so validated) first."""
    def setting(member: Member, split: str) -> EvalSetting:
        return EvalSetting(split, eval_limit, tta, member.eval_img_size, data_hashes[split])

    results = [MemberEval() for _ in members]
    todo = []
    for member, result in zip(members, results):
        for split, images in splits.items():
            cached = load_cached(cache_path(member, setting(member, split)), images.labels,
                                  member.meta.num_classes)
            if cached is not None:
                result.probs[split] = cached
        if len(result.probs) < len(splits):
            todo.append((member, result, load_checkpoint(member.path, "--weights")[0]))
    check_sizes(todo)
    for member, result, model in todo:
        model = model.to(accelerator.device)
        if accelerator.device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        start = time.perf_counter()
        for split, images in splits.items():
            if split in result.probs:
                continue
            result.probs[split] = evaluate_member(accelerator, model, member, images, tta, batch_size)
            if write_cache and accelerator.is_main_process:
                save_cached(cache_path(member, setting(member, split)), result.probs[split],
                            images.labels, member, setting(member, split))
        result.seconds, result.cached = time.perf_counter() - start, False
        model.cpu()
    return results


def check_sizes(todo: list) -> None:
    """A dry forward pass per member: a clear error for a size the model cannot take."""
    for member, _, model in todo:
        if reason := size_problem(model, member.eval_img_size):
            raise UserError(f"--img-size {member.eval_img_size}: {member.meta.arch} ({member.path}) "
                            f"cannot take this size ({reason})")
