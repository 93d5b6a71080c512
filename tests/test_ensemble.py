"""ensemble.py end to end on three tiny trained checkpoints, and every bad input it must refuse."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from cifar10_levels.cli.ensemble import main as ensemble_main
from helpers.commands import run_cli, train
from helpers.data import CLASS_NAMES
from helpers.images import assert_picture

# (arch, training size): three architectures, two resolutions
MEMBERS = (("test_resnet", 32), ("test_efficientnet", 48), ("test_convnext", 32))


@pytest.fixture(scope="module")
def runs(tiny_cifar, tmp_path_factory) -> Path:
    """Three checkpoints trained by the real train.py, side by side as a user's ckpts/ would be."""
    out = tmp_path_factory.mktemp("ensemble_runs")

    def one(member):
        arch, size = member
        train(tiny_cifar, out, "--arch", arch, "--img-size", str(size), "--epochs", "0", "1",
              "--train-limit", "200", "--lr", "1e-2", "1e-2", env={"OMP_NUM_THREADS": "1"})

    with ThreadPoolExecutor(len(MEMBERS)) as pool:
        list(pool.map(one, MEMBERS))
    return out


def member_test_probs(runs: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(members, samples, classes) test probabilities and the labels, read from the members' caches."""
    from safetensors import safe_open

    probs, labels = [], None
    for path in sorted(runs.rglob(".best.*.probs.safetensors")):
        with safe_open(str(path), "pt") as f:
            if json.loads(f.metadata()["split"]) == "test":
                probs.append(f.get_tensor("probs"))
                labels = f.get_tensor("labels")
    assert len(probs) == len(MEMBERS)
    return torch.stack(probs), labels


def files_under(path: Path) -> set[Path]:
    return {p for p in path.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_votes_three_architectures_at_their_own_sizes(runs, tiny_cifar, tmp_path):
    result = run_cli("ensemble.py", "--weights", runs, "--dataset", tiny_cifar,
                     "--output-dir", tmp_path, "--batch-size", "32")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for word in ("test_resnet", "test_efficientnet", "test_convnext", "majority", "soft", "weighted",
                 "oracle", "majority ties", "summed probability", "pairwise disagreement",
                 "per-class test accuracy"):
        assert word in out, word

    results = json.loads((tmp_path / "ensemble_results.json").read_text())
    members = results["members"]
    assert sorted((m["arch"], m["eval_img_size"]) for m in members) == sorted(MEMBERS)
    assert results["split_sizes"] == {"val": 40, "test": 100}
    assert set(results["votes"]) == {"majority", "soft", "weighted", "fitted"}
    best_member = max(m["test_acc"] for m in members)
    assert results["oracle_test_acc"] >= best_member
    for vote in results["votes"].values():
        assert 0.0 <= vote["test_acc"] <= results["oracle_test_acc"]
    assert sum(results["votes"]["weighted"]["weights"]) == pytest.approx(1.0, abs=1e-3)
    # ties and votes recomputed by hand from the members' cached test probabilities
    probs, labels = member_test_probs(runs)
    preds = probs.argmax(2)                                      # (members, samples)
    ties = sum(len(set(preds[:, i].tolist())) == 3 for i in range(preds.shape[1]))  # 1-1-1 splits
    assert results["majority_ties"]["test"] == ties
    assert f"majority ties: {ties} test samples" in out
    soft = (probs.mean(0).argmax(1) == labels).float().mean().item()
    assert results["votes"]["soft"]["test_acc"] == pytest.approx(soft, abs=1e-9)
    majority = []
    for i in range(preds.shape[1]):
        values, counts = preds[:, i].unique(return_counts=True)
        tied = values[counts == counts.max()]
        majority.append(tied[probs.sum(0)[i, tied].argmax()])  # most summed probability wins a tie
    majority_acc = (torch.stack(majority) == labels).float().mean().item()
    assert results["votes"]["majority"]["test_acc"] == pytest.approx(majority_acc, abs=1e-9)
    # calibration of every member and vote, by hand: NLL, and ECE over 15 equal-width bins
    def nll(p):
        return -p[torch.arange(len(labels)), labels].clamp_min(1e-12).log().mean().item()

    def ece(p, pred):
        conf = p[torch.arange(len(labels)), pred]
        bins = torch.clamp((conf * 15).ceil().long() - 1, 0, 14)
        return sum((bins == b).sum().item() / len(labels) * abs(
            (pred == labels)[bins == b].float().mean().item() - conf[bins == b].mean().item())
            for b in range(15) if (bins == b).any())

    shares = torch.stack([torch.bincount(preds[:, i], minlength=10) for i in range(preds.shape[1])]) / 3
    expected = {"soft": (probs.mean(0), probs.mean(0).argmax(1)),
                "majority": (shares.double(), torch.stack(majority))}
    for name, (p, pred) in expected.items():
        assert results["votes"][name]["test_nll"] == pytest.approx(nll(p.double()), rel=1e-6)
        assert results["votes"][name]["test_ece"] == pytest.approx(ece(p.double(), pred), abs=1e-6)
    member_nll = sorted(round(nll(p.double()), 6) for p in probs)
    assert sorted(round(m["test_nll"], 6) for m in members) == member_nll
    assert "test NLL" in out and "test ECE" in out
    assert_picture(tmp_path / "ensemble_reliability.png", min_size=(500, 500))
    matrix = results["pairwise_disagreement_test"]
    assert len(matrix) == 3 and all(matrix[i][i] == 0 for i in range(3))
    assert sum(map(sum, results["confusion_matrix"])) == 100
    assert list(results["per_class_acc"]) == CLASS_NAMES
    assert_picture(tmp_path / "ensemble_confusion.png", min_size=(600, 500))
    # each member's val and test probabilities cached beside its checkpoint
    assert len(list(runs.rglob(".best.*.probs.safetensors"))) == 6

    # a second run reads the cache; forcing one size re-evaluates only the 48-px member;
    # the table goes to an offline W&B run
    again = tmp_path / "again"
    assert ensemble_main(["--weights", str(runs), "--dataset", str(tiny_cifar),
                          "--output-dir", str(again)]) == 0
    cached = json.loads((again / "ensemble_results.json").read_text())
    assert cached["seconds"]["members_from_cache"] == 3
    assert cached["votes"] == results["votes"]
    forced = tmp_path / "forced"
    assert ensemble_main(["--weights", str(runs), "--dataset", str(tiny_cifar),
                          "--output-dir", str(forced), "--img-size", "32", "--report-to", "wandb"]) == 0
    forced_results = json.loads((forced / "ensemble_results.json").read_text())
    assert forced_results["seconds"]["members_from_cache"] == 2
    assert {m["eval_img_size"] for m in forced_results["members"]} == {32}
    assert list((forced / "wandb").glob("offline-run-*/*.wandb"))


# ---- bad input: exit 2, one line, nothing written -------------------------------------------
def make_checkpoint(path: Path, arch: str = "test_resnet", class_names=CLASS_NAMES, **meta) -> Path:
    """An untrained but well-formed checkpoint (no training needed to test refusals)."""
    from cifar10_levels.checkpoint.io import CheckpointMeta, save_checkpoint
    from cifar10_levels.models.factory import create_model

    model = create_model("test_resnet", len(class_names))
    fields = dict(arch=arch, level="1", img_size=32, num_classes=len(class_names),
                  class_names=list(class_names), mean=[0.5] * 3, std=[0.25] * 3, seed=0, epoch=1,
                  val_acc=0.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, model.state_dict(), CheckpointMeta(**{**fields, **meta}))
    return path


@pytest.fixture
def good_runs(tmp_path) -> Path:
    root = tmp_path / "ckpts"
    make_checkpoint(root / "L1-a" / "best.safetensors")
    make_checkpoint(root / "L1-b" / "best.safetensors")
    return root


def refused(capsys, tmp_path: Path, *args: str) -> str:
    """Run ensemble.py in-process; assert exit 2, one line on stderr, and no file written."""
    before = files_under(tmp_path)
    out_dir = tmp_path / "out"
    code = ensemble_main([*map(str, args), "--output-dir", str(out_dir)])
    captured = capsys.readouterr()
    assert code == 2, captured
    assert "Traceback" not in captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert files_under(tmp_path) == before
    return lines[0]


def test_no_checkpoints_found(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    assert "no checkpoints found" in refused(capsys, tmp_path, "--weights", tmp_path / "empty")


def test_training_state_and_caches_are_not_members(capsys, tmp_path):
    # Accelerate's state/model.safetensors has no metadata; it must not be picked up
    make_checkpoint(tmp_path / "run" / "state" / "model.safetensors")
    assert "no checkpoints found" in refused(capsys, tmp_path, "--weights", tmp_path / "run")


def test_truncated_checkpoint(capsys, tmp_path, good_runs):
    broken = good_runs / "L1-b" / "best.safetensors"
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    message = refused(capsys, tmp_path, "--weights", good_runs)
    assert str(broken) in message and ("corrupt" in message or "truncated" in message)


def test_corrupt_bytes(capsys, tmp_path, good_runs):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00\x01garbage" * 100)
    message = refused(capsys, tmp_path, "--weights", good_runs, junk)
    assert "junk.safetensors" in message


@pytest.mark.parametrize("name", ["model.pt", "model.bin"])
def test_pickle_is_refused_never_loaded(capsys, tmp_path, good_runs, name):
    pickle = tmp_path / name
    pickle.write_bytes(b"not even a pickle")  # loading it would fail differently
    message = refused(capsys, tmp_path, "--weights", good_runs, pickle)
    assert "pickle files are refused" in message and name in message


def test_pickle_only_directory(capsys, tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "model.pt").write_bytes(b"x")
    message = refused(capsys, tmp_path, "--weights", tmp_path / "runs")
    assert "no checkpoints found" in message and "refused" in message


def test_class_names_disagree(capsys, tmp_path, good_runs):
    other = make_checkpoint(tmp_path / "other" / "best.safetensors",
                            class_names=[f"c{i}" for i in range(10)])
    assert "classes" in refused(capsys, tmp_path, "--weights", good_runs, other)


def test_class_count_disagrees(capsys, tmp_path, good_runs):
    other = make_checkpoint(tmp_path / "other" / "best.safetensors", class_names=CLASS_NAMES[:5])
    message = refused(capsys, tmp_path, "--weights", good_runs, other)
    assert "5 classes" in message


def test_checkpoint_without_our_metadata_names_missing_keys(capsys, tmp_path, good_runs):
    from safetensors.torch import save_file

    bare = tmp_path / "bare.safetensors"
    save_file({"w": __import__("torch").zeros(2)}, str(bare))
    message = refused(capsys, tmp_path, "--weights", good_runs, bare)
    assert "missing keys" in message and "arch" in message


def test_unknown_arch(capsys, tmp_path, good_runs):
    other = make_checkpoint(tmp_path / "other" / "best.safetensors", arch="no_such_net_v9")
    assert "no_such_net_v9" in refused(capsys, tmp_path, "--weights", good_runs, other)


def test_one_member_prints_its_accuracy_then_refuses(capsys, tmp_path, tiny_cifar):
    single = make_checkpoint(tmp_path / "ckpts" / "L1-a" / "best.safetensors")
    message = refused(capsys, tmp_path, "--weights", single.parent, "--dataset", tiny_cifar,
                      "--batch-size", "50")
    assert "needs two" in message


def test_one_member_output_names_accuracy(capsys, tmp_path, tiny_cifar):
    single = make_checkpoint(tmp_path / "ckpts" / "L1-a" / "best.safetensors")
    assert ensemble_main(["--weights", str(single), "--dataset", str(tiny_cifar)]) == 2
    assert "test accuracy" in capsys.readouterr().out


def test_bad_flags(capsys, tmp_path, good_runs):
    assert "--tta" in refused(capsys, tmp_path, "--weights", good_runs, "--tta", "99")
    assert "--img-size" in refused(capsys, tmp_path, "--weights", good_runs, "--img-size", "4")
    assert "no such file" in refused(capsys, tmp_path, "--weights", tmp_path / "missing")


def test_dataset_with_other_classes(capsys, tmp_path, tiny_cifar):
    names = [f"c{i}" for i in range(10)]
    for run in ("L1-a", "L1-b"):
        make_checkpoint(tmp_path / "ckpts" / run / "best.safetensors", class_names=names)
    message = refused(capsys, tmp_path, "--weights", tmp_path / "ckpts", "--dataset", tiny_cifar)
    assert "--dataset" in message and "classes" in message


def test_member_labels_grow_until_runs_with_the_same_file_names_differ():
    from pathlib import Path

    from cifar10_levels.ensemble.members import member_labels

    same_names = [Path("/x/runs/seed0/Lfast-net/best.safetensors"),
                  Path("/x/runs/seed1/Lfast-net/best.safetensors")]
    assert member_labels(same_names) == ["seed0/Lfast-net/best.safetensors",
                                         "seed1/Lfast-net/best.safetensors"]
    assert member_labels([Path("a/L1-r18/best.safetensors"), Path("a/L3-eff/best.safetensors")]) == \
        ["L1-r18/best.safetensors", "L3-eff/best.safetensors"]
