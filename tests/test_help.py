"""`train.py --help`: every flag explained, the levels' values in a table, no `(default: None)`."""
from __future__ import annotations

import subprocess
import sys

from cifar10_levels.cli.train import train_parser
from cifar10_levels.recipes import LEVELS

from helpers.commands import ROOT, run_cli


def test_help_shows_every_flag_and_each_levels_values():
    result = run_cli("train.py", "--help")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "(default: None)" not in text and "README" not in text
    assert text.count("Hugging Face Hub") == 1  # --dataset's default, said once
    for flag in ("--overwrite", "--no-progress", "--no-channels-last", "--run-name"):
        assert flag in text
    table = text[text.index("what each level sets"):].splitlines()
    for name, recipe in LEVELS.items():
        row = next(line.split() for line in table if line.split()[:1] == [name])
        assert row[1:3] == [recipe.arch, str(recipe.img_size)]
        assert str(recipe.batch_size) in row and f"{recipe.weight_decay:g}" in row


def test_every_flag_has_a_help_line():
    missing = [a.option_strings for a in train_parser()._actions if not (a.help or "").strip()]
    assert missing == []


def test_help_imports_no_heavy_library():
    code = ("import sys; from cifar10_levels.cli.train import train_parser; train_parser().format_help(); "
            "print(sorted({'torch', 'timm', 'datasets', 'accelerate'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr
