"""Fault corpus: checkpoints, export directories and the model card.

Every case is a file made bad here (metadata of the wrong type or range, a crafted config.json,
text meant to render as HTML or markdown), given to the commands that read it: exit 2 and one line
naming the file and the field, no traceback, and no file changed or left behind; or, where the input
is fine, success. docs/bad_inputs.md lists the cases.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from cifar10_levels.cli.evaluate import main as evaluate_main
from cifar10_levels.cli.export import main as export_main
from cifar10_levels.cli.predict import main as predict_main
from cifar10_levels.cli.report import main as report_main

from helpers.faults import assert_refused, call, edit_json, sha256_tree, write_checkpoint


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A good checkpoint, its export, and an image to classify."""
    from PIL import Image

    root = tmp_path_factory.mktemp("faults_checkpoints")
    good = write_checkpoint(root / "good.safetensors")
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(root / "image.png")
    assert call(export_main, good, root / "export").code == 0
    return root


# metadata field: JSON text a crafted checkpoint holds there
BAD_METADATA = {
    "img_size as a string": ("img_size", '"32"'),
    "img_size as a list": ("img_size", "[32]"),
    "img_size of zero": ("img_size", "0"),
    "num_classes as a float": ("num_classes", "10.0"),
    "num_classes as true": ("num_classes", "true"),
    "num_classes of a million": ("num_classes", "1000000"),
    "class_names as one string": ("class_names", '"airplane"'),
    "class_names with a line break": ("class_names", json.dumps(["a\n# b"] + ["c"] * 9)),
    "mean of two values": ("mean", "[0.5, 0.5]"),
    "mean not finite": ("mean", "[NaN, 0.5, 0.5]"),
    "std of zero": ("std", "[0.0, 0.25, 0.25]"),
    "std infinite": ("std", "[Infinity, 0.25, 0.25]"),
    "seed as a list": ("seed", "[1]"),
    "epoch as a string": ("epoch", '"one"'),
    "val_acc as a string": ("val_acc", '"0.5"'),
    "val_acc above 1": ("val_acc", "50"),
    "test_acc as a string": ("test_acc", '"high"'),
    "level as a list": ("level", '["1"]'),
    "level with markup": ("level", '"<b>1</b>"'),
    "version as a number": ("version", "1"),
    "recipe as a list": ("recipe", "[]"),
    "recipe tta as a string": ("recipe", json.dumps({"tta": "two"})),
    "recipe phases of strings": ("recipe", json.dumps({"phases": ["full"]})),
    "weights neither raw nor ema": ("weights", '"both"'),
    "arch with an unknown pretrained tag": ("arch", '"test_resnet.no_such_tag"'),
    "arch as a number": ("arch", "7"),
}


@pytest.mark.parametrize("case", BAD_METADATA, ids=list(BAD_METADATA))
def test_checkpoint_metadata_of_the_wrong_type_is_refused(case, corpus, tmp_path):
    field, value = BAD_METADATA[case]
    path = write_checkpoint(tmp_path / "crafted.safetensors", **{field: value})
    before = sha256_tree(tmp_path, corpus)
    for main, argv in ((predict_main, ["--weights", path, corpus / "image.png"]),
                       (evaluate_main, ["--weights", path, "--dataset", tmp_path / "unused"]),
                       (export_main, [path, tmp_path / "out"])):
        line = assert_refused(call(main, *argv), str(path))
        assert field.split(".")[0] in line or "arch" in line, line
    assert sha256_tree(tmp_path, corpus) == before


@pytest.mark.parametrize("arch", ["test_resnet", "test_resnet.r160_in1k"])
def test_a_good_checkpoint_predicts(arch, corpus, tmp_path):
    path = write_checkpoint(tmp_path / "good.safetensors", arch=json.dumps(arch))
    outcome = call(predict_main, "--weights", path, corpus / "image.png")
    assert outcome.code == 0 and "Traceback" not in outcome.stderr, outcome.stderr


def _drop_names(config: dict) -> None:
    config.pop("label_names"), config["cifar10_levels"].pop("class_names")


