"""One kind of error for bad user input: printed as one line, exit code 2, no traceback."""
from __future__ import annotations

import functools
import os
import sys
from typing import Callable


class UserError(Exception):
    """Bad input from the user: the message names the file or flag and what to do."""


def exits_cleanly_on_user_error(main: Callable[..., int | None]) -> Callable[..., int]:
    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs) or 0
        except UserError as err:
            # every process of a launch meets the same bad input: one line per machine, not per process
            if os.environ.get("LOCAL_RANK", "0") == "0":
                print(f"error: {err}", file=sys.stderr)
            return 2
    return wrapper
