"""The fault corpus's tools: files made bad on purpose (no committed blobs), a command's main(argv)
run in this process, and the checks every case makes (exit 2, one line, nothing changed)."""
from __future__ import annotations

import hashlib
import io
import json
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from helpers.commands import reset_accelerate
from helpers.data import CLASS_NAMES


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str


def call(main: Callable[[list[str]], int], *argv) -> Outcome:
    """A command's main(argv) in this process, as its console script runs it."""
    stdout, stderr = io.StringIO(), io.StringIO()
    reset_accelerate()
    with redirect_stdout(stdout), redirect_stderr(stderr):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        finally:
            reset_accelerate()
    return Outcome(code, stdout.getvalue(), stderr.getvalue())


def sha256_tree(*roots: Path) -> dict[str, str]:
    """Every file under `roots` with its sha256 (and every directory): equal before and after a
    case means nothing was written, changed or left behind."""
    found = {}
    for root in roots:
        for path in sorted([root, *root.rglob("*")] if root.is_dir() else [root]):
            if path.is_file() and not path.is_symlink():
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
            elif path.exists():
                found[str(path)] = "dir" if path.is_dir() else "other"
    return found


def assert_refused(outcome: Outcome, names: str) -> str:
    """Exit 2, one `error:` line that names `names`, no traceback; returns the line."""
    assert "Traceback" not in outcome.stderr, outcome.stderr[-3000:]
    errors = [line for line in outcome.stderr.splitlines() if line.startswith("error: ")]
    assert outcome.code == 2 and len(errors) == 1, (outcome.code, outcome.stderr[-3000:])
    assert names in errors[0], errors[0]
    return errors[0]


def meta_header(**changes) -> dict[str, str]:
    """A test_resnet checkpoint's safetensors metadata, each value JSON as train.py writes it;
    `changes` replace values (already JSON text: a crafted file need not hold what we write)."""
    from cifar10_levels.checkpoint.meta import CheckpointMeta

    meta = CheckpointMeta(arch="test_resnet", level="1", img_size=32, num_classes=10,
                          class_names=CLASS_NAMES, mean=[0.5] * 3, std=[0.25] * 3, seed=0, epoch=1,
                          val_acc=0.5, test_acc=0.5,
                          recipe={"title": "tiny", "phases": [], "pretrained": False, "tta": 2})
    return {**meta.to_header(), **changes}


def write_checkpoint(path: Path, **changes) -> Path:
    """A test_resnet checkpoint (10 classes) whose metadata `changes` (JSON text) set."""
    from safetensors.torch import save_file

    from cifar10_levels.models.factory import create_model

    path.parent.mkdir(parents=True, exist_ok=True)
    state = create_model("test_resnet", 10).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=meta_header(**changes))
    return path


def edit_json(path: Path, edit: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
