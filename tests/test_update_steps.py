"""What acts once per optimizer step under --grad-accum (the EMA update, gradient clipping, the warmup's
schedule), the weight-decay groups of --no-decay-norm-bias, and where these four options are recorded."""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from cifar10_levels.runtime import precision
from cifar10_levels.train import step_hooks, trainer
from cifar10_levels.cli.train import recipe_from_args, train_main, train_parser
from cifar10_levels.models.factory import create_model, set_backbone_trainable
from cifar10_levels.optim.factory import build_optimizer, build_scheduler
from cifar10_levels.recipes import get_recipe

from helpers.commands import read_results, train
from helpers.runs import ema_state

BATCHES, ACCUM = 20, 3          # 160 images in batches of 8; accumulation over 3 of them
STEPS_PER_EPOCH = math.ceil(BATCHES / ACCUM)  # the last, shorter accumulation steps too
LRS = (1e-2, 4e-3)              # phase 1 (head), phase 2 (full): one epoch each
WARMUP_EPOCHS, CLIP = 0.6, 0.05
WARMUP_STEPS = round(WARMUP_EPOCHS * BATCHES / ACCUM)  # 4 optimizer steps (one process)
ARGS = ["--arch", "test_resnet", "--train-limit", "160", "--eval-limit", "20", "--batch-size", "8",
        "--epochs", "1", "1", "--lr", *map(str, LRS), "--grad-accum", str(ACCUM), "--ema", "0.5",
        "--clip-grad", str(CLIP), "--warmup-epochs", str(WARMUP_EPOCHS), "--no-decay-norm-bias",
        "--mixed-precision", "no"]  # no precision probe: its timed steps on a copy would count too


def recorded_run(dataset: Path, out: Path, *args: str) -> dict:
    """A run that records each optimizer step's lr, each clipping call and each EMA update."""
    from accelerate import Accelerator
    from timm.utils.model_ema import ModelEmaV3

    seen = {"lrs": [], "clips": [], "ema_steps": []}
    adamw_step, clip, ema_update, finish = (torch.optim.AdamW.step, Accelerator.clip_grad_norm_,
                                            ModelEmaV3.update, trainer.Trainer.finish)

    def recording_step(self, *a, **k):
        seen["lrs"].append(self.param_groups[0]["lr"])
        return adamw_step(self, *a, **k)

    def recording_clip(self, parameters, max_norm, norm_type=2):
        parameters = list(parameters)
        before = torch.nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None])
        total = clip(self, parameters, max_norm, norm_type)
        after = torch.nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None])
        seen["clips"].append({"sync": self.sync_gradients, "before": before.item(),
                              "returned": float(total), "after": after.item()})
        return total

    def recording_update(self, model, step=None):
        seen["ema_steps"].append(step)
        return ema_update(self, model, step)

    def recording_finish(self, seconds):
        seen["trainer"], seen["tracker_config"] = self, self.log.config
        return finish(self, seconds)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.optim.AdamW, "step", recording_step)
        patch.setattr(Accelerator, "clip_grad_norm_", recording_clip)
        patch.setattr(ModelEmaV3, "update", recording_update)
        patch.setattr(trainer.Trainer, "finish", recording_finish)
        train(dataset, out, *args)
    seen["results"] = read_results(out)
    seen["run_dir"] = next(out.glob("*/results.json")).parent
    return seen


@pytest.fixture(scope="module")
def accumulated(tiny_cifar, tmp_path_factory) -> dict:
    return recorded_run(tiny_cifar, tmp_path_factory.mktemp("accumulated"), *ARGS)


@pytest.mark.slow
def test_ema_updates_once_per_optimizer_step_with_its_step_count(accumulated):
    optimizer_steps = len(accumulated["lrs"])
    assert optimizer_steps == 2 * STEPS_PER_EPOCH  # AdamW stepped once per accumulation
    assert accumulated["ema_steps"] == list(range(1, optimizer_steps + 1))
    assert accumulated["trainer"].ema.updates == optimizer_steps


