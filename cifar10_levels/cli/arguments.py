"""Argument-parsing helpers shared by every command line (train.py, ensemble.py, the report)."""
from __future__ import annotations

import argparse
import math
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


def number(kind, text: str):
    """`text` as an int or a finite float: inf and nan are no amount of anything."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a{'n' if kind is int else ''} "
                                         f"{kind.__name__}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value


def ranged(kind, low: float | None = None, high: float | None = None, low_open: bool = False):
    """An argparse type: a finite `kind` from `low` (excluded where `low_open`) to `high`."""
    bounds = [f"{'>' if low_open else '>='} {low}"] if low is not None else []
    bounds += [f"<= {high}"] if high is not None else []

    def parse(text: str):
        value = number(kind, text)
        if (low is not None and (value <= low if low_open else value < low)) or \
                (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text} must be {' and '.join(bounds)}")
        return value
    parse.__name__ = kind.__name__
    return parse


def positive(kind):
    return ranged(kind, 0, low_open=True)


non_negative_int = ranged(int, 0)
finite_float = ranged(float)
seed = ranged(int, 0, 2 ** 32 - 1)   # numpy's generators take no larger seed


DURATION_UNITS = {"h": 3600, "m": 60, "s": 1}
MAX_DURATION_SECONDS = 30 * 24 * 3600   # a month: longer is a typo, not a plan


def duration(text: str) -> float:
    """Seconds of a duration such as 90s, 10m, 2h or 1h30m (a bare number is seconds)."""
    match = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?",
                         text.strip().lower())
    if not text.strip() or match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration; write e.g. 90s, 10m, 2h or 1h30m")
    seconds = sum(float(v) * unit for v, unit in zip(match.groups(), DURATION_UNITS.values()) if v)
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{text} must be longer than 0s")
    if not seconds <= MAX_DURATION_SECONDS:
        raise argparse.ArgumentTypeError(f"{text} is longer than 30 days; give at most 720h")
    return seconds
