"""Distillation (--teachers): the student learns from the soft vote of teacher checkpoints, each fed
the very batch the student trains on (augmented, mixed) at its own size and normalization.

The loss is (1 - a) x the recipe's own + a x T^2 KL(vote_T || student_T) (Hinton et al., 2015),
a = recipe.kd_weight and T = recipe.kd_temperature; the vote is the teachers' mean (or validation-
accuracy-weighted) probabilities at T. Teachers are never wrapped by Accelerate, never trained and
never saved with the student: each process holds its own copy in eval mode.
"""
from __future__ import annotations

import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..data.augment import TrainAugment
from ..data.cifar10 import ImageSet
from ..data.normalize import Normalizer
from ..errors import UserError
from ..checkpoint.train_state import TrainState
from ..recipes import Recipe
from .config import RunConfig

FLAG = "--teachers"


def distillation_loss(student_logits: torch.Tensor, vote: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 KL(vote || softmax(student / T)), mean over the batch; `vote` holds probabilities at T."""
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    return F.kl_div(log_student, vote, reduction="batchmean") * temperature ** 2


@dataclass(frozen=True)
class Teacher:
    model: nn.Module
    normalize: Normalizer            # its own size, statistics and test-time views
    record: dict                     # what results.json and the trackers say of it


class ForwardClock:
    """Seconds spent in the teachers' forward passes, without a device sync per step (CUDA events
    are read once, when `take` is called at the end of an epoch)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.seconds = 0.0
        self.events: list = []

    def start(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def stop(self, started) -> None:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.events.append((started, end))
        else:
            self.seconds += time.perf_counter() - started

    def take(self) -> float:
        """The seconds since the last take."""
        if self.events:
            self.events[-1][1].synchronize()
            self.seconds += sum(s.elapsed_time(e) for s, e in self.events) / 1000
            self.events.clear()
        seconds, self.seconds = self.seconds, 0.0
        return seconds


class Teachers:
    """The teachers of one process, and the distillation term they give the student's loss."""

    def __init__(self, teachers: list[Teacher], student: Normalizer, recipe: Recipe,
                 autocast: Callable[[], AbstractContextManager], device: torch.device):
        self.teachers, self.student, self.autocast = teachers, student, autocast
        self.weight, self.temperature, self.view = recipe.kd_weight, recipe.kd_temperature, recipe.kd_view
        accs = [t.record["val_acc"] for t in teachers]
        shares = accs if recipe.kd_vote == "val_acc" else [1.0] * len(teachers)
        self.shares = [s / sum(shares) for s in shares]
        for teacher, share in zip(teachers, self.shares):
            teacher.record["vote_weight"] = share
        self.clock = ForwardClock(device)

    def line(self) -> str:
        teachers = ", ".join(f"{t.record['arch']} {t.record['img_size']} px (val {t.record['val_acc']:.2%}, "
                             f"vote weight {share:.2f})" for t, share in zip(self.teachers, self.shares))
        view = "the student's augmented batch" if self.view == "same" else "the images before augmentation"
        return (f"distillation: loss = {1 - self.weight:g} x recipe's + {self.weight:g} x T^2 KL(vote || "
                f"student) at T {self.temperature:g}, the teachers seeing {view}; "
                f"{len(self.teachers)} teacher(s): {teachers}")

    def epoch_record(self, images: int, seconds: float) -> dict:
        """The epoch's seconds in the teachers' passes (this process's), and the student's images/s
        without them."""
        teacher_seconds = self.clock.take()
        return {"teacher_seconds": teacher_seconds,
                "images_per_s_without_teachers": images / max(seconds - teacher_seconds, 1e-9)}

    @property
    def records(self) -> list[dict]:
        return [t.record for t in self.teachers]

    @property
    def sha256s(self) -> list[str]:
        return [t.record["sha256"] for t in self.teachers]

    def teacher_input(self, batch: torch.Tensor, teacher: Normalizer) -> torch.Tensor:
        """The student's normalized 32 px batch in the teacher's normalization, at its size: both
        normalizations are per-channel affine maps, and the resize comes last as in training."""
        s_shift, s_scale = self.student.shift_scale(batch.device)
        t_shift, t_scale = teacher.shift_scale(batch.device)
        return teacher.resize(batch * (s_scale / t_scale) + (s_shift - t_shift) / t_scale)

    @torch.no_grad()
    def vote(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, C) probabilities at T: the teachers' vote on `batch`, the student's augmented batch
        before its resize."""
        started = self.clock.start()
        vote = None
        for teacher, share in zip(self.teachers, self.shares):
            inputs = self.teacher_input(batch, teacher.normalize)
            with self.autocast():
                logits = teacher.model(inputs)
            probs = (logits.float() / self.temperature).softmax(1) * share
            vote = probs if vote is None else vote + probs
        self.clock.stop(started)
        return vote

    def distilled(self, loss: torch.Tensor, student_logits: torch.Tensor, batch: torch.Tensor,
                  images: torch.Tensor) -> torch.Tensor:
        """The recipe's `loss` blended with the distillation term: the teachers vote on the student's
        augmented `batch`, or with kd_view "clean" on its uint8 `images` before augmentation."""
        seen = self.student.standardize(images) if self.view == "clean" else batch
        kd = distillation_loss(student_logits, self.vote(seen), self.temperature)
        return (1 - self.weight) * loss + self.weight * kd

    def test_vote(self, accelerator, test: ImageSet, tta: int, batch_size: int) -> dict:
        """The teachers' soft vote (at T = 1, as ensemble.py votes) on the test set, plain and with
        `tta` views of each teacher's own scheme; each sample counted once."""
        from ..data.cifar10 import make_loader
        from ..evaluation.evaluate import evaluate

        plain = tta_probs = None
        for teacher, share in zip(self.teachers, self.shares):
            loader = accelerator.prepare_data_loader(make_loader(test, batch_size, False, 0))
            result = evaluate(accelerator, teacher.model, loader, teacher.normalize, max(tta, 1),
                              autocast=self.autocast)
            plain = result.plain_probs * share + (0 if plain is None else plain)
            tta_probs = result.probs * share + (0 if tta_probs is None else tta_probs)
        labels = result.labels
        accuracy = (lambda p: (p.argmax(1) == labels).float().mean().item())
        return {"test_acc": accuracy(plain), "test_acc_tta": accuracy(tta_probs) if tta > 1 else None,
                "tta_views": max(tta, 1), "teachers": len(self.teachers)}


def with_teachers(augment: TrainAugment, teachers: Teachers | None) -> Callable:
    """augment's (inputs, targets), the teachers voting on them: a step as --time-budget times it."""
    def augmented(images: torch.Tensor, labels: torch.Tensor, mix: bool):
        batch, targets = augment.pixels(images, labels, mix)
        if teachers is not None:
            teachers.vote(batch)
        return augment.resize(batch), targets
    return augmented


def load_teachers(config: RunConfig, class_names: list[str], device: torch.device,
                  autocast: Callable[[], AbstractContextManager]) -> Teachers:
    """config.teachers resolved as ensemble.py resolves --weights (files, run directories,
    directories of runs), less the student's own run directory; each file checked before anything
    is built: no pickle, its classes the data's. `autocast` puts the run's precision around a model
    Accelerate did not prepare, as the teachers are."""
    from ..checkpoint.io import load_checkpoint
    from ..ensemble.cache import file_sha256
    from ..ensemble.members import find_checkpoints, read_members

    paths, recipe, channels_last = config.teachers, config.recipe, config.channels_last
    own = config.run_dir.resolve()
    files = [p for p in find_checkpoints(paths, FLAG) if own not in p.parents]
    if not files:
        raise UserError(f"{FLAG} {' '.join(paths)}: no checkpoints besides this run's own "
                        f"({config.run_dir}); give the teachers' checkpoints or run directories")
    members = read_members(files, None, FLAG)
    teachers = []
    for member in members:
        if member.meta.class_names != class_names:
            raise UserError(f"{FLAG} {member.path}: a checkpoint of {member.meta.num_classes} classes "
                            f"{member.meta.class_names[:4]}...; the data has {len(class_names)} "
                            f"{class_names[:4]}...; teach with checkpoints trained on these classes")
        model, meta = load_checkpoint(member.path, FLAG, len(class_names))
        model = model.to(device).eval().requires_grad_(False)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        normalize = Normalizer(meta.img_size, tuple(meta.mean), tuple(meta.std), channels_last,
                               meta.tta_scheme)
        record = {"path": str(member.path), "sha256": file_sha256(member.path), "arch": meta.arch,
                  "level": meta.level, "img_size": meta.img_size, "seed": meta.seed,
                  "val_acc": meta.val_acc, "test_acc": meta.test_acc}
        teachers.append(Teacher(model, normalize, record))
    student = Normalizer(recipe.img_size, recipe.mean, recipe.std)
    return Teachers(teachers, student, recipe, autocast, device)


def same_teachers(state: TrainState, teachers: Teachers | None, config: RunConfig) -> list[str] | None:
    """The teachers' sha256s, for the state; on --resume, those the run started with or an error."""
    def short(hashes: list[str] | None) -> str:
        return ", ".join(h[:12] for h in hashes) if hashes else "none (no teachers)"

    taught_by = teachers.sha256s if teachers else None
    if config.resume and state.teachers_sha256 != taught_by:
        raise UserError(f"{FLAG}: the run in {config.run_dir} was taught by files of sha256 "
                        f"{short(state.teachers_sha256)}, these are {short(taught_by)}; resume with "
                        "the same teacher files")
    return taught_by
