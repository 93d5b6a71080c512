"""Crash-safe file writing: write beside the target, then rename over it."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import UserError, WriteFailed, write_failed

UMASK = os.umask(0o022)
os.umask(UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path next to `path`; on success it replaces `path` in one rename. A write
    that fails (a full disk) leaves no temporary file and raises WriteFailed."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        yield tmp
        # mkstemp's (or a writer's own) 0600 would make results unreadable to others
        os.chmod(tmp, 0o666 & ~UMASK)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except WriteFailed:
        raise
    except OSError as err:
        raise write_failed(path, err) from None
    except Exception as err:  # safetensors' writer reports a full disk as its own error type
        if "no space left on device" in str(err).lower():
            raise write_failed(path, err) from None
        raise
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def remove_stale_temporaries(directory: str | os.PathLike) -> None:
    """Delete what a killed writer left behind: atomic_path's hidden .NAME.*.tmp files."""
    for path in Path(directory).glob(".*.tmp"):
        path.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def write_json(path: str | os.PathLike, data) -> None:
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def unwritable_dir(path: str | os.PathLike) -> tuple[Path, str] | None:
    """(the path, why) when `path` cannot be (or become) a writable directory; None when it can."""
    existing = Path(path)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return existing, "exists and is not a directory"
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".write-test-"):
            pass
    except OSError as err:
        return Path(path), f"not writable ({err.strerror})"
    return None


def check_writable_dir(path: str | os.PathLike, flag: str = "--output-dir") -> Path:
    """Fail at start, before anything is written: `path` must be (or become) a writable directory."""
    problem = unwritable_dir(path)
    if problem is not None:
        where, why = problem
        advice = "pass another path" if why.startswith("exists") else "pass a writable directory"
        raise UserError(f"{flag} {where}: {why}; {advice}")
    return Path(path)


def ensure_writable_dir(path: str | os.PathLike, flag: str = "--output-dir") -> Path:
    path = check_writable_dir(path, flag)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{flag} {path}: cannot create it ({err.strerror}); pass a writable directory"
                        ) from None
    return path


def check_writable_file(path: str | os.PathLike, flag: str) -> Path:
    """Fail at start, before any work: `path` must be a file we can (re)place in an existing
    directory."""
    path = Path(path)
    if path.exists() and not path.is_file():
        what = "a directory" if path.is_dir() else "not a regular file"
        raise UserError(f"{flag} {path}: {what}; pass a file name")
    if not path.parent.is_dir():
        what = "is not a directory" if path.parent.exists() else "does not exist"
        raise UserError(f"{flag} {path}: {path.parent} {what}; pass a path in an existing directory")
    try:
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".write-test-"):
            pass
    except OSError as err:
        raise UserError(f"{flag} {path}: directory {path.parent} is not writable ({err.strerror}); "
                        "pass another path") from None
    return path
