"""cifar_speednet and the fast recipe: timm build, whitening init, optimizer, end-to-end run."""
from __future__ import annotations

import copy
import json

import pytest
import timm
import torch

from cifar10_levels.checkpoint.io import CheckpointMeta, load_checkpoint, save_checkpoint
from cifar10_levels.data.cifar10 import load_cifar10
from cifar10_levels.models.factory import create_model, set_backbone_trainable
from cifar10_levels.recipes import CIFAR10_MEAN, CIFAR10_STD, get_recipe
from cifar10_levels.models.speednet import VARIANTS, SpeedNet, whitening_filters
from cifar10_levels.optim.muon import MUON_ARCHS, muon_with_sgd
from helpers.commands import console_script_in_process, train

EXPECTED_PARAMS = 1_971_352   # widths 64/256/256, 10 classes, no head bias


def smooth_images(n: int = 64, seed: int = 0) -> torch.Tensor:
    """uint8 images with strongly correlated neighbouring pixels and channels, like photos."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 1, 8, 8, generator=g)
    tint = torch.rand(n, 3, 1, 1, generator=g) * 0.3
    x = torch.nn.functional.interpolate(base, size=32, mode="bilinear") * 0.7 + tint
    x = x + 0.02 * torch.rand(n, 3, 32, 32, generator=g)
    return (x.clamp(0, 1) * 255).to(torch.uint8)


def test_builds_through_timm_at_expected_size():
    model = timm.create_model("cifar_speednet", pretrained=False, num_classes=10,
                              pretrained_cfg_overlay=dict(file="ignored"))
    assert isinstance(model, SpeedNet)
    assert sum(p.numel() for p in model.parameters()) == EXPECTED_PARAMS
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    model.reset_classifier(7)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    assert create_model("cifar_speednet", num_classes=5).get_classifier().out_features == 5


def test_frozen_parts_stay_frozen_when_backbone_is_trained():
    model = create_model("cifar_speednet", num_classes=10)
    set_backbone_trainable(model, True)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "whiten_weight" not in names and "whiten_weight" in dict(model.named_buffers())
    assert not any(n.endswith("norm1.weight") for n in names)  # BN scales are fixed at 1
    set_backbone_trainable(model, False)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"head.weight"}


def test_whitening_init_decorrelates_patches():
    images = smooth_images()
    model = SpeedNet()
    model.init_from_data(images)
    x = (images.float() / 255 - torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        CIFAR10_STD).view(1, 3, 1, 1)
    patches = x.unfold(2, 2, 1).unfold(3, 2, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 12).double()
    raw_cov = torch.cov(patches.T)
    raw_corr = raw_cov / torch.sqrt(raw_cov.diag().outer(raw_cov.diag()))
    assert raw_corr.fill_diagonal_(0).abs().max() > 0.9  # the input really is correlated
    out = patches @ model.whiten_weight[:12].reshape(12, -1).double().T
    cov = torch.cov(out.T)
    off_diag = cov - torch.diag(cov.diag())
    assert off_diag.abs().max() < 1e-3
    assert cov.diag().max() < 1.0 + 1e-6 and cov.diag()[-4:].min() > 0.9  # ~unit variance where eig >> eps
    assert torch.equal(model.whiten_weight[12:], -model.whiten_weight[:12])
    assert torch.equal(whitening_filters(x), model.whiten_weight)  # deterministic


def test_optimizer_state_round_trips():
    torch.manual_seed(0)
    model = SpeedNet()
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 10

    def step(opt):
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()

    opt = muon_with_sgd(model, 0.24, 0.004, batch_size=8)
    assert [g["muon"] for g in opt.param_groups] == [True, False, False]
    step(opt)
    saved_model = {k: v.clone() for k, v in model.state_dict().items()}
    saved_opt = copy.deepcopy(opt.state_dict())  # state_dict holds live tensors
    step(opt)
    after = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(saved_model)
    fresh = muon_with_sgd(model, 0.24, 0.004, batch_size=8)
    fresh.load_state_dict(saved_opt)
    step(fresh)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, after[k], msg=k)
    assert not torch.equal(after["groups.0.conv1.weight"], saved_model["groups.0.conv1.weight"])


def conv_widths(model: SpeedNet) -> tuple[int, ...]:
    return tuple(group.conv2.out_channels for group in model.groups)


def test_narrower_variants_have_their_widths_and_the_fast_optimizer():
    assert MUON_ARCHS == tuple(VARIANTS)  # the fast recipe's optimizer knows every variant
    sizes = []
    for variant, widths in VARIANTS.items():
        model = timm.create_model(variant, num_classes=10)
        assert conv_widths(model) == widths and model.num_features == widths[-1]
        assert model.pretrained_cfg["architecture"] == variant
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
        assert len(muon_with_sgd(model, 0.17, 0.001, batch_size=8).param_groups) == 3
        sizes.append(sum(p.numel() for p in model.parameters()))
    assert sizes == sorted(sizes, reverse=True) and sizes[0] == EXPECTED_PARAMS


@pytest.mark.parametrize("arch", list(VARIANTS))
def test_checkpoint_round_trip_gives_identical_logits(tmp_path, arch):
    model = create_model(arch, num_classes=10)
    model.init_from_data(smooth_images())
    with torch.no_grad():
        model.train()(torch.randn(16, 3, 32, 32))  # move the BN running statistics
    model.eval()
    recipe = get_recipe("fast")
    meta = CheckpointMeta(arch=arch, level=recipe.level, img_size=32, num_classes=10,
                          class_names=[str(i) for i in range(10)], mean=list(recipe.mean),
                          std=list(recipe.std), seed=0, epoch=1, val_acc=0.5)
    save_checkpoint(tmp_path / "best.safetensors", model.state_dict(), meta)
    loaded, _ = load_checkpoint(tmp_path / "best.safetensors")
    assert conv_widths(loaded) == VARIANTS[arch]
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


@pytest.mark.slow
def test_fast_recipe_trains_end_to_end_and_votes(tiny_cifar, tmp_path):
    out = tmp_path / "out"
    result = train(tiny_cifar, out, "--level", "fast", "--batch-size", "50", "--epochs", "2",
                   "--train-limit", "200", "--eval-limit", "50", probe_precision=True)
    run_dir = next(out.glob("*/results.json")).parent
    results = json.loads((run_dir / "results.json").read_text())
    expected_precision = results["precision_probe"]["choice"]  # what measured faster on this CPU
    assert f"precision {expected_precision};" in result.stdout and "precision: fp32 " in result.stdout
    assert results["precision"] == expected_precision
    assert results["arch"] == "cifar_speednet" and results["num_params"] == EXPECTED_PARAMS
    assert results["test_acc"] > 0.5, results  # the tiny fixture's classes show as colours
    assert results["test_acc_tta"] > 0.5 and results["tta_views"] == get_recipe("fast").tta
    model, meta = load_checkpoint(run_dir / "best.safetensors")
    assert meta.arch == "cifar_speednet" and meta.test_acc == results["test_acc"]
    # the frozen first layer is what init_from_data makes from this run's training images
    expected = SpeedNet()
    expected.init_from_data(load_cifar10(str(tiny_cifar), 200, 50).train.images)
    torch.testing.assert_close(model.whiten_weight, expected.whiten_weight, rtol=1e-5, atol=1e-6)
    voted = console_script_in_process("cifar10-ensemble", "--weights", run_dir / "best.safetensors",
                                      run_dir / "last.safetensors", "--dataset", tiny_cifar, "--eval-limit",
                                      "50", "--output-dir", tmp_path / "vote", "--report-to", "none")
    assert voted.returncode == 0, voted.stderr
    assert "cifar_speednet" in voted.stdout and (tmp_path / "vote" / "ensemble_results.json").exists()


@pytest.mark.slow
def test_whitening_bias_trains_over_its_fraction_of_the_steps_then_stays():
    from cifar10_levels.optim.factory import build_scheduler

    torch.manual_seed(0)
    model = SpeedNet()
    recipe = get_recipe("fast").with_overrides(whiten_bias_fraction=0.375)
    opt = muon_with_sgd(model, 0.24, 0.004, batch_size=8, whiten_bias_fraction=0.375)
    assert [g["params"] for g in opt.param_groups][1] == [model.whiten_bias]
    scheduler = build_scheduler(opt, recipe, total_steps=16, steps_per_epoch=4)   # bias: 6 steps
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 10
    biases, lrs = [], []
    for _ in range(16):
        biases.append(model.whiten_bias.detach().clone())
        lrs.append([g["lr"] for g in opt.param_groups])
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        scheduler.step()
    whiten0, other0 = lrs[0][1], lrs[0][2]
    assert [lr[1] for lr in lrs] == pytest.approx([whiten0 * (1 - k / 6) for k in range(6)] + [0.0] * 10)
    assert [lr[2] for lr in lrs] == pytest.approx([other0 * (1 - k / 16) for k in range(16)])
    assert not torch.equal(biases[5], biases[0])                  # trained while its lr lasted
    assert all(torch.equal(b, biases[6]) for b in biases[7:])     # then frozen, decay included
    assert len(muon_with_sgd(model, 0.24, 0.004, batch_size=8).param_groups) == 3  # default: one bias group


def test_airbench_options_reach_the_recipe_from_flags():
    from cifar10_levels.cli.train import recipe_from_args, train_parser
    from cifar10_levels.errors import UserError

    recipe = recipe_from_args(train_parser().parse_args(
        ["--level", "fast", "--crop-fill", "reflect", "--flip-alternate", "--whiten-bias-fraction", "0.375",
         "--tta-scheme", "shift2"]))
    assert (recipe.augment.crop_fill, recipe.augment.flip_alternate, recipe.whiten_bias_fraction,
            recipe.tta_scheme) == ("reflect", True, 0.375, "shift2")
    assert recipe_from_args(train_parser().parse_args(["--level", "fast"])) == get_recipe("fast")
    from cifar10_levels.evaluation.tta import TTA_SCHEMES
    flag = next(a for a in train_parser()._actions if "--tta-scheme" in a.option_strings)
    assert set(flag.choices) == set(TTA_SCHEMES)
    for bad in ("0", "1.5"):
        with pytest.raises(UserError, match=f"--whiten-bias-fraction {bad}"):
            recipe_from_args(train_parser().parse_args(["--whiten-bias-fraction", bad]))
    with pytest.raises(UserError, match="--whiten-bias-fraction: nan is not a finite number"):
        train_parser().parse_args(["--whiten-bias-fraction", "nan"])
