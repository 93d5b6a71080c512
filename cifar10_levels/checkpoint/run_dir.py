"""Where a run lives (OUTPUT/RUN_NAME) and the rule that no run is ever replaced silently."""
from __future__ import annotations

import shutil
from pathlib import Path

from ..recipes import Recipe
from .meta import BEST_NAME, LAST_NAME
from .run_lock import LOCK_NAME

STATE_DIR = "state"     # Accelerate's save_state + train_state.json, for --resume
RESULTS_NAME = "results.json"   # written last: the run is finished
# Any of these in a directory means a run (finished or not) lives there.
RUN_FILES = (BEST_NAME, LAST_NAME, RESULTS_NAME, "history.jsonl",
             STATE_DIR, STATE_DIR + ".old", STATE_DIR + ".tmp")
# Everything else a run writes there (plots, trackers, hub_export of --push-to-hub, the run's config):
# --overwrite deletes these, the lock aside, and refuses a directory that holds anything more.
RUN_OUTPUTS = (*RUN_FILES, "config.yaml", "curves.png", "confusion.png", "per_class.png",
               "reliability.png", "wandb", "wandb_run_id", "hub_export")
TENSORBOARD_EVENTS = "events.out.tfevents."   # --report-to tensorboard: DIR/<project>/events...


def run_name(recipe: Recipe, explicit: str | None = None) -> str:
    """The run's name: its directory under --output-dir and its W&B name (--run-name overrides)."""
    return explicit or f"L{recipe.level}-{recipe.arch}-s{recipe.seed}"


def check_run_name(name: str) -> str | None:
    """None when `name` can be a directory name; otherwise why not."""
    if not name.strip() or name in (".", "..") or "/" in name or "\\" in name:
        return "must be a plain directory name (no '/', not '.' or '..')"
    return None


def existing_run_files(directory: Path) -> list[str]:
    return [name for name in RUN_FILES if (directory / name).exists()]


def find_state_dir(run_dir: Path) -> Path | None:
    """Where --resume reads: state/, or state.old/ when a kill came between the two renames."""
    for candidate in (run_dir / STATE_DIR, run_dir / (STATE_DIR + ".old")):
        if (candidate / "train_state.json").exists():
            return candidate
    return None


def has_saved_state(directory: Path) -> bool:
    return find_state_dir(directory) is not None


def resolve_resume(resume: bool | str, directory: Path) -> bool:
    """Whether the run continues a saved one: --resume always; --resume auto when `directory` holds
    saved state (else it starts, under the never-replace rule of a plain start)."""
    return has_saved_state(directory) if resume == "auto" else bool(resume)


def replace_dir(new: Path, target: Path) -> None:
    """Swap a finished directory into place; a kill leaves `target` or `target.old` intact."""
    old = target.with_name(target.name + ".old")
    if target.exists():
        if old.exists():  # stale: only deleted while `target` is a complete copy
            shutil.rmtree(old)
        target.rename(old)
    new.rename(target)
    if old.exists():
        shutil.rmtree(old)


def nothing_to_resume(directory: Path, on_another_machine: bool = False) -> str:
    where = " on another machine" if on_another_machine else ""
    return f"--resume: nothing to resume in {directory} (no saved state{where}); start without --resume"


def run_dir_problem(directory: Path, resume: bool, overwrite: bool, resume_auto: bool = False
                    ) -> str | None:
    """The one-line reason this run may not use `directory`, or None when it may. `resume_auto`:
    --resume auto, which found no saved state there (else `resume`)."""
    found = existing_run_files(directory) if directory.is_dir() else []
    if resume:
        return None if has_saved_state(directory) else nothing_to_resume(directory)
    if found and resume_auto:
        return (f"--resume auto: run directory {directory} holds a run ({', '.join(found)}) but no "
                "saved state to continue it from; replace it with --overwrite instead of --resume "
                "auto, or start a new run with another --seed, --run-name or --output-dir")
    if overwrite and (foreign := foreign_entries(directory)):
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        return (f"--overwrite: run directory {directory} holds what no run writes ({shown}); nothing "
                "was deleted; move those away, or pass another --run-name or --output-dir")
    if found and not overwrite:
        return (f"run directory {directory} already holds a run ({', '.join(found)}); continue it "
                "with --resume, replace it with --overwrite, or keep it and start a new run with "
                "another --seed, --run-name or --output-dir")
    return None


def is_run_output(path: Path) -> bool:
    """Whether a run of ours writes `path` (an entry of a run directory); links never are."""
    name = path.name
    if path.is_symlink():
        return False
    if name in RUN_OUTPUTS or name.startswith(LOCK_NAME) or (name.startswith(".") and name.endswith(".tmp")):
        return True
    if not path.is_dir():
        return False
    files = [f for f in path.rglob("*") if not f.is_dir()]
    return bool(files) and all(f.name.startswith(TENSORBOARD_EVENTS) and not f.is_symlink() for f in files)


def foreign_entries(directory: Path) -> list[str]:
    """What in `directory` no run of ours wrote."""
    if not directory.is_dir() or directory.is_symlink():
        return [] if not directory.exists() else [directory.name]
    return sorted(p.name for p in directory.iterdir() if not is_run_output(p))


def clear_run_dir(directory: Path) -> None:
    """--overwrite: the earlier run goes only now, once the new one has passed every check; only what
    a run writes, never the lock this run holds."""
    if not directory.is_dir():
        return
    for path in directory.iterdir():
        if not is_run_output(path) or path.name.startswith(LOCK_NAME):
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
