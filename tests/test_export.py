"""cifar10-export: timm loads the export with the same logits, the card passes huggingface_hub's
parsers, and --push-to-hub without a token or network fails fast and keeps the export."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from helpers.commands import ROOT, TINY_TRAIN, run_cli
from helpers.runs import trained_run

pytestmark = pytest.mark.slow  # whole training runs, in this process or started as commands


def export(*args, env=None):
    return subprocess.run([sys.executable, "-m", "cifar10_levels.cli.export", *map(str, args)], cwd=ROOT,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module", params=["resnet", "speednet"])
def exported(request, tiny_cifar, tmp_path_factory):
    run = trained_run(request.param, tiny_cifar, tmp_path_factory)
    out = tmp_path_factory.mktemp("export") / "model"
    result = export(run / "best.safetensors", out)
    assert result.returncode == 0, result.stderr
    return run, out


def test_timm_loads_the_export_with_the_same_logits_as_load_checkpoint(exported):
    import timm

    import cifar10_levels.models.speednet  # noqa: F401  the card says so for cifar_speednet
    from cifar10_levels.checkpoint.io import load_checkpoint

    run, out = exported
    ours, meta = load_checkpoint(run / "best.safetensors")
    theirs = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    x = torch.randn(4, 3, meta.img_size, meta.img_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(ours(x), theirs(x))
    config = json.loads((out / "config.json").read_text())
    cfg = config["pretrained_cfg"]
    assert config["architecture"] == meta.arch and config["num_classes"] == 10
    assert config["label_names"] == meta.class_names
    assert cfg["input_size"] == [3, meta.img_size, meta.img_size]
    assert cfg["mean"] == pytest.approx(meta.mean) and cfg["std"] == pytest.approx(meta.std)
    assert cfg["interpolation"] == "bilinear" and cfg["crop_pct"] == 1.0
    assert tuple(timm.data.resolve_data_config({}, model=theirs)["input_size"]) == (
        3, meta.img_size, meta.img_size)
    assert not list(out.glob("*.bin")) and not list(out.glob(".*"))  # no pickles, no leftovers


def test_card_metadata_passes_huggingface_hub_parsers(exported):
    from huggingface_hub import ModelCard, ModelCardData
    from huggingface_hub.repocard import metadata_load
    from huggingface_hub.repocard_data import model_index_to_eval_results

    run, out = exported
    results = json.loads((run / "results.json").read_text())
    metadata = metadata_load(out / "README.md")
    assert metadata["library_name"] == "timm" and metadata["datasets"] == ["uoft-cs/cifar10"]
    name, evals = model_index_to_eval_results(metadata["model-index"])
    values = {e.metric_name: e.metric_value for e in evals}
    assert all(e.dataset_type == "uoft-cs/cifar10" and e.dataset_split == "test" for e in evals)
    assert values["Test accuracy"] == round(results["test_acc"], 4)
    assert values["Test accuracy with TTA (2 views)"] == round(results["test_acc_tta"], 4)
    ModelCardData(**metadata)  # the same class the Hub client builds from a card
    card = ModelCard.load(out / "README.md")
    assert card.data.eval_results[0].metric_value == round(results["test_acc"], 4)
    text = card.text
    assert "![confusion matrix on the test split](confusion.png)" in text
    assert (out / "confusion.png").is_file() and (out / "reliability.png").is_file()
    assert "| truck |" in text and "wall time" in text and "hardware" in text
    assert "from scratch" in text  # a known limit


def test_the_cards_snippet_runs_as_written(exported, tmp_path):
    """The card's Python block, with the Hub id swapped for the local export."""
    from PIL import Image

    _, out = exported
    snippet = re.search(r"```python\n(.*?)```", (out / "README.md").read_text(), re.S).group(1)
    Image.new("RGB", (64, 48), (230, 25, 75)).save(tmp_path / "image.png")
    result = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True,
                            text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert "airplane" in result.stdout or "truck" in result.stdout


