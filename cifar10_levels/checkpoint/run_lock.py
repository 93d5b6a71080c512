"""One run per run directory at a time: an OS lock (flock) on a file in it, taken before the run
writes anything, held by the main process of each machine for the whole run and released by the OS
when that process ends, however it ends."""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

from ..errors import UserError

LOCK_NAME = ".run.lock"


def lock_path(directory: Path) -> Path:
    """Machine k > 0 of a launch locks its own file: on a shared disk the machines share the
    directory, while a second launch's machine k meets the first one's lock."""
    machine = os.environ.get("GROUP_RANK", "0")  # set by accelerate launch / torchrun
    return directory / (LOCK_NAME if machine == "0" else f"{LOCK_NAME}.{machine}")


def holds_lock() -> bool:
    """The main process of each machine holds the lock; the others run under it."""
    return os.environ.get("LOCAL_RANK", "0") == "0"


def busy_message(directory: Path, path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        pid = ""
    holder = f"process {pid}" if pid.isdigit() else "another process"
    return (f"run directory {directory} is in use by {holder} (it holds {path}); wait for that run "
            "to end, or pass another --run-name or --output-dir")


def busy_problem(directory: Path) -> str | None:
    """Why `directory` cannot be used now (another run holds its lock), or None; takes nothing. Asked
    by the lock's holders only: the other processes of a launch run under their machine's main."""
    if not holds_lock():
        return None
    path = lock_path(directory)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # no lock file: nobody holds it
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return busy_message(directory, path)
    finally:
        os.close(fd)  # and with it the shared lock this probe took
    return None


def acquire(path: Path) -> int:
    """The locked file's descriptor. A lock file removed by its last holder between our open and our
    lock is opened again: a lock on a file no longer in the directory would lock nobody out."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(busy_message(path.parent, path)) from None
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        opened = os.fstat(fd)
        if current is not None and (current.st_dev, current.st_ino) == (opened.st_dev, opened.st_ino):
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)


@contextlib.contextmanager
def locked_run_dir(directory: Path) -> Iterator[None]:
    """Hold `directory`'s lock while the block runs (the main process of each machine). The lock file
    goes at the end; directories made only to hold it go too when the run wrote nothing else."""
    if not holds_lock():
        yield
        return
    made = [d for d in (directory, *directory.parents) if not d.exists()]
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--output-dir: cannot create {directory} ({err.strerror}); pass a writable "
                        "directory") from None
    path, fd = lock_path(directory), None
    try:
        fd = acquire(path)
        yield
    finally:
        if fd is not None:
            path.unlink(missing_ok=True)  # while still held: the next run locks a fresh file
            os.close(fd)
        for made_dir in made:  # deepest first; stops at the first one holding something
            try:
                made_dir.rmdir()
            except OSError:
                break
