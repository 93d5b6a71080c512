"""On a CPU without --mixed-precision, fp32 or bf16 chosen by timing both on a copy of the model.

The timings are injected (they mean nothing on a shared test machine); what is tested is the rule,
the cache, the one printed line, results.json, and that the probe leaves the run as it was.
"""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cifar10_levels.runtime import precision_probe
from cifar10_levels.runtime import step_timing
from cifar10_levels.cli.train import train_main
from cifar10_levels.runtime.precision_probe import BF16_MIN_SPEEDUP, CACHE_FILE, cpu_precision
from cifar10_levels.recipes import get_recipe
from cifar10_levels.runtime.step_timing import StepCost, step_cost, untouched_rng

from helpers.commands import FP32, TINY_TRAIN

MEASURED = [a for a in TINY_TRAIN if a not in FP32]  # no --mixed-precision: the run measures

CPU = torch.device("cpu")
REAL_MEASUREMENT = precision_probe.measure_precisions
# 64 images in batches of 16: 4 steps an epoch
SMALL = ["--arch", "test_resnet", "--train-limit", "64", "--eval-limit", "20", "--batch-size", "16",
         "--epochs", "0", "1"]


class FakeMachine:
    """On a fake clock: forward and backward of n images take `per_image * n` seconds (plus
    `overhead`), an optimizer step `optimizer` seconds."""

    def __init__(self, per_image: float, optimizer: float = 0.0, overhead: float = 0.0):
        self.per_image, self.optimizer, self.overhead = per_image, optimizer, overhead
        self.now, self.sizes = 0.0, []

    def clock(self) -> float:
        return self.now

    def images_step(self, n: int) -> None:
        self.sizes.append(n)
        self.now += self.overhead + self.per_image * n

    def optimizer_step(self) -> None:
        self.now += self.optimizer


def test_a_batch_that_fits_is_timed_whole():
    machine = FakeMachine(per_image=0.001, optimizer=0.01)
    cost = step_cost(machine.images_step, 128, machine.optimizer_step, seconds=2.0, clock=machine.clock)
    assert cost.seconds == pytest.approx(0.128 + 0.01) and cost.batch == 128
    assert max(machine.sizes) == 128 and cost.timed[-1] == 128


def test_a_batch_too_slow_to_run_whole_is_scaled_from_a_smaller_one_plus_the_optimizer_step():
    machine = FakeMachine(per_image=0.002, optimizer=0.5)   # a step of 2000 images: 4.5 s
    cost = step_cost(machine.images_step, 2000, machine.optimizer_step, seconds=2.0, clock=machine.clock)
    assert cost.seconds == pytest.approx(0.002 * 2000 + 0.5)
    assert 16 < max(machine.sizes) < 2000 and cost.timed == (62, 248, max(machine.sizes))  # 2000 // 32
    assert 0.002 * max(machine.sizes) <= 2.0 / 3  # a probe step stayed under the cap


def test_a_fixed_part_of_the_images_step_is_found_from_two_batch_sizes():
    machine = FakeMachine(per_image=0.001, overhead=0.05)
    cost = step_cost(machine.images_step, 2000, seconds=2.0, clock=machine.clock)
    assert cost.seconds == pytest.approx(0.05 + 0.001 * 2000) and max(machine.sizes) < 2000
    assert machine.now < 3 * 2.0  # the whole measurement stayed short


def test_a_fixed_part_larger_than_the_cap_is_not_scaled_with_the_batch():
    # small steps slower than seconds / MIN_STEPS (e.g. threads waiting on other programs): the
    # second batch size still separates the fixed part from the part per image
    machine = FakeMachine(per_image=0.004, overhead=1.0)
    cost = step_cost(machine.images_step, 2000, seconds=2.0, clock=machine.clock)
    assert cost.seconds == pytest.approx(1.0 + 0.004 * 2000) and cost.timed == (62, 248)


def test_a_model_too_slow_for_any_larger_batch_is_scaled_from_the_small_one():
    machine = FakeMachine(per_image=0.1, optimizer=0.2)
    cost = step_cost(machine.images_step, 128, machine.optimizer_step, seconds=2.0, clock=machine.clock)
    assert set(machine.sizes) == {16} and cost.seconds == pytest.approx(0.1 * 128 + 0.2)


