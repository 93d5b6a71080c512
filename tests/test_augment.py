import os
import subprocess
import sys
from pathlib import Path

import torch
from accelerate.utils import set_seed

from cifar10_levels.augment import (TTA_VIEWS, Normalizer, TrainAugment, randaugment, random_crop_flip,
                                    tta_views)
from cifar10_levels.recipes import LEVELS, Augment

NORM = Normalizer(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def batch(n: int = 16) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)


def test_mixup_cutmix_targets_are_distributions_with_smoothing_mass():
    aug = TrainAugment(LEVELS["2"].augment, NORM, label_smoothing=0.1, num_classes=10,
                       device=torch.device("cpu"))
    labels = torch.arange(16) % 10
    for _ in range(10):
        x, target = aug(batch(), labels, mix=True)
        assert target.shape == (16, 10)
        assert torch.allclose(target.sum(1), torch.ones(16))
        assert target.min() >= 0.1 / 10 - 1e-6  # label smoothing leaves 0.01 on every class
        assert x.dtype == torch.float32 and x.shape == (16, 3, 32, 32)
    x, target = aug(batch(), labels, mix=False)
    assert torch.equal(target, labels)


def test_cutmix_lambda_matches_the_pasted_area():
    from timm.data import Mixup

    mix = Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0, num_classes=10)
    n = 8
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 32, 32).clone()
    labels = torch.arange(n)
    for _ in range(10):
        mixed, target = mix(x.clone(), labels)
        for i in range(n):
            own = (mixed[i, 0] == i).float().mean().item()
            assert abs(target[i, i].item() - own) < 1e-6


def test_pixel_ops_keep_dtype_shape_and_range():
    x = batch()
    for out in (randaugment(x, 2, 9), random_crop_flip(x, 4, True)):
        assert out.dtype == torch.uint8 and out.shape == x.shape
    aug = TrainAugment(Augment(random_erasing=1.0), NORM, 0.0, 10, torch.device("cpu"))
    plain = TrainAugment(Augment(), NORM, 0.0, 10, torch.device("cpu"))
    torch.manual_seed(0)
    erased, _ = aug(x, torch.zeros(16, dtype=torch.long), mix=False)
    torch.manual_seed(0)
    kept, _ = plain(x, torch.zeros(16, dtype=torch.long), mix=False)
    assert erased.shape == kept.shape and erased.dtype == torch.float32
    assert not torch.equal(erased, kept)  # erasing ran
    assert kept.min() >= (0 - 0.5) / 0.25 - 1e-5 and kept.max() <= (1 - 0.5) / 0.25 + 1e-5


def test_random_crop_is_a_shift_with_zero_fill():
    x = batch(64)
    out = random_crop_flip(x, 4, flip=False)
    # every output is its input shifted by at most 4 px: its non-zero pixels are a sub-block of x
    for i in range(8):
        match = False
        for dy in range(-4, 5):
            for dx in range(-4, 5):
                shifted = torch.roll(x[i], shifts=(dy, dx), dims=(1, 2))
                inner = out[i][:, 4:-4, 4:-4]
                if torch.equal(inner, shifted[:, 4:-4, 4:-4]):
                    match = True
        assert match


def test_tta_views_start_with_identity_and_are_deterministic():
    x = batch()
    views = tta_views(x, len(TTA_VIEWS))
    assert torch.equal(views[0], x) and torch.equal(views[1], x.flip(3))
    assert all(torch.equal(a, b) for a, b in zip(views, tta_views(x, len(TTA_VIEWS))))


class ConstantModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.randn(10))

    def forward(self, x):
        return self.logits.expand(x.shape[0], 10)


class FlipInvariantModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3 * 32, 10)

    def forward(self, x):
        return self.fc((x + x.flip(3)).mean(3).flatten(1))


def _evaluate(acc, model, images, labels, tta):
    from cifar10_levels.data import ImageSet, make_loader
    from cifar10_levels.loop import evaluate

    loader = acc.prepare(make_loader(ImageSet(images, labels), 50, train=False, seed=0))
    return evaluate(acc, model, loader, NORM, tta)


def test_tta_of_input_blind_model_equals_plain_output(accelerator):
    images, labels = batch(120), torch.randint(0, 10, (120,))
    model = ConstantModel()
    plain = _evaluate(accelerator, model, images, labels, 1)
    tta = _evaluate(accelerator, model, images, labels, 5)
    assert torch.allclose(plain.probs, tta.probs, atol=1e-6)


