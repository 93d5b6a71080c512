"""Distillation (--teachers, level 5): the loss by hand, what the teachers see, the files a distilled
run writes (and leaves alone), its resume and refusals, two processes, and the tools that read a
student (ensemble.py, the report, the model card)."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from cifar10_levels.train.distill import Teacher, Teachers, distillation_loss

from helpers.commands import ROOT, TINY_TRAIN, assert_refused, free_port, read_results, train
from helpers.data import CLASS_NAMES
from helpers.runs import history, snapshot

# (arch, training size): two architectures at two sizes
TEACHERS = (("test_resnet", 32), ("test_convnext", 48))
STUDENT = ["--arch", "test_resnet", "--train-limit", "160", "--batch-size", "8", "--lr", "1e-2", "1e-2"]
ONE_EPOCH = ["--epochs", "0", "1"]
STUDENT_RUN = "L5-test_resnet-s42"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def teachers(tiny_cifar, tmp_path_factory) -> Path:
    """Two teachers trained by the real train.py, side by side as a user's ckpts/ would be."""
    out = tmp_path_factory.mktemp("teachers")

    def one(member):
        arch, size = member
        train(tiny_cifar, out, "--arch", arch, "--img-size", str(size), *ONE_EPOCH, "--train-limit", "200",
              "--lr", "1e-2", "1e-2", env={"OMP_NUM_THREADS": "1"})

    with ThreadPoolExecutor(len(TEACHERS)) as pool:
        list(pool.map(one, TEACHERS))
    return out


def teacher_files(teachers: Path) -> dict[str, Path]:
    """arch -> its best.safetensors"""
    return {arch: teachers / f"L1-{arch}-s42" / "best.safetensors" for arch, _ in TEACHERS}


@pytest.fixture(scope="module")
def student(teachers, tiny_cifar, tmp_path_factory) -> dict:
    """A level-5 student (Mixup, TTA) taught by both teachers, and the teachers' files around its run."""
    out = tmp_path_factory.mktemp("student")
    before = snapshot(teachers)
    result = train(tiny_cifar, out, "--level", "5", "--teachers", teachers, *STUDENT, *ONE_EPOCH)
    return {"out": out, "run_dir": out / STUDENT_RUN, "stdout": result.stdout,
            "teachers_before": before, "teachers_after": snapshot(teachers)}


# ---- the loss ----------------------------------------------------------------------------------

@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_distillation_loss_and_its_gradient_match_the_hand_computation(temperature):
    generator = torch.Generator().manual_seed(0)
    n, T = 6, temperature
    logits = torch.randn(n, 10, generator=generator, dtype=torch.float64, requires_grad=True)
    p = (torch.randn(n, 10, generator=generator, dtype=torch.float64) * 3 / T).softmax(1)
    loss = distillation_loss(logits, p, T)
    q = (logits.detach() / T).softmax(1)
    by_hand = T ** 2 * (p * (p.log() - q.log())).sum() / n
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-12, abs=1e-15)
    loss.backward()
    torch.testing.assert_close(logits.grad, (q - p) * T / n, rtol=1e-10, atol=1e-14)
    # zero where the student already gives the vote
    same = logits.detach().clone()
    assert distillation_loss(same, (same / T).softmax(1), T).abs().item() < 1e-12


