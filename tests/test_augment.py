import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.utils import set_seed

from cifar10_levels.data.augment import TrainAugment, randaugment, random_crop_flip, translate
from cifar10_levels.data.normalize import Normalizer
from cifar10_levels.evaluation.tta import TTA_VIEWS, tta_views
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


def smoothed_one_hot(labels: torch.Tensor, smoothing: float, classes: int = 10) -> torch.Tensor:
    return torch.full((len(labels), classes), smoothing / classes).scatter_(
        1, labels.view(-1, 1), 1 - smoothing + smoothing / classes)


def soft_target_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The loss a mixing phase trains with: timm's SoftTargetCrossEntropy on timm Mixup's targets,
    which already carry the label smoothing (so it is applied once)."""
    from timm.loss import SoftTargetCrossEntropy

    return SoftTargetCrossEntropy()(logits, targets)


def test_mixup_and_cutmix_loss_equals_the_hand_computation_with_smoothing_applied_once():
    """Logits confident in both classes an image mixes (its own and its partner's, never the same
    here): the soft-target loss is then ~1.1 at every mixing share, and the uniform term a second
    smoothing mixes in is ~4.7, so applying it twice adds ~0.36, some 36,000 times the tolerance."""
    smoothing, n = 0.1, 16
    labels = torch.arange(n) % 10
    assert not (labels == labels.flip(0)).any()
    both = smoothed_one_hot(labels, 0.0) + smoothed_one_hot(labels.flip(0), 0.0)
    logits = 5 * both + 0.1 * torch.randn(n, 10, generator=torch.Generator().manual_seed(0))
    for mixup_alpha, cutmix_alpha in ((1.0, 0.0), (0.0, 1.0)):
        # no other augmentation, so the mixed batch shows lam
        policy = Augment(crop_padding=0, flip=False, color_jitter=0.0, mixup_alpha=mixup_alpha,
                         cutmix_alpha=cutmix_alpha)
        aug = TrainAugment(policy, NORM, smoothing, 10, torch.device("cpu"))
        for _ in range(5):
            images = batch(n)
            x, targets = aug(images, labels, mix=True)
            # batch mode mixes image i with image n-1-i
            own, other = NORM.standardize(images), NORM.standardize(images.flip(0))
            if mixup_alpha:
                lam = ((x - other) * (own - other)).sum() / ((own - other) ** 2).sum()
                assert torch.allclose(x, lam * own + (1 - lam) * other, atol=1e-4)
            else:
                from_own = (x == own).all(1) & ~(x == other).all(1)
                pasted = (x == other).all(1) & ~(x == own).all(1)
                assert bool((from_own | pasted | (own == other).all(1)).all())
                lam = 1 - pasted[0].float().mean()  # one box for the whole batch
                assert bool((pasted == pasted[0]).all())
            expected = lam * smoothed_one_hot(labels, smoothing) + \
                (1 - lam) * smoothed_one_hot(labels.flip(0), smoothing)
            torch.testing.assert_close(targets, expected, atol=1e-5, rtol=0)
            by_hand = -(expected * logits.log_softmax(1)).sum(1).mean()
            torch.testing.assert_close(soft_target_loss(logits, targets), by_hand, atol=1e-5, rtol=0)
            # smoothing applied a second time by the loss: far outside that tolerance
            twice = torch.nn.functional.cross_entropy(logits, targets, label_smoothing=smoothing)
            smoothed_twice = targets * (1 - smoothing) + smoothing / 10
            twice_by_hand = -(smoothed_twice * logits.log_softmax(1)).sum(1).mean()
            torch.testing.assert_close(twice, twice_by_hand, atol=1e-5, rtol=0)
            assert twice.item() - by_hand.item() > 0.3
    x, targets = aug(batch(n), labels, mix=False)  # a phase without mixing keeps the hard labels
    assert torch.equal(targets, labels)


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


def shifted(image: torch.Tensor, right: int, down: int) -> torch.Tensor:
    """`image` (C, H, W) moved right/down by whole pixels, zeros where nothing moves in."""
    out = torch.zeros_like(image)
    _, h, w = image.shape
    # out[y, x] = image[y - down, x - right] wherever that source pixel exists
    out[:, max(down, 0):h + min(down, 0), max(right, 0):w + min(right, 0)] = \
        image[:, max(-down, 0):h - max(down, 0), max(-right, 0):w - max(right, 0)]
    return out


# docs/recipes.md's list of test-time views, in order: (mirror first, then shift right px, shift down px)
DOCUMENTED_VIEWS = [(False, 0, 0), (True, 0, 0), (False, 2, 2), (True, -2, -2), (False, -2, 2),
                (True, 2, -2), (False, 2, -2), (True, -2, 2)]


def test_every_tta_view_is_the_documented_flip_and_shift_pixel_for_pixel():
    x = batch(3)
    views = tta_views(x, 8)
    assert len(views) == 8 and len(TTA_VIEWS) == 8
    for k, (mirror, right, down) in enumerate(DOCUMENTED_VIEWS):
        for i in range(3):
            expected = shifted(x[i].flip(2) if mirror else x[i], right, down)
            assert torch.equal(views[k][i], expected), f"view {k}, image {i}"
    for count in range(1, 9):  # the first `count` views, the same ones
        assert all(torch.equal(a, b) for a, b in zip(tta_views(x, count), views[:count]))
    assert len(tta_views(x, 3)) == 3


class FlipInvariantModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3 * 32, 10)

    def forward(self, x):
        return self.fc((x + x.flip(3)).mean(3).flatten(1))


def _evaluate(acc, model, images, labels, tta):
    from cifar10_levels.data.cifar10 import ImageSet, make_loader
    from cifar10_levels.evaluation.evaluate import evaluate

    loader = acc.prepare(make_loader(ImageSet(images, labels), 50, train=False, seed=0))
    return evaluate(acc, model, loader, NORM, tta)


def test_tta_probabilities_are_the_mean_softmax_over_the_views(accelerator):
    images, labels = batch(120), torch.randint(0, 10, (120,))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 30 * 30, 10))
    with torch.no_grad():
        per_view = [model(NORM(shifted_batch)).softmax(1) for shifted_batch in
                    [torch.stack([shifted(im.flip(2) if m else im, r, d) for im in images])
                     for m, r, d in DOCUMENTED_VIEWS[:5]]]
    tta = _evaluate(accelerator, model, images, labels, 5)
    assert torch.equal(tta.labels, labels)
    torch.testing.assert_close(tta.probs, torch.stack(per_view).mean(0))
    torch.testing.assert_close(tta.plain_probs, per_view[0])
    assert not torch.allclose(per_view[0], per_view[2], atol=1e-3)  # the views really differ
    assert tta.acc == pytest.approx((tta.probs.argmax(1) == labels).float().mean().item())
    plain = _evaluate(accelerator, model, images, labels, 1)
    torch.testing.assert_close(plain.probs, per_view[0])
    loss = torch.nn.functional.cross_entropy(per_view[0].log(), labels).item()
    assert plain.loss == pytest.approx(loss, rel=1e-4) and tta.loss == pytest.approx(loss, rel=1e-4)


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
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def test_folded_color_jitter_equals_brightness_then_contrast_then_saturation_then_normalize():
    from cifar10_levels.data.augment import color_jitter_standardize_

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
    from cifar10_levels.cli.train import recipe_from_args, train_parser

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


def test_alternating_flip_mirrors_each_image_in_exactly_one_of_two_epochs():
    from cifar10_levels.data.augment import AlternatingFlip

    images = batch(400)
    flip = AlternatingFlip(seed=3)
    even = flip(images)
    flip.epoch = 1
    odd = flip(images)
    assert torch.equal(odd, ~even)                  # every image one way in each of the two epochs
    assert 0.4 < even.float().mean().item() < 0.6   # a random half, not all or none
    flip.epoch = 2
    assert torch.equal(flip(images), even)          # depends on the image and epoch parity only
    assert torch.equal(flip(images.flip(0)), even.flip(0))  # not on the batch position
    assert torch.equal(AlternatingFlip(seed=3)(images), even)  # every process, every --resume
    assert not torch.equal(AlternatingFlip(seed=4)(images), even)  # another seed, another half


def test_train_augment_applies_the_alternating_flip_per_epoch():
    policy = Augment(crop_padding=0, flip=True, flip_alternate=True, color_jitter=0.0)
    aug = TrainAugment(policy, NORM, 0.0, 10, torch.device("cpu"), seed=1)
    images = batch(64)
    labels = torch.zeros(64, dtype=torch.long)
    aug.set_epoch(0)
    x0, _ = aug(images, labels, False)
    aug.set_epoch(1)
    x1, _ = aug(images, labels, False)
    plain = NORM(images)
    mirrored0 = torch.tensor([torch.equal(a, b.flip(-1)) and not torch.equal(a, b)
                              for a, b in zip(x0, plain)])
    assert torch.equal(x0, torch.where(mirrored0.view(-1, 1, 1, 1), plain.flip(-1), plain))
    assert torch.equal(x1, torch.where(mirrored0.view(-1, 1, 1, 1), plain, plain.flip(-1)))
    assert 0 < mirrored0.sum() < 64


def test_reflect_fill_mirrors_the_edge_instead_of_zeros():
    x = batch(4)
    n = len(x)
    dx, dy = torch.full((n,), 2), torch.full((n,), -1)
    out = translate(x, dx, dy, 2, fill="reflect")
    padded = torch.nn.functional.pad(x, (2,) * 4, mode="reflect")
    assert torch.equal(out, padded[:, :, 3:35, 0:32])   # content moved right 2 and up 1
    zero = translate(x, dx, dy, 2)
    assert torch.equal(zero[:, :, :, :2], torch.zeros_like(zero[:, :, :, :2]))
    assert torch.equal(zero[:, :, :31, 2:], out[:, :, :31, 2:])  # the same content where both have it


def reflect_shifted(img: torch.Tensor, right: int, down: int) -> torch.Tensor:
    padded = torch.nn.functional.pad(img.unsqueeze(0), (1,) * 4, mode="reflect")[0]
    return padded[:, 1 - down:33 - down, 1 - right:33 - right]


def test_the_shift1_scheme_is_airbenchs_six_weighted_views(accelerator):
    from cifar10_levels.evaluation.tta import tta_scheme
    from cifar10_levels.errors import UserError

    x = batch(3)
    scheme = tta_scheme("shift1", 6)
    assert scheme.weights == pytest.approx((1 / 4, 1 / 4, 1 / 8, 1 / 8, 1 / 8, 1 / 8))
    # identity, mirror; then down-right and up-left by 1 px, each plain and mirrored after the shift
    expected = [x, x.flip(3)] + [torch.stack([reflect_shifted(im, s, s).flip(m) for im in x])
                                 for s in (1, -1) for m in ((), (2,))]
    for k, view in enumerate(tta_views(x, 6, "shift1")):
        assert torch.equal(view, expected[k]), f"view {k}"
    assert tta_scheme("shift1", 3).weights == pytest.approx((0.4, 0.4, 0.2))  # the first N, renormalized
    with pytest.raises(UserError, match="--tta 7: .* 1 to 6"):
        tta_views(x, 7, "shift1")
    images, labels = batch(100), torch.randint(0, 10, (100,))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 30 * 30, 10))
    norm = Normalizer(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), tta_scheme="shift1")
    from cifar10_levels.data.cifar10 import ImageSet, make_loader
    from cifar10_levels.evaluation.evaluate import evaluate

    loader = accelerator.prepare(make_loader(ImageSet(images, labels), 50, train=False, seed=0))
    result = evaluate(accelerator, model, loader, norm, 6)
    with torch.no_grad():
        per_view = [model(norm(v)).softmax(1) for v in tta_views(images, 6, "shift1")]
    torch.testing.assert_close(result.probs, sum(w * p for w, p in zip(scheme.weights, per_view)))