# config.json edit: what it does to a good export
BAD_CONFIGS = {
    "num_classes of a million, no names": lambda c: (_drop_names(c), c.update(num_classes=10 ** 6)),
    "num_classes as a string": lambda c: c.update(num_classes="10"),
    "num_classes of zero": lambda c: (_drop_names(c), c.update(num_classes=0)),
    "num_classes of 3 with 10 names": lambda c: c.update(num_classes=3),
    "input_size of two values": lambda c: c["pretrained_cfg"].update(input_size=[3, 32]),
    "input_size of zero": lambda c: c["pretrained_cfg"].update(input_size=[3, 0, 0]),
    "input_size huge": lambda c: c["pretrained_cfg"].update(input_size=[3, 10 ** 6, 10 ** 6]),
    "input_size as a string": lambda c: c["pretrained_cfg"].update(input_size="32"),
    "mean of two values": lambda c: c["pretrained_cfg"].update(mean=[0.5, 0.5]),
    "std of zeros": lambda c: c["pretrained_cfg"].update(std=[0, 0, 0]),
    "std of strings": lambda c: c["pretrained_cfg"].update(std=["a", "b", "c"]),
    "three label_names for ten classes": lambda c: c.update(label_names=["a", "b", "c"]),
    "model_args another constructor argument": lambda c: c["model_args"].update(depth=10 ** 6),
    "model_args one input channel": lambda c: c["model_args"].update(in_chans=1),
    "model_args other classes": lambda c: c["model_args"].update(num_classes=1000),
    "architecture with an unknown tag": lambda c: c.update(architecture="test_resnet.no_such_tag"),
    "architecture unknown": lambda c: c.update(architecture="no_such_net"),
    "pretrained_cfg a list": lambda c: c.update(pretrained_cfg=[]),
}


@pytest.mark.parametrize("case", BAD_CONFIGS, ids=list(BAD_CONFIGS))
def test_export_config_is_checked_before_use(case, corpus, tmp_path):
    export = tmp_path / "export"
    shutil.copytree(corpus / "export", export)
    edit_json(export / "config.json", BAD_CONFIGS[case])
    before = sha256_tree(tmp_path, corpus)
    for main, argv in ((predict_main, ["--weights", export, corpus / "image.png"]),
                       (evaluate_main, ["--weights", export, "--dataset", tmp_path / "unused"])):
        assert_refused(call(main, *argv), str(export / "config.json"))
    assert sha256_tree(tmp_path, corpus) == before


def test_export_meta_refuses_a_huge_class_count_without_allocating_it(corpus, tmp_path):
    from cifar10_levels.checkpoint.weights import export_meta
    from cifar10_levels.errors import UserError

    export = tmp_path / "export"
    shutil.copytree(corpus / "export", export)
    edit_json(export / "config.json", lambda c: (_drop_names(c), c.update(num_classes=10 ** 6)))
    with pytest.raises(UserError, match="num_classes"):
        export_meta(export)


def test_a_good_export_predicts(corpus):
    outcome = call(predict_main, "--weights", corpus / "export", corpus / "image.png")
    assert outcome.code == 0 and "Traceback" not in outcome.stderr, outcome.stderr


# ---- the model card ------------------------------------------------------------------------
CRAFTED = ["<script>alert(1)</script>", "# Injected heading", "```", "[click](http://evil.test)",
           "</details><img src=x onerror=alert(1)>", "a | b"]


def results_json(test_acc: float, **changes) -> dict:
    """results.json's fields as a finished run writes them."""
    results = {"level": "1", "arch": "test_resnet", "title": "tiny", "test_acc": test_acc,
               "test_acc_tta": None, "tta_views": 1, "best_val_acc": 0.5, "best_epoch": 1,
               "test_nll": 1.0, "test_ece": 0.1, "per_class_acc": {f"c{i}": 0.5 for i in range(10)},
               "num_params": 1000, "train_seconds": 12.0, "hardware": "CPU", "precision": "no",
               "global_batch": 32, "dataset": "tiny", "wandb_url": None,
               "split_sizes": {"train": 400, "val": 40, "test": 100}, "recipe": {}}
    return {**results, **changes}


def headings_and_fences(card: str) -> list[str]:
    return [line for line in card.splitlines() if line.startswith(("#", "```", "<"))]


