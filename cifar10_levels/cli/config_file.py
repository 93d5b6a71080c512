"""train.py's config files: each key is a flag's name (its argparse dest), its value is parsed by that
flag's own type and choices, so a file's bad value gets the one-line error the flag would."""
from __future__ import annotations

import argparse
import contextlib
import re
from pathlib import Path
from typing import Iterator

from ..errors import UserError

# Flags that say what this command does, never what the run is: a config file cannot set them
COMMAND_FLAGS = ("config", "print_config", "resume", "overwrite", "help")
# Flags a resume may change: how the run is watched and where it is, not how it trains
RESUME_MAY_CHANGE = frozenset({"dataset", "output_dir", "run_name", "checkpoint_every", "no_progress",
                               "report_to", "wandb_project", "wandb_entity", "log_checkpoint",
                               "push_to_hub", "hub_private"})
UNSET = object()


def settable_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """dest -> the flag's action, for every flag a config file may set."""
    return {a.dest: a for a in parser._actions if a.option_strings and a.dest not in COMMAND_FLAGS}


def read_config_file(path: str | Path, parser: argparse.ArgumentParser) -> dict:
    """The file's values by dest, each parsed and checked as the flag's command-line value is."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"--config {path}: no such file") from None
    except OSError as err:
        raise UserError(f"--config {path}: cannot read it ({err.strerror})") from None
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise UserError(f"--config {path}: not valid YAML{line} ({getattr(err, 'problem', err)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"--config {path}: expected 'key: value' lines (train.py's flags without "
                        "the dashes, as train.py --print-config writes them)")
    actions = settable_actions(parser)
    values = {}
    for key, value in data.items():
        dest = str(key).replace("-", "_")
        if dest in COMMAND_FLAGS:
            raise UserError(f"{path}: {key}: says what one command does, not what the run is; give "
                            f"--{dest.replace('_', '-')} on the command line instead")
        if dest not in actions:
            raise UserError(f"{path}: unknown key {key!r}; the keys are train.py's flags without the "
                            "dashes (train.py --print-config lists them)")
        try:
            values[dest] = flag_value(parser, actions[dest], value)
        except (argparse.ArgumentError, TypeError) as err:
            raise UserError(f"{path}: {key}: {getattr(err, 'message', err)}") from None
    return values


def flag_value(parser: argparse.ArgumentParser, action: argparse.Action, value: object) -> object:
    """`value` from YAML, parsed as if given after the action's flag."""
    if value is None:
        if action.default is not None:
            raise TypeError(f"needs a value (the flag's default is {action.default})")
        return None
    if action.nargs == 0:  # an on/off flag
        if not isinstance(value, bool):
            raise TypeError(f"{value!r} is not true or false")
        return value
    items = value if isinstance(value, list) else [value]
    if action.nargs is None and isinstance(value, list) or isinstance(value, dict) \
            or any(isinstance(v, (list, dict)) for v in items):
        raise TypeError(f"{value!r}: expected {'a list of values' if action.nargs else 'one value'}")
    # YAML 1.1 reads a bare no as false: mean the choice 'no'
    texts = ["no" if v is False and action.choices and "no" in action.choices else str(v) for v in items]
    parsed = parser._get_values(action, texts)
    return parsed


def given_on_command_line(parser: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """The dests of the flags `argv` sets (argparse fills in defaults only for names not already set)."""
    preset = argparse.Namespace(**{dest: UNSET for dest in settable_actions(parser)})
    parsed = parser.parse_args(argv, preset)
    return {dest for dest, value in vars(parsed).items() if value is not UNSET}


def parse_with_file(parser: argparse.ArgumentParser, from_file: dict, argv: list[str] | None
                    ) -> argparse.Namespace:
    """The command line over the file's values over the flags' defaults."""
    defaults = {a.dest: a.default for a in parser._actions}
    parser.set_defaults(**from_file)
    try:
        return parser.parse_args(argv)
    finally:
        parser.set_defaults(**{dest: defaults[dest] for dest in from_file})


@contextlib.contextmanager
def blamed_on(path: str | Path | None, keys: set[str]) -> Iterator[None]:
    """A check that names a flag the file set (`keys`) names the file and its key instead."""
    try:
        yield
    except UserError as err:
        if path is None or not keys:
            raise
        flags = "|".join(re.escape("--" + k.replace("_", "-")) for k in sorted(keys, key=len, reverse=True))
        message = re.sub(rf"(^|\n  )({flags})(?=[ :])",
                         lambda m: f"{m.group(1)}{path}: {m.group(2)[2:].replace('-', '_')}", str(err))
        raise UserError(message) from None


def resume_changes(saved: dict, wanted: dict, run_dir: Path) -> None:
    """A resume continues the run as configured: a flag that would change its training is refused."""
    for dest, value in wanted.items():
        if dest in RESUME_MAY_CHANGE or dest not in saved or saved[dest] == value:
            continue
        flag = "--" + dest.replace("_", "-")
        raise UserError(f"{flag}: the run in {run_dir} trains with {dest} {format_value(saved[dest])} "
                        f"(its config.yaml), not {format_value(value)}; resume it without {flag}, or "
                        "start a new run with another --run-name")


def format_value(value: object) -> str:
    if value is None:
        return "unset"
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)
