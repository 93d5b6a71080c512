"""A run is a file: every run directory holds config.yaml, `train.py --config` reads it (or a short
hand-written one) with flags on top, `--print-config` shows it without data, a bad file gets one line,
and a resume continues the run as its config.yaml says."""
from __future__ import annotations

import itertools
import json

import pytest
import yaml

from cifar10_levels.cli.train import parse_run_config
from cifar10_levels.recipes import LEVELS
from cifar10_levels.train.config import config_yaml
from cifar10_levels.train.step_hooks import StopFlag

from helpers.commands import train, train_in_process
from helpers.runs import EMA, EPOCHS, RUN, SMALL, outcome, same_tensors, trained_run


@pytest.mark.parametrize("level", list(LEVELS))
def test_each_levels_config_file_reads_back_as_the_same_config(level, tmp_path):
    config = parse_run_config(["--level", level, "--seed", "3", "--train-limit", "100"]).config
    path = tmp_path / "config.yaml"
    path.write_text(config_yaml(config))
    assert parse_run_config(["--config", str(path)]).config == config


def test_a_finished_runs_config_yaml_trains_the_same_weights_again(tiny_cifar, tmp_path):
    first = train(tiny_cifar, tmp_path / "first", *SMALL, "--epochs", "1", "1", "--tta", "2")
    assert first.returncode == 0
    run_dir = tmp_path / "first" / RUN
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    results = json.loads((run_dir / "results.json").read_text())
    assert results["config"] == saved
    assert saved["arch"] == "test_resnet" and saved["epochs"] == [1, 1] and saved["batch_size"] == 8
    assert saved["mixed_precision"] == "no" and saved["dataset"] == str(tiny_cifar)
    again = train_in_process(["--config", str(run_dir / "config.yaml"), "--output-dir", str(tmp_path / "again")])
    assert again.returncode == 0, again.stderr
    rerun_dir = tmp_path / "again" / RUN
    for name in ("best.safetensors", "last.safetensors"):
        assert same_tensors(run_dir / name, rerun_dir / name)
    assert outcome(rerun_dir) == outcome(run_dir)
    assert yaml.safe_load((rerun_dir / "config.yaml").read_text()) == \
        {**saved, "output_dir": str(tmp_path / "again")}


def test_print_config_prints_the_resolved_yaml_without_data(tmp_path):
    hand_written = tmp_path / "mine.yaml"
    hand_written.write_text("level: fast\nepochs: [3]\nlr: 0.1\ncrop-padding: 3\n")
    result = train_in_process(["--config", str(hand_written), "--epochs", "2", "--print-config",
                               "--dataset", str(tmp_path / "no_such_data"), "--output-dir", str(tmp_path / "out")])
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["level"] == "fast" and printed["arch"] == LEVELS["fast"].arch
    assert printed["epochs"] == [2] and printed["lr"] == [0.1] and printed["crop_padding"] == 3
    assert printed["batch_size"] == LEVELS["fast"].batch_size
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text, expected", [
    ("arch: resnet18\nsharpness: 2\n", "unknown key 'sharpness'"),
    ("img_size: abc\n", "img_size: 'abc' is not an int"),
    ("img_size: 0\n", "img_size: 0 must be > 0"),
    ("crop_fill: zigzag\n", "crop_fill: invalid choice: 'zigzag'"),
    ("weight_decay: -1\n", "weight_decay -1.0: must be >= 0"),
    ("epochs: [3]\n", "epochs: level 1 has 2 phase(s)"),
    ("compile: 3\n", "compile: 3 is not true or false"),
    ("lr: {head: 1}\n", "lr: {'head': 1}: expected a list of values"),
    ("resume: true\n", "resume: says what one command does"),
    ("arch: [resnet18\n", "not valid YAML at line 2"),
    ("img_size: 8\nno_pretrained: true\n", "img_size 8: use 16 to 1024 px"),
])
def test_a_bad_config_file_gets_one_line_naming_the_file_and_the_key(text, expected, tiny_cifar, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = train_in_process(["--config", str(path), "--dataset", str(tiny_cifar),
                               "--output-dir", str(tmp_path / "out")])
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert str(path) in result.stderr and expected in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


def test_a_flag_on_the_command_line_keeps_its_own_name_in_the_error(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("weight_decay: 0.1\n")
    result = train_in_process(["--config", str(path), "--weight-decay", "-1", "--print-config"])
    assert result.returncode == 2 and result.stderr == "error: --weight-decay -1.0: must be >= 0\n"


def test_a_resume_continues_the_run_as_configured_and_refuses_a_change(tiny_cifar, tmp_path,
                                                                       tmp_path_factory, monkeypatch):
    uninterrupted = trained_run("small_ema", tiny_cifar, tmp_path_factory)
    checks = itertools.count(1)
    monkeypatch.setattr(StopFlag, "requested", lambda self: next(checks) == 3)  # at global step 30
    assert train(tiny_cifar, tmp_path, *SMALL, *EPOCHS, *EMA, check=False).returncode == 143
    monkeypatch.undo()
    locate = ["--dataset", str(tiny_cifar), "--output-dir", str(tmp_path), "--arch", "test_resnet"]
    for change, named in ((["--lr", "0.5", "0.5"], "--lr: the run in {} trains with lr 0.01 0.01 "
                                                   "(its config.yaml), not 0.5 0.5"),
                          (["--ema", "0.5"], "--ema: the run in {} trains with ema 0.9 (its config.yaml), not 0.5"),
                          (["--seed", "1", "--run-name", RUN], "--seed: the run in {} trains with seed 42")):
        refused = train_in_process([*locate, *change, "--resume"])
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.startswith("error: " + named.format(tmp_path / RUN)), refused.stderr
    # only what locates the run, and flags that do not change the training
    resumed = train_in_process([*locate, "--resume", "--no-progress", "--checkpoint-every", "1h",
                                "--report-to", "none"])
    assert resumed.returncode == 0, resumed.stderr
    resumed_outcome, expected = outcome(tmp_path / RUN), outcome(uninterrupted)
    # the epoch cut by the stop sums its loss in two parts: equal up to float rounding
    assert resumed_outcome.pop("train_loss") == pytest.approx(expected.pop("train_loss"), rel=1e-6)
    assert resumed_outcome == expected
    assert same_tensors(tmp_path / RUN / "last.safetensors", uninterrupted / "last.safetensors")
