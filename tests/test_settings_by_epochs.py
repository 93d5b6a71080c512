"""A recipe's settings by planned epochs (Recipe.by_epochs): the row for --epochs is taken when the
command line is read, the row for what --time-budget buys once the plan is made; a flag the user gave
keeps its value; config.yaml records what ran, so --config and --resume repeat it."""
from __future__ import annotations

import json

import pytest
import yaml

from cifar10_levels.cli.train import parse_run_config
from cifar10_levels.recipes import LEVELS, Phase, Recipe, Tuning
from cifar10_levels.runtime.time_budget import RunCosts

from helpers.budget import SMALL, run

SHORT, LONG = Tuning(2.0, lr=3e-3, label_smoothing=0.1, whiten_bias_fraction=0.5), \
    Tuning(3.5, lr=5e-3, label_smoothing=0.05, whiten_bias_fraction=0.25)
RUN = "L1-test_resnet-s42"
# 60 s buys 0.7 + 2.2 = 2.9 epochs of --epochs 1 3 (test_time_budget's worked example): the SHORT row,
# where the same --epochs without a budget, 4 epochs, take the LONG one
COSTS = RunCosts((0.5, 1.0), epoch_end_seconds=0.5, final_eval_seconds=1.0, spent_seconds=2.0)
PLANNED = ["--epochs", "1", "3", "--time-budget", "1m"]


@pytest.fixture
def level_with_rows(monkeypatch):
    monkeypatch.setitem(LEVELS, "1", LEVELS["1"].with_overrides(by_epochs=(SHORT, LONG)))


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
    pinned = recipe.tuned(40, frozenset({"lr", "label_smoothing"}))
    assert (lrs(pinned), pinned.label_smoothing, pinned.whiten_bias_fraction) == ([0.1], 0.2, 0.25)
    assert pinned.tuning_line() == ("settings for 40.00 planned epochs (the level's row from 3.5): lr 0.1, "
                                    "label smoothing 0.2, whitening bias over 0.25 of the steps")


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
    assert "settings for 2.90 planned epochs (the level's row from 2): lr 0.003/0.003, label smoothing " \
           "0.1" in capsys.readouterr().out
    # the head phase's schedule (0.7 epochs) starts at the row's lr
    assert json.loads((run_dir / "history.jsonl").read_text().splitlines()[0])["lr"] < 3e-3


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
    assert "level 1, from 2 planned epochs (--epochs, or what --time-budget buys): lr 0.003, smooth 0.1, " \
           "whitening bias over 0.5 of the steps" in table
    assert "level 1, from 3.5 planned epochs" in table


def test_a_row_whose_every_value_the_user_gave_leaves_the_recipe_as_it_is():
    recipe = LEVELS["1"].with_overrides(by_epochs=(SHORT,))
    assert recipe.tuned(5, frozenset({"lr", "label_smoothing", "whiten_bias_fraction"})) == recipe