def test_tta_of_flip_invariant_model_equals_plain_accuracy(accelerator):
    images, labels = batch(120), torch.randint(0, 10, (120,))
    torch.manual_seed(0)
    model = FlipInvariantModel()
    plain = _evaluate(accelerator, model, images, labels, 1)
    tta = _evaluate(accelerator, model, images, labels, 2)
    assert tta.acc == plain.acc and tta.plain_acc == plain.acc


def _augment_on_each_rank():
    from accelerate import Accelerator

    acc = Accelerator()
    assert acc.num_processes == 2
    set_seed(42, device_specific=True)
    aug = TrainAugment(LEVELS["2"].augment, NORM, 0.1, 10, acc.device)
    torch.manual_seed(1234)  # the same input batch on every rank...
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    set_seed(42, device_specific=True)  # ...augmented with the rank's own stream
    out, _ = aug(x, torch.arange(8), mix=True)
    gathered = acc.gather(out.unsqueeze(0))
    if acc.is_main_process:
        assert not torch.equal(gathered[0], gathered[1]), "two ranks augmented identically"
        set_seed(42, device_specific=True)
        again, _ = aug(x, torch.arange(8), mix=True)
        assert torch.equal(again, out), "a fixed seed must reproduce the batch"


def test_each_rank_augments_differently_and_reproducibly():
    # debug_launcher forks: do it from a fresh interpreter, since forking a process whose OpenMP
    # thread pool already ran (earlier tests) can deadlock the children
    code = ("from accelerate import debug_launcher; import test_augment; "
            "debug_launcher(test_augment._augment_on_each_rank, num_processes=2)")
    here = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here.parent), str(here)])}
    result = subprocess.run([sys.executable, "-c", code], cwd=here, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_folded_color_jitter_equals_brightness_then_contrast_then_saturation_then_normalize():
    from cifar10_levels.augment import color_jitter_standardize_

    def gray(x):
        return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]

    x = torch.rand(32, 3, 32, 32) * 1.2  # some values clamp
    torch.manual_seed(3)
    b, c, s = torch.empty(3, 32, 1, 1, 1).uniform_(0.8, 1.2)
    x1 = x * b
    m = gray(x1).mean(dim=(2, 3), keepdim=True)
    x2 = (x1 - m) * c + m
    jittered = ((x2 - gray(x2)) * s + gray(x2)).clamp(0, 1)
    expected = (jittered - torch.tensor(NORM.mean).view(1, 3, 1, 1)) / torch.tensor(NORM.std).view(1, 3, 1, 1)
    torch.manual_seed(3)
    assert torch.allclose(color_jitter_standardize_(x.clone(), 0.2, NORM), expected, atol=1e-5)
    torch.manual_seed(3)  # on 0-255 values (the training path) it is the same map
    assert torch.allclose(color_jitter_standardize_(x * 255, 0.2, NORM, max_value=255), expected, atol=1e-4)
    assert torch.equal(color_jitter_standardize_(x * 255, 0.0, NORM, max_value=255),
                       NORM.standardize_(x * 255, max_value=255))


def test_augmentation_flags_override_only_what_they_name():
    from cifar10_levels.cli import recipe_from_args, train_parser

    args = train_parser().parse_args(["--level", "2", "--color-jitter", "0", "--random-erasing", "0.5"])
    policy = recipe_from_args(args).augment
    assert policy.color_jitter == 0 and policy.random_erasing == 0.5
    untouched = {k: v for k, v in vars(LEVELS["2"].augment).items() if k not in ("color_jitter", "random_erasing")}
    assert all(getattr(policy, k) == v for k, v in untouched.items())
    assert recipe_from_args(train_parser().parse_args(["--level", "2"])).augment == LEVELS["2"].augment


def test_random_flip_mirrors_some_images_and_leaves_the_rest():
    x = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    before = x.clone()
    out = random_crop_flip(x, 0, flip=True)
    assert torch.equal(x, before)  # the input is left alone
    mirrored = [torch.equal(o, b.flip(2)) for o, b in zip(out, before)]
    kept = [torch.equal(o, b) for o, b in zip(out, before)]
    assert all(m or k for m, k in zip(mirrored, kept))
    assert 10 < sum(mirrored) < 54


def test_crop_then_flip_in_one_gather_equals_the_two_steps():
    x = batch(64)
    torch.manual_seed(7)
    out = random_crop_flip(x, 4, flip=True)
    torch.manual_seed(7)  # the same draws, in the same order: shifts, then which images flip
    dx, dy = torch.randint(-4, 5, (64, 1)), torch.randint(-4, 5, (64, 1))
    flipped = torch.rand(64, 1) < 0.5
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(64):
        top, left = 4 - int(dy[i]), 4 - int(dx[i])
        crop = padded[i, :, top:top + 32, left:left + 32]
        assert torch.equal(out[i], crop.flip(2) if flipped[i] else crop)
