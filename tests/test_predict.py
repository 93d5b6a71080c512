"""cifar10-predict on real image files written here, and cifar10-evaluate on the test split."""
import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from helpers.commands import ROOT, console_script_in_process
from helpers.runs import trained_run

pytestmark = pytest.mark.slow  # whole training runs, in this process or started as commands


def cli(command, *args):
    """`cifar10-COMMAND ARGS` through the console script's entry point, in this process (its
    `--help` in a new interpreter: tests/test_help.py)."""
    return console_script_in_process(f"cifar10-{command}", *args)


@pytest.fixture(scope="module")
def resnet_run(tiny_cifar, tmp_path_factory):
    return trained_run("resnet", tiny_cifar, tmp_path_factory)


@pytest.fixture(scope="module")
def test_images(tiny_cifar, tmp_path_factory):
    """The test split as PNG files named INDEX_LABEL.png, and the split itself."""
    from cifar10_levels.data.cifar10 import load_cifar10

    test = load_cifar10(str(tiny_cifar)).test
    folder = tmp_path_factory.mktemp("test_pngs")
    for i, (image, label) in enumerate(zip(test.images, test.labels)):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:03d}_{label}.png")
    return folder, test


def reference_probs(checkpoint, images):
    """An independent forward pass: torch's interpolate and plain arithmetic, no package code path."""
    from cifar10_levels.checkpoint.io import load_checkpoint

    model, meta = load_checkpoint(checkpoint)
    mean = torch.tensor(meta.mean).view(1, 3, 1, 1)
    std = torch.tensor(meta.std).view(1, 3, 1, 1)
    x = (images.float() / 255 - mean) / std
    x = torch.nn.functional.interpolate(x, size=meta.img_size, mode="bilinear", align_corners=False)
    with torch.inference_mode():
        return model(x).softmax(1)


def test_predictions_on_test_pngs_agree_with_the_runs_own_evaluation(resnet_run, test_images, tmp_path):
    folder, test = test_images
    results = json.loads((resnet_run / "results.json").read_text())
    for tta, key in ((1, "test_acc"), (2, "test_acc_tta")):
        out = tmp_path / f"p{tta}.json"
        result = cli("predict", "--weights", resnet_run, folder, "--tta", tta, "--output", out,
                     "--top-k", 10)
        assert result.returncode == 0, result.stderr
        rows = json.loads(out.read_text())
        assert len(rows) == len(test)
        labels = [int(os.path.basename(r["file"]).split("_")[1][0]) for r in rows]
        class_names = list(results["per_class_acc"])
        right = [class_names[label] == r["predictions"][0]["class"] for label, r in zip(labels, rows)]
        assert sum(right) / len(right) == pytest.approx(results[key], abs=1e-9)
    plain = json.loads((tmp_path / "p1.json").read_text())
    expected = reference_probs(resnet_run / "best.safetensors", test.images)
    for i, row in enumerate(plain):
        got = {p["class"]: p["probability"] for p in row["predictions"]}
        assert [got[c] for c in class_names] == pytest.approx(expected[i].tolist(), abs=1e-4)
    assert "top-1" in result.stdout and "airplane" in result.stdout


def test_any_mode_and_size_and_a_corrupt_file(resnet_run, test_images, tmp_path):
    folder, test = test_images
    original = Image.open(sorted(folder.glob("*.png"))[3])
    original.save(tmp_path / "original.png")
    original.convert("L").save(tmp_path / "gray.png")
    rgba = original.convert("RGBA")
    rgba.putalpha(200)
    rgba.save(tmp_path / "rgba.png")
    original.quantize(256).save(tmp_path / "palette.png")
    original.resize((640, 480), Image.Resampling.NEAREST).save(tmp_path / "large.jpg", quality=95)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    out = tmp_path / "p.csv"
    result = cli("predict", "--weights", resnet_run, tmp_path, tmp_path / "large.jpg",
                 "--output", out, "--top-k", 1)
    assert result.returncode == 0, result.stderr
    assert "broken.png" in result.stderr and "skipped" in result.stderr
    rows = out.read_text().splitlines()
    assert rows[0] == "file,rank,class,probability"
    predicted = {os.path.basename(r.split(",")[0]): r.split(",")[2] for r in rows[1:]}
    assert set(predicted) == {"original.png", "gray.png", "rgba.png", "palette.png", "large.jpg"}
    assert predicted["rgba.png"] == predicted["original.png"]  # alpha dropped, colours kept
    assert predicted["large.jpg"] == predicted["original.png"]  # brought back to 32 px first


def test_no_readable_image_exits_2(resnet_run, tmp_path):
    (tmp_path / "a.png").write_bytes(b"nothing")
    result = cli("predict", "--weights", resnet_run, tmp_path / "a.png", tmp_path / "missing.jpg")
    assert result.returncode == 2
    assert "a.png" in result.stderr and "no readable image" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_ensemble_and_an_export_directory_as_weights(resnet_run, tiny_cifar, tmp_path_factory,
                                                        test_images, tmp_path):
    folder, test = test_images
    speednet = trained_run("speednet", tiny_cifar, tmp_path_factory)
    export = tmp_path / "export"
    assert cli("export", speednet / "best.safetensors", export).returncode == 0
    one, both = tmp_path / "one.json", tmp_path / "both.json"
    assert cli("predict", "--weights", speednet / "best.safetensors", folder, "--output", one,
               "--top-k", 10).returncode == 0
    via_export = tmp_path / "export.json"
    assert cli("predict", "--weights", export, folder, "--output", via_export,
               "--top-k", 10).returncode == 0
    assert json.loads(one.read_text()) == json.loads(via_export.read_text())
    result = cli("predict", "--weights", resnet_run, export, folder, "--vote", "majority",
                 "--output", both)
    assert result.returncode == 0, result.stderr
    assert "2 models, majority vote" in result.stdout and len(json.loads(both.read_text())) == len(test)


def test_evaluate_matches_the_run_and_writes_nothing_by_default(resnet_run, tiny_cifar, tmp_path):
    results = json.loads((resnet_run / "results.json").read_text())
    before = sorted(p.name for p in resnet_run.iterdir())
    result = cli("evaluate", "--weights", resnet_run, "--dataset", tiny_cifar, "--tta", 2)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in resnet_run.iterdir()) == before
    accuracy_line = next(line for line in result.stdout.splitlines() if line.startswith("accuracy"))
    assert accuracy_line.split()[1:] == [f"{results['test_acc']:.2%}", f"{results['test_acc_tta']:.2%}"]
    assert "ECE" in result.stdout and "NLL" in result.stdout and "truck" in result.stdout
    result = cli("evaluate", "--weights", resnet_run, "--dataset", tiny_cifar, "--output", tmp_path)
    evaluation = json.loads((tmp_path / "evaluation.json").read_text())
    assert evaluation["plain"]["nll"] == pytest.approx(results["test_nll"], abs=1e-6)
    assert evaluation["plain"]["ece"] == pytest.approx(results["test_ece"], abs=1e-6)
    assert (tmp_path / "reliability.png").is_file() and (resnet_run / "reliability.png").is_file()


def test_ensemble_of_one_points_to_evaluate(resnet_run, tiny_cifar):
    result = subprocess.run([sys.executable, str(ROOT / "ensemble.py"), "--weights",
                             str(resnet_run / "best.safetensors"), "--dataset", str(tiny_cifar)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and "cifar10_levels.cli.evaluate" in result.stderr
