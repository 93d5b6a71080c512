"""A recipe's settings by planned epochs (Recipe.by_epochs): the row for --epochs is taken when the
command line is read, the row for what --time-budget buys once the plan is made; a flag the user gave
keeps its value; config.yaml records what ran, so --config and --resume repeat it."""
from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from cifar10_levels.cli.train import parse_run_config
from cifar10_levels.recipes import LEVELS, Phase, Recipe, Tuning
from cifar10_levels.runtime.time_budget import RunCosts

from helpers.budget import SMALL, run
from helpers.commands import TINY_TRAIN

SHORT = Tuning(2.0, lr=3e-3, label_smoothing=0.1, whiten_bias_fraction=0.5, batch_size=8, weight_decay=0.02,
               crop_fill="constant", flip_alternate=False)
LONG = Tuning(3.5, lr=5e-3, label_smoothing=0.05, whiten_bias_fraction=0.25, batch_size=16,
              weight_decay=0.03, crop_fill="reflect", flip_alternate=True)
RUN = "L1-test_resnet-s42"
# 60 s buys 0.7 + 2.2 = 2.9 epochs of --epochs 1 3 (test_time_budget's worked example): the SHORT row,
# where the same --epochs without a budget, 4 epochs, take the LONG one
COSTS = RunCosts((0.5, 1.0), epoch_end_seconds=0.5, final_eval_seconds=1.0, spent_seconds=2.0)
PLANNED = ["--epochs", "1", "3", "--time-budget", "1m"]


@pytest.fixture
def level_with_rows(monkeypatch):
    monkeypatch.setitem(LEVELS, "1", LEVELS["1"].with_overrides(by_epochs=(SHORT, LONG)))


def without_batch(flags) -> tuple[str, ...]:
    """`flags` less --batch-size and its value: the level's batch (or its row's) applies."""
    flags = list(flags)
    at = flags.index("--batch-size")
    return tuple(flags[:at] + flags[at + 2:])


def lrs(recipe: Recipe) -> list[float]:
    return [p.lr for p in recipe.phases]


def test_the_last_row_the_epochs_reach_sets_every_field_but_the_pinned_ones():
    recipe = Recipe(level="x", title="x", arch="a", img_size=32, by_epochs=(SHORT, LONG),
                    phases=(Phase("full", epochs=4, lr=0.1, train_backbone=True),), label_smoothing=0.2)
    assert recipe.tuned(1.9) == recipe
    short = recipe.tuned(3.49)
    assert (lrs(short), short.label_smoothing, short.whiten_bias_fraction) == ([3e-3], 0.1, 0.5)
    assert short.tuned_for == 3.49
    long = recipe.tuned(40)
    assert (lrs(long), long.label_smoothing, long.whiten_bias_fraction) == ([5e-3], 0.05, 0.25)
    assert (long.batch_size, long.weight_decay, long.augment.crop_fill, long.augment.flip_alternate) == \
        (16, 0.03, "reflect", True)
    assert long.augment.crop_padding == recipe.augment.crop_padding
    small_split = recipe.tuned(40, largest_batch=15)  # the row's batch 16 would not fit one process
    assert (small_split.batch_size, small_split.weight_decay) == (128, 0.03)
    assert recipe.tuned(40, largest_batch=16).batch_size == 16
    pinned = recipe.tuned(40, frozenset({"lr", "label_smoothing", "batch_size", "crop_fill"}))
    assert (lrs(pinned), pinned.label_smoothing, pinned.whiten_bias_fraction) == ([0.1], 0.2, 0.25)
    assert (pinned.batch_size, pinned.weight_decay, pinned.augment.crop_fill) == (128, 0.03, "constant")
    assert pinned.tuning_line() == ("settings for 40.00 planned epochs (the level's row from 3.5): lr 0.1, "
                                    "batch 128, weight decay 0.03, label smoothing 0.2, whitening bias over "
                                    "0.25 of the steps, zero-fill crop, alternating flip")


def test_epochs_on_the_command_line_take_their_row_and_a_given_flag_keeps_its_value(level_with_rows):
    config = parse_run_config(["--epochs", "1", "3"]).config.recipe
    assert (lrs(config), config.label_smoothing, config.tuned_for) == ([5e-3, 5e-3], 0.05, 4)
    short = parse_run_config(["--epochs", "1", "1"]).config.recipe
    assert (lrs(short), short.label_smoothing) == ([3e-3, 3e-3], 0.1)
    given = parse_run_config(["--epochs", "1", "3", "--lr", "1e-2", "2e-2"]).config.recipe
    assert (lrs(given), given.label_smoothing) == ([1e-2, 2e-2], 0.05)
    level = parse_run_config(["--epochs", "1", "0"]).config.recipe
    assert lrs(level) == lrs(LEVELS["1"]) and level.tuned_for is None