class Scaled(torch.nn.Module):
    """A stand-in teacher: fixed logits from the mean of its input's channels."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = torch.nn.Parameter(weight, requires_grad=False)

    def forward(self, x):
        return x.mean(dim=(2, 3)) @ self.weight


def test_the_val_acc_vote_weights_teachers_and_blends_with_the_recipe_loss():
    import contextlib

    from cifar10_levels.data.normalize import Normalizer
    from cifar10_levels.recipes import get_recipe

    generator = torch.Generator().manual_seed(1)
    recipe = get_recipe("1").with_overrides(kd_weight=0.3, kd_temperature=2.0, kd_vote="val_acc")
    student = Normalizer(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    models = [Scaled(torch.randn(3, 10, generator=generator) * 5) for _ in range(2)]
    records = [{"arch": "a", "img_size": 32, "val_acc": 0.2, "sha256": "0" * 64},
               {"arch": "b", "img_size": 32, "val_acc": 0.6, "sha256": "1" * 64}]
    taught = Teachers([Teacher(m, student, r) for m, r in zip(models, records)], student, recipe,
                      contextlib.nullcontext, torch.device("cpu"))
    assert taught.shares == pytest.approx([0.25, 0.75])
    assert [r["vote_weight"] for r in taught.records] == pytest.approx([0.25, 0.75])
    batch = torch.randn(4, 3, 32, 32, generator=generator)
    vote = 0.25 * (models[0](batch) / 2).softmax(1) + 0.75 * (models[1](batch) / 2).softmax(1)
    torch.testing.assert_close(taught.vote(batch), vote)
    logits, recipe_loss = torch.randn(4, 10, generator=generator), torch.tensor(1.7)
    expected = 0.7 * recipe_loss + 0.3 * 4 * F.kl_div((logits / 2).log_softmax(1), vote, reduction="batchmean")
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=generator)
    torch.testing.assert_close(taught.distilled(recipe_loss, logits, batch, images), expected)
    # kd_view "clean": the vote is on the images before augmentation, in the student's normalization
    clean = Teachers([Teacher(m, student, dict(r)) for m, r in zip(models, records)], student,
                     recipe.with_overrides(kd_view="clean"), contextlib.nullcontext, torch.device("cpu"))
    unaugmented = student.standardize(images)
    vote = 0.25 * (models[0](unaugmented) / 2).softmax(1) + 0.75 * (models[1](unaugmented) / 2).softmax(1)
    expected = 0.7 * recipe_loss + 0.3 * 4 * F.kl_div((logits / 2).log_softmax(1), vote, reduction="batchmean")
    torch.testing.assert_close(clean.distilled(recipe_loss, logits, batch, images), expected)
    mean = Teachers([Teacher(m, student, dict(r)) for m, r in zip(models, records)], student,
                    recipe.with_overrides(kd_vote="mean"), contextlib.nullcontext, torch.device("cpu"))
    assert mean.shares == [0.5, 0.5]


# ---- training with teachers --------------------------------------------------------------------

@pytest.mark.slow
def test_kd_weight_0_trains_exactly_as_without_teachers(teachers, tiny_cifar, tmp_path):
    """Level 4 (Mixup/CutMix, TTA): the teachers' passes change neither the student's data stream nor
    its weights when their term weighs nothing."""
    plain = train(tiny_cifar, tmp_path / "plain", "--level", "4", *STUDENT, *ONE_EPOCH)
    taught = train(tiny_cifar, tmp_path / "kd0", "--level", "4", *STUDENT, *ONE_EPOCH,
                   "--teachers", teachers, "--kd-weight", "0")
    assert "distillation:" in taught.stdout and "distillation:" not in plain.stdout
    run = "L4-test_resnet-s42"
    for name in ("best.safetensors", "last.safetensors"):
        a, b = load_file(tmp_path / "plain" / run / name), load_file(tmp_path / "kd0" / run / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    plain_results, taught_results = read_results(tmp_path / "plain"), read_results(tmp_path / "kd0")
    for key in ("test_acc", "test_acc_tta", "best_val_acc"):
        assert plain_results[key] == taught_results[key], key
    assert [h["train_loss"] for h in history(tmp_path / "plain" / run)] == \
        [h["train_loss"] for h in history(tmp_path / "kd0" / run)]
    assert "teachers" in taught_results and "teachers" not in plain_results


def with_meta(source: Path, target: Path, **changes) -> Path:
    """A copy of checkpoint `source` whose metadata `changes` (JSON text) replace."""
    with safe_open(str(source), framework="pt") as f:
        header = f.metadata()
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(load_file(source), str(target), metadata={**header, **changes})
    return target


@pytest.mark.slow
def test_teachers_see_the_students_augmented_mixed_batch_at_their_own_size_and_normalization(
        teachers, tiny_cifar, tmp_path, monkeypatch):
    """Every training step: each teacher's input is the batch TrainAugment.pixels made (Mixup on),
    moved from the student's mean/std to the teacher's and resized to the teacher's size; the student
    trains at 40 px, the teachers at 32 (the batch's own size), 40 and 48 px."""
    from cifar10_levels.data.augment import TrainAugment
    from cifar10_levels.recipes import CIFAR10_MEAN, CIFAR10_STD, LEVELS

    files = teacher_files(teachers)
    # a third teacher in CIFAR-10's statistics at 40 px (test_resnet pools globally: any size runs)
    with_meta(files["test_resnet"], tmp_path / "teachers" / "cifar_stats.safetensors",
                            mean=json.dumps(list(CIFAR10_MEAN)), std=json.dumps(list(CIFAR10_STD)),
             img_size="40")
    shutil.copy(files["test_resnet"], tmp_path / "teachers" / "resnet.safetensors")
    shutil.copy(files["test_convnext"], tmp_path / "teachers" / "convnext.safetensors")

    batches, inputs, loaded = [], {}, []
    pixels = TrainAugment.pixels

    def recording_pixels(self, images, labels, mix):
        batch, targets = pixels(self, images, labels, mix)
        batches.append((batch.clone(), targets.clone(), mix))
        return batch, targets

    init = Teachers.__init__

    def recording_init(self, teachers, *args, **kwargs):
        init(self, teachers, *args, **kwargs)
        for teacher in teachers:
            seen = inputs.setdefault(Path(teacher.record["path"]).name, [])
            teacher.model.register_forward_pre_hook(lambda _, a, seen=seen: seen.append(a[0].clone()))
        loaded.append(self)

    monkeypatch.setattr(TrainAugment, "pixels", recording_pixels)
    monkeypatch.setattr(Teachers, "__init__", recording_init)
    train(tiny_cifar, tmp_path / "out", "--level", "5", "--teachers", tmp_path / "teachers", *STUDENT,
          "--img-size", "40", "--train-limit", "40", *ONE_EPOCH)

    (taught,) = loaded
    imagenet = (LEVELS["1"].mean, LEVELS["1"].std)  # what the teachers trained with
    expected_inputs = {"resnet.safetensors": (32, *imagenet), "convnext.safetensors": (48, *imagenet),
                       "cifar_stats.safetensors": (40, CIFAR10_MEAN, CIFAR10_STD)}
    assert sorted(inputs) == sorted(expected_inputs)
    assert len(batches) == 5  # 40 images in batches of 8
    student_mean, student_std = (torch.tensor(v).view(1, 3, 1, 1) for v in (LEVELS["5"].mean,
                                                                           LEVELS["5"].std))
    for name, (size, mean, std) in expected_inputs.items():
        seen = inputs[name]
        assert len(seen) >= len(batches)  # then the test set's vote
        for (batch, targets, mix), got in zip(batches, seen):
            assert mix and targets.shape == (8, 10)  # soft targets: the batch was mixed
            assert batch.shape == (8, 3, 32, 32)
            unit = batch * student_std + student_mean                    # back to [0, 1] pixels
            expected = (unit - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
            if size != 32:
                expected = F.interpolate(expected, size=(size, size), mode="bilinear", align_corners=False)
            assert got.shape == (8, 3, size, size), name
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    for teacher in taught.teachers:
        assert not teacher.model.training
        assert not any(p.requires_grad for p in teacher.model.parameters())


@pytest.mark.slow
def test_with_kd_view_clean_the_teachers_see_the_images_before_augmentation(teachers, tiny_cifar, tmp_path,
                                                                            monkeypatch):
    """Level 1 (no Mixup): the student trains on its cropped, flipped batch, each teacher sees the
    loader's images as they are, at its own size and normalization."""
    from cifar10_levels.data.augment import TrainAugment
    from cifar10_levels.data.normalize import Normalizer
    from cifar10_levels.recipes import LEVELS

    loaded, inputs, augmented = [], [], []
    pixels, init = TrainAugment.pixels, Teachers.__init__

    def recording_pixels(self, images, labels, mix):
        batch, targets = pixels(self, images, labels, mix)
        loaded.append(images.clone())
        augmented.append(batch.clone())
        return batch, targets

    def recording_init(self, taught, *args, **kwargs):
        init(self, taught, *args, **kwargs)
        for teacher in taught:
            teacher.model.register_forward_pre_hook(
                lambda _, a, size=teacher.normalize.img_size: inputs.append((size, a[0].clone())))

    monkeypatch.setattr(TrainAugment, "pixels", recording_pixels)
    monkeypatch.setattr(Teachers, "__init__", recording_init)
    result = train(tiny_cifar, tmp_path / "out", "--teachers", teachers, *STUDENT, "--train-limit", "16",
                   *ONE_EPOCH, "--kd-view", "clean")
    assert "the teachers seeing the images before augmentation" in result.stdout
    assert len(loaded) == 2  # 16 images in batches of 8
    steps = inputs[:len(TEACHERS) * len(loaded)]  # then the test set's vote
    assert sorted({size for size, _ in steps}) == [32, 48]
    mean, std = LEVELS["1"].mean, LEVELS["1"].std
    for step, (images, batch) in enumerate(zip(loaded, augmented)):
        assert not torch.equal(batch, Normalizer(32, mean, std)(images))  # the student's was augmented
        for size, got in steps[step * len(TEACHERS):(step + 1) * len(TEACHERS)]:
            torch.testing.assert_close(got, Normalizer(size, mean, std)(images), rtol=1e-4, atol=1e-5)
    import yaml
    (config,) = (tmp_path / "out").glob("*/config.yaml")
    assert yaml.safe_load(config.read_text())["kd_view"] == "clean"


def first_layer(model: torch.nn.Module) -> torch.nn.Module:
    """Its first module without children: inside the forward that Accelerate's autocast wraps."""
    return next(m for m in model.modules() if next(m.children(), None) is None)


def autocast_seen() -> tuple:
    """The CPU autocast a forward pass runs under: (on, dtype if on)."""
    on = torch.is_autocast_enabled("cpu")
    return on, torch.get_autocast_dtype("cpu") if on else None


@pytest.mark.slow
@pytest.mark.parametrize("precision, expected", [("bf16", (True, torch.bfloat16)), ("no", (False, None))])
def test_teachers_run_in_the_students_precision(precision, expected, teachers, tiny_cifar, tmp_path,
                                                monkeypatch):
    """The teachers are not prepared by Accelerate, whose autocast wraps only the student: their
    passes (training steps and the test set's vote) still run in the run's precision."""
    import cifar10_levels.train.setup as setup

    seen = {"student": [], "teachers": []}
    create_model, init = setup.create_model, Teachers.__init__

    def recording_model(*args, **kwargs):
        model = create_model(*args, **kwargs)
        first_layer(model).register_forward_pre_hook(lambda *_: seen["student"].append(autocast_seen()))
        return model

    def recording_init(self, taught, *args, **kwargs):
        init(self, taught, *args, **kwargs)
        for teacher in taught:
            first_layer(teacher.model).register_forward_pre_hook(
                lambda *_: seen["teachers"].append(autocast_seen()))

    monkeypatch.setattr(setup, "create_model", recording_model)
    monkeypatch.setattr(Teachers, "__init__", recording_init)
    train(tiny_cifar, tmp_path / "out", "--level", "5", "--teachers", teachers, *STUDENT,
          "--train-limit", "16", *ONE_EPOCH, "--mixed-precision", precision)
    assert seen["student"] and set(seen["student"]) == {expected}
    assert len(seen["teachers"]) > 2 * 2 and set(seen["teachers"]) == {expected}


@pytest.mark.slow
def test_teacher_files_are_left_alone_and_the_student_saves_only_itself(student, teachers, tmp_path):
    assert student["teachers_after"] == student["teachers_before"]
    run_dir = student["run_dir"]
    student_keys = set(load_file(run_dir / "best.safetensors"))
    teacher_hashes = {sha256(p) for p in teacher_files(teachers).values()}
    saved = sorted(run_dir.rglob("*.safetensors"))
    assert run_dir / "state" / "model.safetensors" in saved
    assert [p.name for p in (run_dir / "state").glob("*.safetensors")] == ["model.safetensors"]
    for path in saved:
        assert set(load_file(path)) == student_keys, path
        assert sha256(path) not in teacher_hashes, path
    assert not [p for p in run_dir.rglob("*") if p.is_symlink()]


@pytest.mark.slow
def test_results_config_metadata_and_history_of_a_distilled_run(student, teachers):
    run_dir, stdout = student["run_dir"], student["stdout"]
    results = json.loads((run_dir / "results.json").read_text())
    files = teacher_files(teachers)
    records = {t["arch"]: t for t in results["teachers"]}
    assert sorted(records) == sorted(arch for arch, _ in TEACHERS)
    for arch, size in TEACHERS:
        record, path = records[arch], files[arch]
        assert Path(record["path"]) == path.resolve()
        assert re.fullmatch(r"[0-9a-f]{64}", record["sha256"]) and record["sha256"] == sha256(path)
        assert record["img_size"] == size
        teacher_results = json.loads((path.parent / "results.json").read_text())
        assert record["val_acc"] == pytest.approx(teacher_results["best_val_acc"])
        assert record["test_acc"] == pytest.approx(teacher_results["test_acc"])
        assert record["vote_weight"] == pytest.approx(0.5)
    vote = results["teachers_vote"]
    assert vote["teachers"] == 2 and vote["tta_views"] == 5  # level 5's TTA
    assert 0 <= vote["test_acc"] <= 1 and 0 <= vote["test_acc_tta"] <= 1
    assert results["level"] == "5" and results["config"]["teachers"] == [str(teachers)]
    assert re.search(r"^teachers: \[.*\]$", (run_dir / "config.yaml").read_text(), re.M)
    import yaml

    assert yaml.safe_load((run_dir / "config.yaml").read_text())["teachers"] == [str(teachers)]

    from cifar10_levels.checkpoint.meta import read_meta

    for name in ("best.safetensors", "last.safetensors"):
        distilled_from = read_meta(run_dir / name).distilled_from
        assert sorted(distilled_from) == sorted(f"{arch} {records[arch]['sha256'][:16]}"
                                                for arch, _ in TEACHERS), name
    (record,) = history(run_dir)
    assert 0 < record["teacher_seconds"] < record["epoch_seconds"]
    assert record["images_per_s_without_teachers"] > record["images_per_s"]
    assert stdout.count("distillation:") == 1
    line = next(line for line in stdout.splitlines() if line.startswith("distillation:"))
    assert "0.2 x recipe's + 0.8 x" in line and "2 teacher(s)" in line
    assert "test_convnext 48 px" in line and "test_resnet 32 px" in line
    assert "without the teachers' passes" in stdout
    assert "the 2 teachers' soft vote on the same test set" in stdout


# ---- resume ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_resume_continues_with_the_same_teachers_and_refuses_changed_ones(teachers, tiny_cifar, tmp_path,
                                                                          monkeypatch):
    """The student's run sits beside its teachers' runs (--teachers DIR --output-dir DIR): its own
    checkpoints are never its teachers, before or after the stop."""
    from cifar10_levels.train import trainer

    out = tmp_path / "ckpts"
    own = {}
    for arch, path in teacher_files(teachers).items():
        own[arch] = out / path.parent.name / path.name
        own[arch].parent.mkdir(parents=True)
        shutil.copy(path, own[arch])
    run_dir = out / STUDENT_RUN
    args = ["--level", "5", "--teachers", out, *STUDENT, "--epochs", "0", "2"]

    save_state = trainer.Trainer.save_state

    def stop_after_epoch_1(self):
        save_state(self)
        if self.state.epochs_done == 1:
            self.accelerator.set_trigger()  # as SIGTERM would: stop at the next check (step 10)

    monkeypatch.setattr(trainer.Trainer, "save_state", stop_after_epoch_1)
    stopped = train(tiny_cifar, out, *args, check=False)
    monkeypatch.undo()
    assert stopped.returncode == 143, stopped.stdout + stopped.stderr
    state = json.loads((run_dir / "state" / "train_state.json").read_text())
    assert (state["epochs_done"], state["step"]) == (1, 10)
    assert state["teachers_sha256"] == [sha256(own["test_convnext"]), sha256(own["test_resnet"])]
    assert (run_dir / "best.safetensors").is_file()
    first = history(run_dir)

    # a teacher file rewritten with other weights (same name, same metadata): refused, nothing written
    changed = own["test_resnet"]
    original = changed.read_bytes()
    with safe_open(str(changed), framework="pt") as f:
        header = f.metadata()
    tensors = load_file(changed)
    name = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[name] = tensors[name] + 0.01
    save_file(tensors, str(changed), metadata=header)
    before = snapshot(out)
    refused = train(tiny_cifar, out, *args, "--resume", check=False)
    line = assert_refused(refused, "--teachers")
    assert str(run_dir) in line and "sha256" in line
    assert snapshot(out) == before
    # the same files again: it goes on (without --teachers: config.yaml names them)
    changed.write_bytes(original)
    resumed = train(tiny_cifar, out, "--level", "5", *STUDENT, "--epochs", "0", "2", "--resume")
    assert "resuming from" in resumed.stdout and "distillation:" in resumed.stdout
    records = history(run_dir)
    assert [h["epoch"] for h in records] == [1, 2] and records[:1] == first
    assert all("teacher_seconds" in h for h in records)
    results = read_results(out)
    assert [t["sha256"] for t in results["teachers"]] == state["teachers_sha256"]
    assert "teachers_vote" in results


@pytest.mark.slow
def test_resume_of_a_run_without_teachers_refuses_teachers(teachers, tiny_cifar, tmp_path):
    """config.yaml of a run trained without teachers: --teachers on its resume is a change."""
    args = [*STUDENT, "--train-limit", "80", *ONE_EPOCH]
    train(tiny_cifar, tmp_path, *args)
    before = snapshot(tmp_path)
    refused = train(tiny_cifar, tmp_path, *args, "--resume", "--teachers", teachers, check=False)
    assert_refused(refused, "--teachers")
    assert snapshot(tmp_path) == before


# ---- refusals ----------------------------------------------------------------------------------

def make_bad_teacher(case: str, root: Path) -> tuple[list[str], list[str]]:
    """(extra train.py arguments, words the one error line must hold) for a bad-input `case`."""
    from helpers.faults import meta_header, write_checkpoint

    good = write_checkpoint(root / "good" / "best.safetensors")  # a test_resnet teacher of the data's classes
    if case == "missing path":
        return ["--teachers", str(root / "no_such_run")], ["--teachers", "no_such_run", "no such file"]
    if case in ("pickle .pt", "pickle .pth", "pickle .bin"):
        path = root / f"teacher{case.split()[-1]}"
        torch.save(load_file(good), path)
        return ["--teachers", str(path)], ["--teachers", path.name, "pickle"]
    if case == "directory of pickles":
        (root / "pickles").mkdir()
        torch.save(load_file(good), root / "pickles" / "teacher.pth")
        return ["--teachers", str(root / "pickles")], ["--teachers", "no checkpoints", "teacher.pth"]
    if case == "other classes":
        from cifar10_levels.models.factory import create_model

        path = root / "three_classes.safetensors"
        state = create_model("test_resnet", 3).state_dict()
        save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=meta_header(
            num_classes="3", class_names=json.dumps(["cat", "dog", "bird"])))
        return ["--teachers", str(path)], ["--teachers", path.name, "classes"]
    if case == "one of two with other classes":
        path = with_meta(good, root / "renamed.safetensors", class_names=json.dumps(CLASS_NAMES[::-1]))
        return ["--teachers", str(good), str(path)], ["--teachers", "classes"]
    if case == "truncated safetensors":
        path = root / "truncated.safetensors"
        data = good.read_bytes()
        path.write_bytes(data[:len(data) // 2])
        return ["--teachers", str(path)], ["--teachers", path.name]
    if case == "not a safetensors file":
        path = root / "garbage.safetensors"
        path.write_bytes(b"\x00\x01 not a checkpoint " * 10)
        return ["--teachers", str(path)], ["--teachers", path.name]
    if case == "directory without checkpoints":
        (root / "empty").mkdir()
        (root / "empty" / "notes.txt").write_text("no runs here")
        return ["--teachers", str(root / "empty")], ["--teachers", "no checkpoints"]
    if case == "level 5 without teachers":
        return ["--level", "5"], ["--level 5", "--teachers"]
    if case == "kd-weight above 1":
        return ["--teachers", str(good), "--kd-weight", "1.5"], ["--kd-weight", "1.5"]
    if case == "kd-weight below 0":
        return ["--teachers", str(good), "--kd-weight", "-0.1"], ["--kd-weight"]
    if case == "kd-weight nan":
        return ["--teachers", str(good), "--kd-weight", "nan"], ["--kd-weight"]
    if case == "kd-temperature 0":
        return ["--teachers", str(good), "--kd-temperature", "0"], ["--kd-temperature"]
    if case == "kd-temperature negative":
        return ["--teachers", str(good), "--kd-temperature", "-2"], ["--kd-temperature"]
    if case == "kd-vote unknown":
        return ["--teachers", str(good), "--kd-vote", "median"], ["--kd-vote"]
    if case == "kd-view unknown":
        return ["--teachers", str(good), "--kd-view", "center"], ["--kd-view"]
    if case == "kd-view clean with Mixup":
        return ["--level", "5", "--teachers", str(good), "--kd-view", "clean"], ["--kd-view clean", "Mixup"]
    raise AssertionError(case)


BAD_INPUTS = ["missing path", "pickle .pt", "pickle .pth", "pickle .bin", "directory of pickles",
              "other classes", "one of two with other classes", "truncated safetensors",
              "not a safetensors file", "directory without checkpoints", "level 5 without teachers",
              "kd-weight above 1", "kd-weight below 0", "kd-weight nan", "kd-temperature 0",
              "kd-temperature negative", "kd-vote unknown", "kd-view unknown", "kd-view clean with Mixup"]


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_teacher_inputs_are_refused_in_one_line(case, tiny_cifar, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    extra, words = make_bad_teacher(case, inputs)
    before = snapshot(inputs)
    result = train(tiny_cifar, tmp_path / "out", *STUDENT, *ONE_EPOCH, *extra, check=False)
    assert_refused(result, *words)
    assert snapshot(inputs) == before
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.safetensors"))


# ---- two processes -----------------------------------------------------------------------------

@pytest.mark.slow
def test_a_two_process_distillation_run(student, teachers, tiny_cifar, tmp_path):
    """Each process holds its own teachers; one results.json with the same test-set vote as one
    process gives."""
    command = [Path(sys.executable).parent / "accelerate", "launch", "--multi_gpu", "--num_processes", "2",
               "--num_cpu_threads_per_process", "1", "--main_process_port", free_port(),
               ROOT / "train.py", "--dataset", tiny_cifar, "--output-dir", tmp_path, *TINY_TRAIN,
               "--level", "5", "--teachers", teachers, *STUDENT, *ONE_EPOCH]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run([str(c) for c in command], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "hardware: 2 CPU process(es)" in result.stdout
    assert result.stdout.count("distillation:") == 1
    results = read_results(tmp_path)
    assert results["num_processes"] == 2 and results["global_batch"] == 16
    one_process = json.loads((student["run_dir"] / "results.json").read_text())
    assert results["teachers_vote"] == one_process["teachers_vote"]
    assert [t["sha256"] for t in results["teachers"]] == [t["sha256"] for t in one_process["teachers"]]
    (record,) = history(tmp_path / STUDENT_RUN)
    assert record["teacher_seconds"] > 0
    for path in teacher_files(teachers).values():
        assert sha256(path) in {t["sha256"] for t in results["teachers"]}


# ---- the tools that read a student -------------------------------------------------------------

@pytest.mark.slow
def test_ensemble_takes_the_student_and_the_report_judges_it_by_its_teachers_vote(student, teachers,
                                                                                   tiny_cifar, tmp_path):
    from cifar10_levels.cli.ensemble import main as ensemble_main
    from cifar10_levels.tracking.results_table import target_met
    from helpers.faults import call

    outcome = call(ensemble_main, "--weights", teachers, student["run_dir"], "--dataset", tiny_cifar,
                   "--output-dir", tmp_path / "ensemble", "--batch-size", "32")
    assert outcome.code == 0, outcome.stderr
    members = json.loads((tmp_path / "ensemble" / "ensemble_results.json").read_text())["members"]
    assert sorted((m["arch"], m["level"]) for m in members) == [
        ("test_convnext", "1"), ("test_resnet", "1"), ("test_resnet", "5")]

    report = subprocess.run([sys.executable, "-m", "cifar10_levels.cli.report", student["out"]], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert report.returncode == 0, report.stderr
    results = json.loads((student["run_dir"] / "results.json").read_text())
    vote = results["teachers_vote"]
    bar = max(vote["test_acc"], vote["test_acc_tta"])
    (row,) = [line for line in report.stdout.splitlines() if line.startswith("| 5 |")]
    cells = [c.strip() for c in row.strip("|").split(" | ")]
    assert cells[:3] == ["5", "ensemble distilled into one model", "test_resnet"]
    assert cells[4] == f">= {bar:.2%} (its teachers' vote)"
    best = max(results["test_acc"], results["test_acc_tta"])
    met = round(best * 100, 6) >= float(f"{bar * 100:.2f}")
    assert target_met(cells[4], best, None) is met
    assert cells[5] == ("met" if met else "not met")
    assert cells[6] == STUDENT_RUN


@pytest.mark.slow
def test_the_model_card_of_an_exported_student_names_its_teachers(student, tmp_path):
    from cifar10_levels.cli.export import main as export_main
    from helpers.faults import call

    outcome = call(export_main, student["run_dir"] / "best.safetensors", tmp_path / "model")
    assert outcome.code == 0, outcome.stderr
    card = (tmp_path / "model" / "README.md").read_text()
    results = json.loads((student["run_dir"] / "results.json").read_text())
    (line,) = [line for line in card.splitlines() if "distilled from" in line]
    line = re.sub(r"\\(.)", r"\1", line)  # markdown's escapes (test\_resnet) as the text reads
    for teacher in results["teachers"]:
        assert f"{teacher['arch']} {teacher['sha256'][:16]}" in line