def test_fastest_ignores_steps_slowed_by_other_load():
    machine = FakeMachine(per_image=0.001, optimizer=0.01)
    images_step = machine.images_step

    def sometimes_slowed(n: int) -> None:
        images_step(n)
        if len(machine.sizes) % 3 == 0:
            machine.now += 1.0
    cost = step_cost(sometimes_slowed, 128, machine.optimizer_step, seconds=2.0, clock=machine.clock,
                     fastest=True)
    assert cost.seconds == pytest.approx(0.128 + 0.01)


def test_untouched_rng_restores_every_stream():
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    with untouched_rng(CPU):
        torch.rand(100), np.random.rand(100), random.random(), torch.nn.Linear(8, 8)
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]


def speeds(fp32: float, bf16: float):
    """A fake measurement: training images/s of each precision."""
    calls = []

    def measure(recipe, channels_last, device):
        calls.append((recipe.arch, recipe.img_size, recipe.batch_size, channels_last))
        batch = recipe.batch_size
        return {"no": StepCost(batch / fp32, batch, (16, batch)),
                "bf16": StepCost(batch / bf16, batch, (16, batch))}
    measure.calls = calls
    return measure


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR10_LEVELS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / CACHE_FILE


@pytest.mark.parametrize("fp32, bf16, expected", [
    (100, 150, "bf16"), (100, 100 * BF16_MIN_SPEEDUP, "bf16"), (100, 105, "no"), (100, 100, "no"),
    (100, 60, "no")])
def test_bf16_only_when_faster_by_the_margin(cache, fp32, bf16, expected):
    verdict = cpu_precision(get_recipe("fast"), True, CPU, measure=speeds(fp32, bf16))
    assert verdict.choice == expected and not verdict.cached
    assert (verdict.fp32_images_per_s, verdict.bf16_images_per_s) == pytest.approx((fp32, bf16))
    line = verdict.line()
    assert "\n" not in line and f"fp32 {fp32:.0f} img/s" in line and f"bf16 {bf16:.0f} img/s" in line
    assert line.split("-> ")[1].startswith("bf16" if expected == "bf16" else "fp32")


def test_the_verdict_is_cached_per_cpu_torch_and_model_shape(cache):
    recipe = get_recipe("fast")
    measure = speeds(100, 200)
    first = cpu_precision(recipe, True, CPU, measure=measure)
    again = cpu_precision(recipe, True, CPU, measure=measure)
    assert len(measure.calls) == 1 and again.cached and "cached" in again.line()
    assert (again.choice, again.bf16_images_per_s) == (first.choice, first.bf16_images_per_s)
    (key,) = json.loads(cache.read_text())
    assert precision_probe.cpu_model_name() in key and torch.__version__ in key
    for changed in (recipe.with_overrides(batch_size=1000), recipe.with_overrides(img_size=64),
                    recipe.with_overrides(arch="test_resnet")):
        cpu_precision(changed, True, CPU, measure=measure)
    cpu_precision(recipe, False, CPU, measure=measure)  # another memory format
    assert len(measure.calls) == 5 and len(json.loads(cache.read_text())) == 5


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", json.dumps({"x": 1}), ""])
def test_a_damaged_cache_is_measured_over_and_rewritten(cache, capsys, content):
    recipe = get_recipe("fast")
    cache.parent.mkdir(parents=True)
    cache.write_text(content)
    if content.startswith("{\""):  # readable, but this key's entry is not a verdict
        cache.write_text(json.dumps({precision_probe.cache_key(recipe, True): {"choice": "bf16"}}))
    measure = speeds(100, 50)
    assert cpu_precision(recipe, True, CPU, measure=measure).choice == "no"
    assert len(measure.calls) == 1
    assert cpu_precision(recipe, True, CPU, measure=measure).cached  # rewritten whole
    if not content.startswith("{\""):
        assert f"warning: ignoring the precision cache {cache}" in capsys.readouterr().out


