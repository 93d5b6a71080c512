"""The net a --time-budget run trains (Recipe.budget_net): where the budget buys the level's own net
fewer epochs than its budget_net asks, the run trains that net instead, seeded as a run of its --arch,
in the directory its command names; config.yaml records the net, so --config and --resume repeat it."""
from __future__ import annotations

import json

import pytest
import yaml

from cifar10_levels.checkpoint.meta import read_meta
from cifar10_levels.recipes import LEVELS, BudgetNet
from cifar10_levels.runtime.time_budget import RunCosts

from helpers.budget import LR, run

# 60 s buys 2.9 epochs of --epochs 1 3 (test_time_budget's worked example), fewer than the 3 of the
# level's budget_net; CHEAP buys 4 (the whole --epochs)
COSTS = RunCosts((0.5, 1.0), epoch_end_seconds=0.5, final_eval_seconds=1.0, spent_seconds=2.0)
CHEAP = RunCosts((0.05, 0.1), epoch_end_seconds=0.1, final_eval_seconds=0.1, spent_seconds=2.0)
PLANNED = ("--epochs", "1", "3", "--time-budget", "1m")
SMALL = ("--train-limit", "160", "--eval-limit", "20", "--batch-size", "8", *LR)
RUN = "L1-test_resnet-s42"


@pytest.fixture
def level_with_budget_net(monkeypatch):
    monkeypatch.setitem(LEVELS, "1", LEVELS["1"].with_overrides(
        arch="test_resnet", budget_net=BudgetNet(below_epochs=3, arch="test_efficientnet")))


def history(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


def test_the_budget_net_is_taken_below_its_epochs_and_never_over_a_given_net():
    recipe = LEVELS["1"].with_overrides(budget_net=BudgetNet(below_epochs=3, arch="narrow"))
    assert recipe.net_for_budget(2.9) == "narrow"
    assert recipe.net_for_budget(3) is None and recipe.net_for_budget(40) is None
    assert recipe.net_for_budget(2.9, frozenset({"arch"})) is None
    assert recipe.net_for_budget(2.9, frozenset({"pretrained_file"})) is None  # made for the level's net
    assert recipe.net_for_budget(2.9, frozenset({"lr"})) == "narrow"
    assert LEVELS["1"].net_for_budget(0.5) is None


@pytest.mark.slow
def test_a_budget_too_short_for_the_levels_net_trains_the_budget_net_as_its_arch_flag_would(
        level_with_budget_net, tiny_cifar, tmp_path, capsys):
    assert run(tiny_cifar, tmp_path / "budget", COSTS, *PLANNED, small=SMALL) == 0
    out = capsys.readouterr().out
    assert "net: test_efficientnet, not the level's test_resnet: the budget buys test_resnet 2.90 " \
           "epochs, fewer than the 3 from which it trains better" in out
    run_dir = tmp_path / "budget" / RUN  # named by the command, so the same command finds it again
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["arch"] == "test_efficientnet" and saved["run_name"] == RUN
    results = json.loads((run_dir / "results.json").read_text())
    assert results["time_budget"]["instead_of"] == {"arch": "test_resnet",
                                                    "planned_epochs": pytest.approx(2.9)}
    assert results["config"]["arch"] == "test_efficientnet"
    assert read_meta(run_dir / "best.safetensors").arch == "test_efficientnet"

    assert run(tiny_cifar, tmp_path / "direct", COSTS, *PLANNED, "--arch", "test_efficientnet",
               small=SMALL) == 0
    direct = tmp_path / "direct" / "L1-test_efficientnet-s42"
    assert "net: " not in capsys.readouterr().out
    assert [(h["train_loss"], h["val_acc"]) for h in history(run_dir)] == \
        [(h["train_loss"], h["val_acc"]) for h in history(direct)]


@pytest.mark.slow
def test_a_budget_that_buys_enough_epochs_or_a_given_arch_keeps_the_net(level_with_budget_net,
                                                                       tiny_cifar, tmp_path):
    assert run(tiny_cifar, tmp_path, CHEAP, *PLANNED, measure=False, small=SMALL) == 0
    assert yaml.safe_load((tmp_path / RUN / "config.yaml").read_text())["arch"] == "test_resnet"
    assert "instead_of" not in json.loads((tmp_path / RUN / "results.json").read_text())["time_budget"]
    assert run(tiny_cifar, tmp_path, COSTS, *PLANNED, "--arch", "test_convnext", measure=False,
               small=SMALL) == 0
    assert json.loads((tmp_path / "L1-test_convnext-s42" / "results.json").read_text())["arch"] \
        == "test_convnext"


@pytest.mark.slow
def test_the_same_command_resumes_the_budget_net_in_its_directory_and_its_config_repeats_it(
        level_with_budget_net, tiny_cifar, tmp_path):
    assert run(tiny_cifar, tmp_path, COSTS, *PLANNED, "--resume", "auto", stop_at=30, measure=False,
               small=SMALL) == 143
    slower = RunCosts((5.0, 10.0), 5.0, 10.0, 2.0)  # a new plan would buy the level's net 0.3 epochs
    assert run(tiny_cifar, tmp_path, slower, *PLANNED, "--resume", "auto", measure=False,
               small=SMALL) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [RUN]
    results = json.loads((tmp_path / RUN / "results.json").read_text())
    assert results["arch"] == "test_efficientnet" and results["time_budget"]["resumed"]
    assert results["time_budget"]["instead_of"]["arch"] == "test_resnet"

    again = tmp_path / "again"  # the run's file trains its net whatever the budget buys
    assert run(tiny_cifar, again, CHEAP, "--config", str(tmp_path / RUN / "config.yaml"),
               "--output-dir", str(again), measure=False, small=()) == 0
    assert json.loads((again / RUN / "results.json").read_text())["arch"] == "test_efficientnet"