def without_hub_access(tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    return {**env, "HF_HOME": str(tmp_path / "hf_home")}  # no saved token either


def test_push_offline_fails_in_one_line_and_keeps_the_export(tiny_cifar, tmp_path_factory, tmp_path):
    run = trained_run("resnet", tiny_cifar, tmp_path_factory)
    env = {**without_hub_access(tmp_path), "HF_TOKEN": "hf_not_checked_offline", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "cifar10_levels.cli.export", str(run), str(tmp_path / "m"),
                             "--push-to-hub", "someone/cifar10-test"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "HF_HUB_OFFLINE" in lines[0] and "token" not in lines[0].split(";")[0]
    assert (tmp_path / "m" / "model.safetensors").is_file() and "kept" in lines[0]


def test_push_without_a_token_fails_in_one_line(tiny_cifar, tmp_path_factory, tmp_path):
    run = trained_run("resnet", tiny_cifar, tmp_path_factory)
    env = without_hub_access(tmp_path)
    env.pop("HF_HUB_OFFLINE"), env.pop("HF_DATASETS_OFFLINE")
    result = subprocess.run([sys.executable, "-m", "cifar10_levels.cli.export", str(run), str(tmp_path / "m"),
                             "--push-to-hub", "someone/cifar10-test"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "HF_TOKEN is unset" in lines[0] and "hf auth login" in lines[0]
    assert (tmp_path / "m" / "config.json").is_file()


def test_train_push_to_hub_is_checked_before_any_training(tiny_cifar, tmp_path):
    env = {**without_hub_access(tmp_path), "HF_HUB_OFFLINE": "1"}
    result = run_cli("train.py", "--dataset", tiny_cifar, "--output-dir", tmp_path / "runs",
                     *TINY_TRAIN, "--arch", "test_resnet", "--push-to-hub", "someone/x", env=env,
                     timeout=600)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "--push-to-hub" in result.stderr
    assert "epoch" not in result.stdout and not (tmp_path / "runs").exists()


def test_bad_repo_id_and_missing_checkpoint_are_one_line_errors(tmp_path):
    result = export(tmp_path / "nope.safetensors", tmp_path / "m")
    assert result.returncode == 2 and "no such file" in result.stderr
    assert "Traceback" not in result.stderr


def test_push_uploads_the_export_folder_as_written(exported, monkeypatch):
    """Only the calls into huggingface_hub are checked here (HfApi replaced by a recorder); what the
    Hub answers is not: tests never reach it."""
    from huggingface_hub import HfApi, ModelCard

    from cifar10_levels.errors import UserError
    from cifar10_levels.hub.export import push_export

    _, out = exported
    calls = []
    monkeypatch.setattr(ModelCard, "validate", lambda self, repo_type=None: calls.append("validate"))
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(
        ("create_repo", repo_id, kw["private"])) or type("Url", (), {"repo_id": repo_id})())
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.append(
        ("upload_folder", kw["repo_id"], kw["folder_path"])))
    push_export(out, "someone/m", True, "hf_token")
    assert calls == ["validate", ("create_repo", "someone/m", True),
                     ("upload_folder", "someone/m", str(out))]

    def refuse(self, **kw):
        raise OSError("connection reset")
    monkeypatch.setattr(HfApi, "upload_folder", refuse)
    with pytest.raises(UserError, match="upload failed .*connection reset.*kept in"):
        push_export(out, "someone/m", False, "hf_token")


def test_the_card_says_when_the_weights_are_the_ema():
    from cifar10_levels.checkpoint.meta import CheckpointMeta
    from cifar10_levels.hub.model_card import card_text

    meta = CheckpointMeta(arch="resnet18", level="1", img_size=32, num_classes=2, class_names=["a", "b"],
                          mean=[0.5] * 3, std=[0.25] * 3, seed=0, epoch=3, val_acc=0.5,
                          recipe={"ema_decay": 0.999, "phases": []})
    raw = card_text(meta, None, "me/model", "model", None, None)
    assert "moving average" not in raw
    meta.weights = "ema"
    assert "the exponential moving average of the trained weights (decay at most 0.999)" in \
        card_text(meta, None, "me/model", "model", None, None)