@pytest.fixture
def fresh_accelerate():
    """Each in-process run builds its own Accelerator (and the probe its PartialState first)."""
    from accelerate.state import AcceleratorState, GradientState

    def reset() -> None:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    reset()
    yield reset
    reset()


def run(dataset, out, reset, *args: str) -> tuple[dict, str]:
    reset()
    assert train_main(["--dataset", str(dataset), "--output-dir", str(out), *MEASURED, *SMALL, *args]) == 0
    (results,) = out.glob("*/results.json")
    return json.loads(results.read_text()), results.parent


def never_measured(*args):
    raise AssertionError("the precision probe ran")


@pytest.mark.slow
def test_probe_choosing_fp32_leaves_the_run_as_with_mixed_precision_no(tiny_cifar, tmp_path, cache,
                                                                         monkeypatch, capsys,
                                                                         fresh_accelerate):
    monkeypatch.setattr(step_timing, "PROBE_SECONDS", 0.2)
    monkeypatch.setattr(precision_probe, "measure_precisions", never_measured)
    reference, reference_dir = run(tiny_cifar, tmp_path / "no", fresh_accelerate, "--mixed-precision", "no")
    assert reference["precision"] == "no" and reference["precision_probe"] is None
    assert "precision: fp32" not in capsys.readouterr().out and not cache.exists()

    measured = []

    def real_then_fp32_faster(recipe, channels_last, device):
        measured.append(REAL_MEASUREMENT(recipe, channels_last, device))
        return speeds(300, 100)(recipe, channels_last, device)
    monkeypatch.setattr(precision_probe, "measure_precisions", real_then_fp32_faster)
    probed, probed_dir = run(tiny_cifar, tmp_path / "probed", fresh_accelerate)
    assert len(measured) == 1 and set(measured[0]) == {"no", "bf16"}  # the real probe ran
    assert measured[0]["no"].timed == measured[0]["bf16"].timed  # both at the same batch sizes
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("precision: ")] == [
        "precision: fp32 300 img/s, bf16 100 img/s at batch 16 on this CPU (measured on a copy of the "
        f"model) -> fp32 (bf16 needs {BF16_MIN_SPEEDUP:.2f}x fp32; --mixed-precision sets it)"]
    record = probed["precision_probe"]
    assert probed["precision"] == "no" and record["choice"] == "no" and not record["cached"]
    assert (record["fp32_images_per_s"], record["bf16_images_per_s"]) == pytest.approx((300, 100))
    # the probe's copy, steps and random draws left the run's weights and streams alone
    history = [(json.loads(line)["train_loss"], json.loads(line)["val_loss"])
               for d in (reference_dir, probed_dir) for line in (d / "history.jsonl").read_text().splitlines()]
    assert history[0] == history[1]
    for name in ("best.safetensors", "last.safetensors"):
        a, b = load_file(reference_dir / name), load_file(probed_dir / name)
        assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_bf16_verdict_trains_in_bf16_and_the_next_run_reads_the_cache(tiny_cifar, tmp_path, cache,
                                                                       monkeypatch, capsys,
                                                                       fresh_accelerate):
    measure = speeds(100, 200)
    monkeypatch.setattr(precision_probe, "measure_precisions", measure)
    first, _ = run(tiny_cifar, tmp_path / "first", fresh_accelerate)
    assert first["precision"] == "bf16" and first["precision_probe"]["choice"] == "bf16"
    assert "precision bf16;" in capsys.readouterr().out and len(measure.calls) == 1

    monkeypatch.setattr(precision_probe, "measure_precisions", never_measured)
    second, _ = run(tiny_cifar, tmp_path / "second", fresh_accelerate)
    assert second["precision"] == "bf16" and second["precision_probe"]["cached"]
    assert "(cached from an earlier run) -> bf16" in capsys.readouterr().out

    monkeypatch.setattr(precision_probe, "measure_precisions", measure)
    third, _ = run(tiny_cifar, tmp_path / "third", fresh_accelerate, "--batch-size", "8")
    assert len(measure.calls) == 2 and measure.calls[-1][2] == 8  # another key: measured again
    assert not third["precision_probe"]["cached"]