def test_a_config_file_keeps_the_values_it_names(level_with_rows, tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("level: '1'\nepochs: [1, 3]\nlabel_smoothing: 0.3\n")
    recipe = parse_run_config(["--config", str(mine)]).config.recipe
    assert (lrs(recipe), recipe.label_smoothing) == ([5e-3, 5e-3], 0.3)


@pytest.mark.slow
def test_a_budget_run_takes_the_row_of_the_epochs_it_plans_and_records_it(level_with_rows, tiny_cifar,
                                                                           tmp_path, capsys):
    assert run(tiny_cifar, tmp_path / "budget", COSTS, *PLANNED, measure=False, small=SMALL) == 0
    run_dir = tmp_path / "budget" / RUN
    recipe = json.loads((run_dir / "results.json").read_text())["recipe"]
    assert [p["lr"] for p in recipe["phases"]] == [3e-3, 3e-3] and recipe["label_smoothing"] == 0.1
    assert recipe["tuned_for"] == pytest.approx(2.9)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["lr"] == [3e-3, 3e-3] and saved["label_smoothing"] == 0.1 and saved["time_budget"] == 60
    assert "settings for 2.90 planned epochs (the level's row from 2): lr 0.003/0.003, batch 8, weight " \
           "decay 0.02, label smoothing 0.1" in capsys.readouterr().out
    # the head phase's schedule (0.7 epochs) starts at the row's lr
    assert json.loads((run_dir / "history.jsonl").read_text().splitlines()[0])["lr"] < 3e-3


@pytest.mark.slow
def test_a_row_with_another_batch_times_the_plan_again_at_it(monkeypatch, tiny_cifar, tmp_path, capsys):
    # batch 8 buys 2.9 epochs (20 steps an epoch), which take a row of batch 16: 10 steps an epoch at
    # the same cost a step, so the plan timed again buys more epochs, and the run trains them
    rebatch = dataclasses.replace(SHORT, batch_size=16)
    monkeypatch.setitem(LEVELS, "1", LEVELS["1"].with_overrides(batch_size=8, by_epochs=(rebatch,)))
    assert run(tiny_cifar, tmp_path, COSTS, *PLANNED, measure=False, small=without_batch(SMALL),
               tiny=without_batch(TINY_TRAIN)) == 0
    results = json.loads((tmp_path / RUN / "results.json").read_text())
    plan = results["time_budget"]
    assert plan["retimed_from"] == {"batch_size": 8, "planned_epochs": pytest.approx(2.9)}
    epochs = sum(plan["planned_epochs"].values())
    assert epochs > 2.9 and sum(plan["planned_steps"].values()) == pytest.approx(epochs * 10)
    assert results["recipe"]["batch_size"] == 16 and results["recipe"]["tuned_for"] == pytest.approx(2.9)
    assert yaml.safe_load((tmp_path / RUN / "config.yaml").read_text())["batch_size"] == 16
    out = capsys.readouterr().out
    assert "global batch 16" in out and "batch 8 bought 2.90 epochs, which took the row" in out


@pytest.mark.slow
def test_a_resumed_budget_run_keeps_its_row_when_a_new_plan_would_take_another(level_with_rows,
                                                                                tiny_cifar, tmp_path):
    assert run(tiny_cifar, tmp_path, COSTS, *PLANNED, stop_at=30, small=SMALL) == 143
    slower = RunCosts((5.0, 10.0), 5.0, 10.0, 2.0)  # a new plan: under 2 epochs, no row
    assert run(tiny_cifar, tmp_path, slower, *PLANNED, "--resume", measure=False, small=SMALL) == 0
    recipe = json.loads((tmp_path / RUN / "results.json").read_text())["recipe"]
    assert [p["lr"] for p in recipe["phases"]] == [3e-3, 3e-3] and recipe["label_smoothing"] == 0.1


def test_help_lists_each_levels_rows(level_with_rows):
    from cifar10_levels.cli.train import levels_table

    table = levels_table()
    assert "level 1, from 2 planned epochs (--epochs, or what --time-budget buys): lr 0.003, batch 8, " \
           "weight decay 0.02, label smoothing 0.1, whitening bias over 0.5 of the steps, zero-fill crop, " \
           "random flip" in table
    assert "level 1, from 3.5 planned epochs" in table


def test_a_row_whose_every_value_the_user_gave_leaves_the_recipe_as_it_is():
    recipe = LEVELS["1"].with_overrides(by_epochs=(SHORT,))
    every = frozenset({"lr", "label_smoothing", "whiten_bias_fraction", "batch_size", "weight_decay",
                       "crop_fill", "flip_alternate"})
    assert recipe.tuned(5, every) == recipe
    assert recipe.tuned(5, every - {"flip_alternate"}) != recipe
