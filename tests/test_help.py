"""`--help` of every command a user types answers without importing torch; train.py's explains every
flag, shows the levels' values in a table, and never says `(default: None)`."""
from __future__ import annotations

import re

import pytest

from cifar10_levels.cli.train import train_parser
from cifar10_levels.recipes import LEVELS

from helpers.commands import HEAVY_LIBRARIES, command_help, console_scripts, run_cli

ENTRIES = ("train", "ensemble", "evaluate", "predict", "export", "report")  # cifar10-NAME
MODULES = ("report", "evaluate", "predict", "export")  # python -m cifar10_levels.cli.NAME
COMMANDS = [("entry", f"cifar10-{name}") for name in ENTRIES] + \
    [("script", script) for script in ("train.py", "ensemble.py")] + \
    [("module", f"cifar10_levels.cli.{name}") for name in MODULES]


def shows_flag(text: str, flag: str) -> bool:
    """`flag` as a whole word: `--lr` is not shown by `--lr-scaling`."""
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text) is not None


def test_every_console_script_is_a_cli_entry_point():
    scripts = console_scripts()
    assert set(scripts) == {f"cifar10-{name}" for name in ENTRIES}
    elsewhere = {name: target for name, target in scripts.items()
                 if not target.startswith("cifar10_levels.cli.")}
    assert elsewhere == {}, "console scripts outside cifar10_levels.cli"


@pytest.mark.parametrize("kind,command", COMMANDS, ids=[command for _, command in COMMANDS])
def test_help_answers_without_importing_a_heavy_library(kind, command):
    target = console_scripts()[command] if kind == "entry" else command
    run = command_help(kind, target, name=command)
    assert run.returncode == 0 and run.stdout.startswith("usage: "), run.stdout + run.stderr
    assert run.heavy == [], f"{command} --help imported {run.heavy} (of {HEAVY_LIBRARIES})"


def test_help_shows_every_flag_and_each_levels_values():
    result = run_cli("train.py", "--help")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "(default: None)" not in text and "README" not in text
    assert text.count("Hugging Face Hub") == 1  # --dataset's default, said once
    for flag in ("--level", "--arch", "--img-size", "--epochs", "--lr", "--batch-size", "--weight-decay",
                 "--seed", "--no-pretrained", "--pretrained-file", "--output-dir", "--train-limit",
                 "--eval-limit", "--resume", "--dataset", "--overwrite", "--no-progress",
                 "--no-channels-last", "--run-name"):
        assert shows_flag(text, flag), flag
    table = text[text.index("what each level sets"):].splitlines()
    for name, recipe in LEVELS.items():
        row = next(line.split() for line in table if line.split()[:1] == [name])
        assert row[1:3] == [recipe.arch, str(recipe.img_size)]
        assert str(recipe.batch_size) in row and f"{recipe.weight_decay:g}" in row


def test_a_flag_is_shown_only_by_itself():
    assert shows_flag("  --lr LR [LR]  peak rates", "--lr") and shows_flag("[--lr LR]", "--lr")
    assert not shows_flag("  --lr-scaling {none,linear}", "--lr")
    assert not shows_flag("  --no-pretrained", "--pretrained")


def test_every_flag_has_a_help_line():
    missing = [a.option_strings for a in train_parser()._actions if not (a.help or "").strip()]
    assert missing == []
