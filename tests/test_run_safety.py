"""Nothing lost: --overwrite deletes only what a run writes, one run per run directory at a time (an
OS lock, released when its process dies, however it dies), and --resume never rewrites a finished
run. Each refusal is one line, exit 2, every earlier file byte-identical."""
from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest

from cifar10_levels.errors import UserError

from helpers.commands import assert_refused, start_train, train
from helpers.runs import snapshot

TOY = ["--arch", "test_resnet", "--train-limit", "40", "--eval-limit", "20", "--epochs", "0", "1",
       "--lr", "1e-2", "1e-2"]
RUN = "L1-test_resnet-s42"


@pytest.fixture(scope="module")
def finished(tiny_cifar, tmp_path_factory) -> Path:
    """One finished tiny run with every tracker file W&B (offline) writes; cases work on copies."""
    out = tmp_path_factory.mktemp("finished")
    train(tiny_cifar, out, *TOY, "--report-to", "wandb")
    return out / RUN


def copy_run(finished: Path, tmp_path: Path) -> Path:
    run = tmp_path / RUN
    shutil.copytree(finished, run, symlinks=True)
    return run


def test_every_file_a_run_writes_counts_as_the_runs(finished):
    from cifar10_levels.checkpoint.run_dir import foreign_entries

    assert (finished / "wandb").is_dir() and (finished / "results.json").is_file()
    assert foreign_entries(finished) == []


def test_overwrite_refuses_a_directory_that_holds_no_run(tiny_cifar, tmp_path):
    photos = tmp_path / "photos" / "holiday"
    photos.mkdir(parents=True)
    (photos / "img1.txt").write_text("x")
    before = snapshot(tmp_path)
    result = train(tiny_cifar, tmp_path, *TOY, "--run-name", "photos", "--overwrite", check=False)
    assert_refused(result, "--overwrite", str(tmp_path / "photos"), "holiday", "nothing was deleted")
    assert snapshot(tmp_path) == before


def test_overwrite_refuses_a_run_directory_holding_anything_else(finished, tiny_cifar, tmp_path):
    run = copy_run(finished, tmp_path)
    (run / "notes.txt").write_text("mine")
    (run / "data").mkdir()
    (run / "data" / "labels.csv").write_text("1,2\n")
    (run / "linked").symlink_to(tmp_path)
    before = snapshot(run)
    result = train(tiny_cifar, tmp_path, *TOY, "--overwrite", check=False)
    assert_refused(result, "--overwrite", str(run), "data, linked, notes.txt")
    assert snapshot(run) == before


def test_overwrite_replaces_every_file_of_the_earlier_run(finished, tiny_cifar, tmp_path):
    run = copy_run(finished, tmp_path)
    (run / ".results.json.abc.tmp").write_text("left by a kill")
    (run / "cifar10-levels").mkdir()  # --report-to tensorboard's directory
    (run / "cifar10-levels" / "events.out.tfevents.1.host").write_bytes(b"\0")
    old_wandb = {p.name for p in (run / "wandb").iterdir()}
    train(tiny_cifar, tmp_path, *TOY, "--overwrite")
    assert not (run / "cifar10-levels").exists() and not (run / ".results.json.abc.tmp").exists()
    assert not (run / "wandb").exists() and not (run / "wandb_run_id").exists()  # --report-to none
    assert (run / "results.json").is_file() and old_wandb


def test_a_second_run_in_a_busy_run_directory_is_refused(tiny_cifar, tmp_path):
    """The first run is held (SIGSTOP) once it has printed its setup, which it does after taking the
    lock; the same command, and the same --run-name with another seed, are refused while it lives.
    SIGKILL frees the directory: the OS drops the lock with the process."""
    first = start_train(tiny_cifar, tmp_path, *TOY)
    try:
        line = first.stdout.readline()
        while line and not line.startswith("recipe:"):
            line = first.stdout.readline()
        assert line, "train.py ended before printing its recipe"
        first.send_signal(signal.SIGSTOP)
        run = tmp_path / RUN
        before = snapshot(run)
        assert_refused(train(tiny_cifar, tmp_path, *TOY, check=False), str(run), f"process {first.pid}")
        again = train(tiny_cifar, tmp_path, *TOY, "--seed", "7", "--run-name", RUN, "--overwrite",
                      check=False)
        assert_refused(again, str(run), f"process {first.pid}")
        assert snapshot(run) == before
    finally:
        first.kill()
        first.wait(timeout=60)
        first.stdout.close()
    train(tiny_cifar, tmp_path, *TOY, "--overwrite")
    assert (tmp_path / RUN / "results.json").is_file()
    assert not (tmp_path / RUN / ".run.lock").exists()  # the run removes its lock file at the end


def test_the_lock_refuses_a_second_holder_even_past_the_checks(tmp_path):
    """Two runs that passed their checks together: the second to lock is refused."""
    from cifar10_levels.checkpoint.run_lock import locked_run_dir

    run = tmp_path / "out" / RUN
    with locked_run_dir(run):
        with pytest.raises(UserError, match=f"in use by process \\d+ .*{RUN}/.run.lock"):
            with locked_run_dir(run):
                pass
    assert not (tmp_path / "out").exists()  # made only for the lock, and the run wrote nothing


@pytest.mark.parametrize("change", [["--eval-limit", "10"], ["--tta", "2"], []])
def test_resume_of_a_finished_run_changes_nothing(finished, tiny_cifar, tmp_path, change):
    """The same command says the run is finished; one that would evaluate otherwise is refused too."""
    run = copy_run(finished, tmp_path)
    before = snapshot(run)
    result = train(tiny_cifar, tmp_path, *TOY, *change, "--resume", check=False)
    if change:
        assert_refused(result, change[0], str(run), "config.yaml")
    else:
        assert_refused(result, "finished", str(run), "cifar10-evaluate --weights")
    assert snapshot(run) == before


def test_resume_auto_of_a_finished_run_ends_cleanly_and_changes_nothing(finished, tiny_cifar, tmp_path):
    """A Slurm job requeued after its run ended: exit 0, one line, nothing retrained or rewritten."""
    run = copy_run(finished, tmp_path)
    before = snapshot(run)
    result = train(tiny_cifar, tmp_path, *TOY, "--resume", "auto", check=False)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.strip().splitlines() == [
        f"--resume auto: the run in {run} is finished (results.json); nothing to do"]
    assert snapshot(run) == before