@pytest.mark.slow
def test_clipping_acts_on_update_steps_only_and_after_it_the_norm_is_bounded(accumulated):
    clips = accumulated["clips"]
    assert len(clips) == len(accumulated["lrs"]) and all(c["sync"] for c in clips)
    assert all(c["after"] <= CLIP * (1 + 1e-4) for c in clips)
    assert all(c["returned"] == pytest.approx(c["before"], rel=1e-5) for c in clips)
    assert any(c["before"] > 2 * CLIP for c in clips)  # the limit did bite


@pytest.mark.slow
def test_warmup_first_learning_rates_in_each_phase(accumulated):
    lrs = accumulated["lrs"]
    for phase, peak in enumerate(LRS):
        first = lrs[phase * STEPS_PER_EPOCH:][:WARMUP_STEPS + 1]
        expected = [peak * (k + 1) / WARMUP_STEPS for k in range(WARMUP_STEPS)] + [peak]
        assert first == pytest.approx(expected, rel=1e-12), (phase, first)


@pytest.mark.slow
def test_no_decay_groups_leave_norms_and_biases_without_weight_decay(accumulated):
    optimizer = accumulated["trainer"].optimizer.optimizer  # phase 2: every layer trains
    model = accumulated["trainer"].base_model
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert len(decay) == sum(1 for _ in model.parameters())
    for name, p in model.named_parameters():
        expected = 0.0 if p.ndim <= 1 else get_recipe("1").weight_decay
        assert decay[id(p)] == expected, name
    assert {0.0, 0.01} == set(decay.values())


@pytest.mark.slow
def test_the_four_options_are_recorded_in_results_checkpoints_and_the_tracker_config(accumulated):
    expected = {"warmup_epochs": WARMUP_EPOCHS, "ema_decay": 0.5, "decay_norm_bias": False,
                "clip_grad": CLIP}
    recorded = [accumulated["results"]["recipe"], accumulated["tracker_config"]["recipe"]]
    for name in ("best", "last"):
        with safe_open(str(accumulated["run_dir"] / f"{name}.safetensors"), "pt") as f:
            recorded.append(json.loads(f.metadata()["recipe"]))
    for recipe in recorded:
        assert {k: recipe[k] for k in expected} == expected


@pytest.mark.slow
def test_clipping_under_fp16_sees_unscaled_gradients(accumulated, tiny_cifar, tmp_path, monkeypatch):
    """CPU fp16 runs a real GradScaler that Accelerate's clip_grad_norm_ does not unscale itself: the
    first clipped norm must be the fp32 run's, not 2**10 times it."""
    monkeypatch.setattr(precision, "INITIAL_SCALE", 2.0 ** 10)  # no overflow on the first steps
    fp16 = recorded_run(tiny_cifar, tmp_path, *ARGS, "--mixed-precision", "fp16")
    assert fp16["results"]["precision"] == "fp16"
    first16, first32 = fp16["clips"][0], accumulated["clips"][0]
    assert math.isfinite(first16["before"]) and first16["before"] == pytest.approx(first32["before"],
                                                                                     rel=0.05)
    assert len(fp16["clips"]) == len(accumulated["clips"]) and all(c["sync"] for c in fp16["clips"])


def test_default_groups_and_the_head_phase():
    recipe = get_recipe("1")
    model = create_model("test_resnet", 10, pretrained=False)
    (group,) = build_optimizer(model, recipe, 1e-3).param_groups
    assert group["weight_decay"] == recipe.weight_decay and len(group["params"]) == len(list(model.parameters()))
    set_backbone_trainable(model, False)
    groups = build_optimizer(model, recipe.with_overrides(decay_norm_bias=False), 1e-3).param_groups
    head = {id(p) for p in model.get_classifier().parameters()}
    assert {id(p) for g in groups for p in g["params"]} == head
    assert sorted(g["weight_decay"] for g in groups) == [0.0, recipe.weight_decay]


