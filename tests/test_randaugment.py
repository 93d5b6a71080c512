"""Per-image RandAugment against torchvision's own ops: same op, same magnitude, same pixels."""
import torch
import torch.nn.functional as F

from cifar10_levels.data.randaugment import OPS, apply_ops, apply_torchvision_op, op_space, randaugment


def photo_like(n: int, seed: int = 0) -> torch.Tensor:
    """Smooth colour fields with noise, plus flat and two-level images (the edge cases of
    AutoContrast and Equalize), as uint8 (n, 3, 32, 32)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g) * 255
    x = F.interpolate(coarse, size=32, mode="bilinear", align_corners=False)
    x = (x + torch.randn(n, 3, 32, 32, generator=g) * 12).clamp(0, 255).to(torch.uint8)
    x[0] = 128
    x[1] = (torch.rand(3, 32, 32, generator=g) < 0.5).to(torch.uint8) * 200 + 20
    return x


def test_every_op_and_sign_matches_torchvision_pixel_for_pixel():
    x = photo_like(24)
    for magnitude in (9, 30):
        space = op_space(magnitude, 32, 32)
        for k, name in enumerate(OPS):
            for negative in ((False, True) if space.signed[k] else (False,)):
                ops = torch.full((len(x),), k)
                ours = apply_ops(x, space, ops, torch.full((len(x),), negative))
                value = -space.magnitudes[k] if negative else space.magnitudes[k]
                theirs = torch.stack([apply_torchvision_op(space.policy, img, name, value) for img in x])
                assert torch.equal(ours, theirs), (name, negative, magnitude)


def test_a_mixed_batch_gives_each_image_its_own_op():
    x = photo_like(64, seed=1)
    space = op_space(9, 32, 32)
    g = torch.Generator().manual_seed(0)
    ops = torch.randint(len(OPS), (len(x),), generator=g)
    negative = (torch.rand(len(x), generator=g) < 0.5) & torch.tensor(space.signed)[ops]
    out = apply_ops(x, space, ops, negative)
    for i in range(len(x)):
        k = int(ops[i])
        value = -space.magnitudes[k] if negative[i] else space.magnitudes[k]
        assert torch.equal(out[i], apply_torchvision_op(space.policy, x[i], OPS[k], value)), (i, OPS[k])


def test_draws_are_per_image_and_reproducible_from_the_seed():
    x = photo_like(256, seed=2)
    space = op_space(9, 32, 32)
    torch.manual_seed(5)
    out = randaugment(x, 1, 9)
    # which op each image got: the one whose torchvision output it equals
    variants = []
    for k, name in enumerate(OPS):
        for sign in ((1, -1) if space.signed[k] else (1,)):
            variants.append(torch.stack([apply_torchvision_op(space.policy, img, name, sign * space.magnitudes[k])
                                         for img in x]))
    matched = torch.stack([(v == out).flatten(1).all(1) for v in variants])
    assert matched.any(0).all()  # every image is one of torchvision's ops on it
    assert matched.any(1).sum() >= 20  # a batch of 256 draws nearly all 23 op/sign variants
    torch.manual_seed(5)
    assert torch.equal(randaugment(x, 1, 9), out)
    assert out.dtype == torch.uint8 and out.shape == x.shape
