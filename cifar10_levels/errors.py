"""One kind of error for bad user input: printed as one line, exit code 2, no traceback."""
from __future__ import annotations

import errno
import functools
import os
import sys
from typing import Callable


class UserError(Exception):
    """Bad input from the user: the message names the file or flag and what to do."""


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class WriteFailed(UserError, OSError):
    """A file we could not write: one line for the user, and still the OSError that callers
    writing only a cache catch."""


def write_failed(path: str | os.PathLike | None, err: BaseException) -> WriteFailed:
    full = getattr(err, "errno", None) in DISK_FULL or "no space left on device" in str(err).lower()
    reason = "no space left on device" if full else (getattr(err, "strerror", None) or
                                                     str(err).splitlines()[0][:120])
    advice = "free some space, then run it again" if full else "pass a writable path"
    return WriteFailed(f"{path or 'a file'}: cannot write it ({reason}); {advice}")


def exits_cleanly_on_user_error(main: Callable[..., int | None]) -> Callable[..., int]:
    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs) or 0
        except UserError as err:
            message = str(err)
        except OSError as err:
            if err.errno not in DISK_FULL:
                raise
            message = str(write_failed(err.filename, err))  # under a library's writer (a plot, W&B)
        # every process of a launch meets the same bad input: one line per machine, not per process
        if os.environ.get("LOCAL_RANK", "0") == "0":
            print(f"error: {message}", file=sys.stderr)
        return 2
    return wrapper