def test_crafted_text_in_metadata_and_results_renders_as_text(corpus, tmp_path):
    run = tmp_path / "run"
    names = CRAFTED + [f"class{i}" for i in range(10 - len(CRAFTED))]
    recipe = {"title": CRAFTED[0], "phases": [{"name": CRAFTED[2], "epochs": 1, "lr": 0.1,
                                               "train_backbone": True}], "pretrained": False}
    path = write_checkpoint(run / "best.safetensors", class_names=json.dumps(names),
                            recipe=json.dumps(recipe))
    (run / "results.json").write_text(json.dumps(results_json(
        0.5, title=CRAFTED[4], hardware=CRAFTED[1], dataset=CRAFTED[3],
        per_class_acc={n: 0.5 for n in names})))
    assert call(export_main, path, tmp_path / "out").code == 0
    card = (tmp_path / "out" / "README.md").read_text()
    for text in CRAFTED:  # markup and links: nowhere as they were written
        if any(mark in text for mark in ("<", "](")):  # fences: compared below
            assert text not in card.replace("```python", "").replace("```json", ""), text
    for line in card.splitlines():  # headings: only ours (below); table rows: two cells each
        if line.startswith("|"):
            assert len(re.findall(r"(?<!\\)\|", line)) == 3, line
    plain = tmp_path / "plain"
    assert call(export_main, write_checkpoint(tmp_path / "p" / "best.safetensors"), plain).code == 0
    assert headings_and_fences(card) == headings_and_fences((plain / "README.md").read_text())


RESULTS_CASES = {
    "test_acc_tta as a string": {"test_acc_tta": "high"},
    "per_class_acc as a list": {"per_class_acc": [0.5]},
    "split_sizes without test": {"split_sizes": {"train": 1, "val": 1}},
    "hardware with a line break": {"hardware": "CPU\n# Injected"},
    "wandb_url to a script": {"wandb_url": "javascript:alert(1)"},
    "train_seconds infinite": {"train_seconds": float("inf")},
    "recipe phases of strings": {"recipe": {"phases": ["x"]}},
}


@pytest.mark.parametrize("case", RESULTS_CASES, ids=list(RESULTS_CASES))
def test_export_checks_results_json(case, tmp_path):
    run = tmp_path / "run"
    path = write_checkpoint(run / "best.safetensors")
    (run / "results.json").write_text(json.dumps(results_json(0.5, **RESULTS_CASES[case])))
    before = sha256_tree(tmp_path)
    assert_refused(call(export_main, path, tmp_path / "out"), str(run / "results.json"))
    assert sha256_tree(tmp_path) == before


def test_export_refuses_a_wandb_url_that_is_not_one(corpus, tmp_path):
    before = sha256_tree(tmp_path)
    outcome = call(export_main, corpus / "good.safetensors", tmp_path / "out", "--wandb-url",
                   "javascript:alert(1)")
    assert_refused(outcome, "--wandb-url")
    assert sha256_tree(tmp_path) == before


REPORT_CASES = {  # results.json fields the report table shows
    "test_acc_tta as a string": {"test_acc_tta": "high"},
    "test_acc above 1": {"test_acc": 91.5},
    "train_seconds as a list": {"train_seconds": [1]},
    "title with a line break": {"title": "a\n| b |"},
    "not an object": [1, 2],
}


@pytest.mark.parametrize("case", REPORT_CASES, ids=list(REPORT_CASES))
def test_report_skips_a_results_json_that_is_not_in_shape(case, tmp_path):
    good = {"level": "1", "title": "a | b", "arch": "test_resnet", "test_acc": 0.5}
    for run, data in (("good", good), ("bad", REPORT_CASES[case] if isinstance(REPORT_CASES[case], list)
                                       else {**good, **REPORT_CASES[case]})):
        (tmp_path / run).mkdir()
        (tmp_path / run / "results.json").write_text(json.dumps(data))
    before = sha256_tree(tmp_path)
    outcome = call(report_main, tmp_path)
    assert outcome.code == 0 and "Traceback" not in outcome.stderr, outcome.stderr
    assert f"warning: {tmp_path / 'bad' / 'results.json'}: not in the shape" in outcome.stderr
    rows = [line for line in outcome.stdout.splitlines() if line.startswith("| 1 ")]
    assert len(rows) == 1 and "a \\| b" in rows[0] and rows[0].endswith("| good |"), outcome.stdout
    assert sha256_tree(tmp_path) == before
