"""Argument-parsing helpers shared by every command line (train.py, ensemble.py, the report)."""
from __future__ import annotations

import argparse
import re

from ..errors import UserError


class Parser(argparse.ArgumentParser):
    """argparse, but bad flags are a one-line UserError (exit 2) like every other bad input."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # argparse's own matcher misses -1e-3, which then "expects an argument" instead of
        # reaching the flag's range check
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")

    def error(self, message: str):
        raise UserError(message)


def positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text} must be > 0")
        return value
    parse.__name__ = kind.__name__
    return parse


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an int") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be >= 0")
    return value


DURATION_UNITS = {"h": 3600, "m": 60, "s": 1}


def duration(text: str) -> float:
    """Seconds of a duration such as 90s, 10m, 2h or 1h30m (a bare number is seconds)."""
    match = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?",
                         text.strip().lower())
    if not text.strip() or match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration; write e.g. 90s, 10m, 2h or 1h30m")
    seconds = sum(float(v) * unit for v, unit in zip(match.groups(), DURATION_UNITS.values()) if v)
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{text} must be longer than 0s")
    return seconds
