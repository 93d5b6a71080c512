"""Fault corpus: numbers on the command line.

Every flag of every command that takes a number refuses inf, -inf, nan and an overflowing 1e999
(found from the parsers themselves, so a new flag is covered), --seed beyond numpy's range and
durations beyond a month; a long --time-budget measures for a bounded time. Each case: exit 2, one
line naming the flag, no traceback, nothing written. docs/bad_inputs.md lists the cases.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from cifar10_levels.cli import arguments
from cifar10_levels.cli.ensemble import ensemble_parser, main as ensemble_main
from cifar10_levels.cli.evaluate import evaluate_parser, main as evaluate_main
from cifar10_levels.cli.export import export_parser, main as export_main
from cifar10_levels.cli.predict import main as predict_main, predict_parser
from cifar10_levels.cli.train import train_main, train_parser

from helpers.commands import TINY_TRAIN
from helpers.faults import assert_refused, call, sha256_tree

COMMANDS = {  # command: (its parser, its main, the arguments it needs besides the flag)
    "train.py": (train_parser, train_main, ["--dataset", "tiny", "--output-dir", "out", *TINY_TRAIN]),
    "ensemble.py": (ensemble_parser, ensemble_main, ["--weights", "runs"]),
    "cifar10-predict": (predict_parser, predict_main, ["--weights", "model.safetensors", "image.png"]),
    "cifar10-evaluate": (evaluate_parser, evaluate_main, ["--weights", "model.safetensors"]),
    "cifar10-export": (export_parser, export_main, ["model.safetensors", "out"]),
}
NOT_NUMBERS = ("inf", "-inf", "nan", "NaN", "1e999")
TEXT_TYPES = (None, str, Path)


def number_flags() -> list[tuple[str, str]]:
    """(command, flag) for every option whose value is parsed as a number or a duration."""
    found = []
    for command, (parser, _, _) in COMMANDS.items():
        for action in parser()._actions:
            if action.option_strings and action.type not in TEXT_TYPES \
                    and getattr(action.type, "__name__", "") != "resume_mode":
                found.append((command, action.option_strings[0]))
    return found


NUMBER_FLAGS = number_flags()


def test_every_number_flag_is_parsed_by_a_checking_type():
    """A bare float or int type would let inf and nan (or any size) through."""
    for command, (parser, _, _) in COMMANDS.items():
        for action in parser()._actions:
            assert action.type not in (float, int), f"{command} {action.option_strings}"
    assert ("train.py", "--lr") in NUMBER_FLAGS and ("cifar10-predict", "--top-k") in NUMBER_FLAGS


@pytest.mark.parametrize("value", NOT_NUMBERS)
@pytest.mark.parametrize("command,flag", NUMBER_FLAGS, ids=[f"{c} {f}" for c, f in NUMBER_FLAGS])
def test_a_number_flag_refuses_what_is_not_a_finite_number(command, flag, value, tmp_path,
                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, main, needed = COMMANDS[command]
    outcome = call(main, *needed, f"{flag}={value}")
    assert_refused(outcome, flag)
    assert sha256_tree(tmp_path) == {str(tmp_path): "dir"}


RANGE_CASES = [
    ("--seed", "4294967296", "--seed"),
    ("--time-budget", "721h", "longer than 30 days"),
    ("--time-budget", "9" * 400 + "h", "--time-budget"),
    ("--checkpoint-every", "100000h", "--checkpoint-every"),
    ("--weight-decay", "-1", "--weight-decay"),
    ("--random-erasing", "1.5", "--random-erasing"),
    ("--label-smoothing", "1", "--label-smoothing"),
]


@pytest.mark.parametrize("flag,value,names", RANGE_CASES, ids=[f"{f} {v[:12]}" for f, v, _ in RANGE_CASES])
def test_train_refuses_numbers_out_of_range(flag, value, names, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    outcome = call(train_main, *COMMANDS["train.py"][2], flag, value)
    assert_refused(outcome, names)
    assert sha256_tree(tmp_path) == {str(tmp_path): "dir"}


@pytest.mark.parametrize("text,seconds", [("720h", 720 * 3600), ("1h30m", 5400), ("0.5s", 0.5)])
def test_durations_up_to_a_month_parse(text, seconds):
    assert arguments.duration(text) == seconds


def test_a_long_time_budget_measures_for_a_bounded_time(tiny_cifar, tmp_path, monkeypatch):
    """A month's budget: each measurement gets at most MAX_PROBE_SECONDS, not 1% of a month."""
    from cifar10_levels.runtime import time_budget_probe

    asked = []

    class Measured(Exception):
        pass

    def step_cost(images_step, batch, fixed_step=None, seconds=None, *args, **kwargs):
        asked.append(seconds)
        raise Measured  # the rest of the run is not this test's

    monkeypatch.setattr(time_budget_probe, "step_cost", step_cost)
    with pytest.raises(Measured):
        call(train_main, "--dataset", tiny_cifar, "--output-dir", tmp_path / "out", *TINY_TRAIN,
             "--arch", "test_resnet", "--epochs", "0", "1", "--train-limit", "64", "--eval-limit", "20",
             "--time-budget", "720h")
    assert asked and all(s <= time_budget_probe.MAX_PROBE_SECONDS for s in asked), asked


def test_parser_types_reject_and_accept():
    with pytest.raises(argparse.ArgumentTypeError, match="not a finite number"):
        arguments.positive(float)("inf")
    with pytest.raises(argparse.ArgumentTypeError, match="must be > 0"):
        arguments.positive(int)("0")
    assert arguments.finite_float("-1.5") == -1.5 and arguments.seed("4294967295") == 2 ** 32 - 1