def test_fast_recipe_no_decay_takes_it_off_its_bias_group_only():
    import cifar10_levels.models.speednet  # noqa: F401  registers cifar_speednet

    recipe = get_recipe("fast")
    model = create_model("cifar_speednet", 10, pretrained=False)
    default = build_optimizer(model, recipe, 0.24).param_groups
    no_decay = build_optimizer(model, recipe.with_overrides(decay_norm_bias=False), 0.24).param_groups
    biases = {id(model.whiten_bias)} | {id(p) for p in model.groups.parameters() if p.ndim == 1}
    for before, after in zip(default, no_decay):
        ids = {id(p) for p in after["params"]}
        if ids == biases:
            assert before["weight_decay"] > 0 and after["weight_decay"] == 0.0
        else:
            assert after["weight_decay"] == before["weight_decay"]
    assert any({id(p) for p in g["params"]} == biases for g in no_decay)


def test_warmup_then_decay_from_the_scheduler_alone():
    recipe = get_recipe("1").with_overrides(warmup_epochs=1.5)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = build_scheduler(optimizer, recipe, total_steps=20, steps_per_epoch=4)  # warmup: 6 steps
    lrs = []
    for _ in range(20):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[:7] == pytest.approx([0.1 * (k + 1) / 6 for k in range(6)] + [0.1], rel=1e-12)
    assert all(a > b for a, b in zip(lrs[6:], lrs[7:])) and lrs[-1] > 0


def test_flags_reach_the_recipe_and_bad_values_name_the_flag(capsys):
    args = train_parser().parse_args(["--warmup-epochs", "0.5", "--ema", "0.999", "--clip-grad", "2",
                                      "--no-decay-norm-bias"])
    recipe = recipe_from_args(args)
    assert (recipe.warmup_epochs, recipe.ema_decay, recipe.clip_grad, recipe.decay_norm_bias) == \
        (0.5, 0.999, 2.0, False)
    assert recipe_from_args(train_parser().parse_args([])) == get_recipe("1")  # defaults unchanged
    for argv, flag in ((["--ema", "1"], "--ema 1.0"), (["--ema", "0"], "--ema 0.0"),
                       (["--ema", "-0.5"], "--ema -0.5"), (["--clip-grad", "-1"], "--clip-grad -1.0"),
                       (["--warmup-epochs", "-0.5"], "--warmup-epochs -0.5"),
                       (["--ema", "nan"], "argument --ema")):
        assert train_main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {flag}:") and err.count("\n") == 1, err


@pytest.mark.slow
def test_resume_between_the_phases_restores_the_ema_bit_for_bit(accumulated, tiny_cifar, tmp_path):
    """Stopped at the last batch of phase 1, then --resume: the same EMA and weights as the run that
    was never stopped."""
    from safetensors.torch import load_file

    checks = itertools.count(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(step_hooks, "STOP_CHECK_EVERY", 1)
        patch.setattr(step_hooks.StopFlag, "requested", lambda self: next(checks) == BATCHES)
        assert train(tiny_cifar, tmp_path, *ARGS, check=False).returncode == 143
    (run_dir,), expected_dir = tmp_path.glob("L1-*"), accumulated["run_dir"]
    assert ema_state(run_dir)["updates"] == STEPS_PER_EPOCH
    train(tiny_cifar, tmp_path, *ARGS, "--resume")
    resumed, expected = (ema_state(d) for d in (run_dir, expected_dir))
    assert resumed["updates"] == expected["updates"] == 2 * STEPS_PER_EPOCH
    assert all(torch.equal(resumed["weights"][k], v) for k, v in expected["weights"].items())
    last, expected_last = (load_file(d / "last.safetensors") for d in (run_dir, expected_dir))
    assert all(torch.equal(last[k], v) for k, v in expected_last.items())
    results = json.loads((run_dir / "results.json").read_text())
    assert results["final_weights"] == accumulated["results"]["final_weights"]
