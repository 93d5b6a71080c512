"""A checkpoint's metadata (what rebuilds the model from the file alone), read and validated
without building a model."""
from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import __version__
from ..errors import UserError
from ..recipes import MAX_IMG_SIZE, MIN_IMG_SIZE

FORMAT = "cifar10-levels/1"
BEST_NAME = "best.safetensors"      # each run's best epoch, what ensemble.py looks for
LAST_NAME = "last.safetensors"      # each run's latest epoch
MAX_HEADER_BYTES = 16 * 1024 * 1024   # real headers here are a few hundred KB
MAX_CLASSES = 1000
WEIGHTS = ("raw", "ema")


@dataclass
class CheckpointMeta:
    arch: str
    level: str
    img_size: int
    num_classes: int
    class_names: list[str]
    mean: list[float]
    std: list[float]
    seed: int
    epoch: int
    val_acc: float
    test_acc: float | None = None
    version: str = __version__
    recipe: dict = field(default_factory=dict)
    weights: str = "raw"          # raw: the trained weights; ema: their moving average (recipe's ema_decay)
    distilled_from: list[str] = field(default_factory=list)   # "arch sha256-prefix" of each teacher

    @property
    def tta_scheme(self) -> str:
        """The test-time views it was trained with (checkpoints from before the schemes: shift2)."""
        return self.recipe.get("tta_scheme", "shift2")

    def to_header(self) -> dict[str, str]:
        return {"format": FORMAT, **{k: json.dumps(v) for k, v in asdict(self).items()}}


REQUIRED = ("arch", "img_size", "num_classes", "class_names", "mean", "std")
OPTIONAL_DEFAULTS = {"level": "?", "seed": 0, "epoch": 0, "val_acc": 0.0}


def check_safetensors_file(path: str | Path, flag: str) -> None:
    """Cheap structural checks before a safetensors parser sees the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{flag} {path}: no such file")
    size = path.stat().st_size
    if size < 8:
        raise UserError(f"{flag} {path}: {size} bytes is too short to be a safetensors file "
                        "(empty or truncated)")
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
            raise UserError(f"{flag} {path}: declares a {header_len}-byte header in a {size}-byte "
                            "file; not a valid safetensors file (truncated or crafted)")
        head = f.read(min(header_len, 64))
    if not head.lstrip().startswith(b"{"):
        raise UserError(f"{flag} {path}: not a safetensors file (no JSON header)")


def parse_meta(raw: dict[str, str], path: Path, flag: str) -> CheckpointMeta:
    missing = [k for k in REQUIRED if k not in raw]
    if raw.get("format") != FORMAT or missing:
        what = f"missing keys {missing}" if missing else f"format {raw.get('format')!r}"
        raise UserError(f"{flag} {path}: not a cifar10-levels checkpoint ({what}); "
                        "train one with train.py")
    try:
        values = {k: json.loads(v) for k, v in raw.items() if k != "format"}
        known = {k: values[k] for k in CheckpointMeta.__dataclass_fields__ if k in values}
        meta = CheckpointMeta(**{**OPTIONAL_DEFAULTS, **known})
    except (ValueError, TypeError) as err:
        raise UserError(f"{flag} {path}: unreadable metadata ({err})") from None
    check_meta(meta, path, flag)
    return meta


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_fraction(value) -> bool:
    return is_number(value) and 0 <= value <= 1


def is_name(value, longest: int = 200) -> bool:
    """A short one-line string: what a file may put where we print or render text."""
    return isinstance(value, str) and 0 < len(value) <= longest and value.isprintable()


def is_phase(value) -> bool:
    return isinstance(value, dict) and is_name(value.get("name"), 40) and is_int(value.get("epochs")) \
        and is_number(value.get("lr")) and isinstance(value.get("train_backbone"), bool)


# each field a file may set: (what it must be, how to say so); recipe keys are the ones we read back
META_FIELDS = {
    "arch": (is_name, "a model name"),
    "level": (lambda v: isinstance(v, str) and re.fullmatch(r"[\w.?-]{1,20}", v) is not None,
              "a level name (letters, digits, _ . - ?)"),
    "img_size": (lambda v: is_int(v) and MIN_IMG_SIZE <= v <= MAX_IMG_SIZE,
                 f"an int from {MIN_IMG_SIZE} to {MAX_IMG_SIZE}"),
    "num_classes": (lambda v: is_int(v) and 2 <= v <= MAX_CLASSES, f"an int from 2 to {MAX_CLASSES}"),
    "class_names": (lambda v: isinstance(v, list) and all(is_name(n, 100) for n in v),
                    "a list of names"),
    "mean": (lambda v: isinstance(v, list) and len(v) == 3 and all(is_number(x) for x in v),
             "3 finite numbers"),
    "std": (lambda v: isinstance(v, list) and len(v) == 3 and all(is_number(x) and x > 0 for x in v),
            "3 finite numbers > 0"),
    "seed": (lambda v: is_int(v) and v >= 0, "an int >= 0"),
    "epoch": (lambda v: is_int(v) and v >= 0, "an int >= 0"),
    "val_acc": (is_fraction, "a number from 0 to 1"),
    "test_acc": (lambda v: v is None or is_fraction(v), "a number from 0 to 1, or null"),
    "version": (lambda v: is_name(v, 40), "a version"),
    "recipe": (lambda v: isinstance(v, dict), "an object"),
    "weights": (lambda v: v in WEIGHTS, f"one of {', '.join(WEIGHTS)}"),
    "distilled_from": (lambda v: isinstance(v, list) and len(v) <= 100 and all(is_name(t) for t in v),
                       "a list of teacher names"),
    "recipe.tta": (lambda v: is_int(v) and v >= 0, "an int >= 0"),
    "recipe.tta_scheme": (lambda v: is_name(v, 40), "a scheme name"),
    "recipe.title": (lambda v: isinstance(v, str) and len(v) <= 200 and v.isprintable(), "a title"),
    "recipe.pretrained": (lambda v: isinstance(v, bool), "true or false"),
    "recipe.ema_decay": (lambda v: v is None or is_fraction(v), "a number from 0 to 1, or null"),
    "recipe.phases": (lambda v: isinstance(v, list) and all(is_phase(x) for x in v),
                      "a list of phases (name, epochs, lr, train_backbone)"),
}


WRITTEN_BY_US = "use a file written by train.py or cifar10-export"


def field_problem(values: dict, fields: dict, required: tuple[str, ...] = ()) -> str | None:
    """What is wrong with the first field of `values` (a file's) that is not as `fields` say:
    {name: (test, what it must be)}, 'section.key' for a key inside the object `section`."""
    for name, (ok, expected) in fields.items():
        section, _, key = name.rpartition(".")
        source = values.get(section) if section else values
        if not isinstance(source, dict):
            continue
        if key not in source:
            if name in required:
                return f"{name} is missing"
            continue
        if not ok(source[key]):
            return f"{name} is {json.dumps(source[key], default=str)[:60]}, not {expected}"
    return None


def check_meta(meta: CheckpointMeta, path: Path, flag: str) -> None:
    """Every field of metadata read from a file, its type and range, before anything uses it."""
    problem = field_problem(asdict(meta), META_FIELDS)
    if problem is None and len(meta.class_names) != meta.num_classes:
        problem = f"{len(meta.class_names)} class_names for {meta.num_classes} classes"
    if problem is not None:
        raise UserError(f"{flag} {path}: metadata {problem} (damaged or crafted); {WRITTEN_BY_US}")


def read_header(path: str | Path, flag: str = "checkpoint") -> dict[str, str]:
    """The metadata of a safetensors file whose whole header (every tensor's offsets) is valid."""
    from safetensors import safe_open

    path = Path(path)
    check_safetensors_file(path, flag)
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception as err:
        raise UserError(f"{flag} {path}: corrupt safetensors file "
                        f"({str(err).splitlines()[0][:160]})") from None


def read_meta(path: str | Path, flag: str = "checkpoint") -> CheckpointMeta:
    return parse_meta(read_header(path, flag), Path(path), flag)


def check_fits(meta: CheckpointMeta, path: str | Path, flag: str, arch: str | None = None,
               num_classes: int | None = None) -> None:
    """The arch and class count the caller needs (None: any); models.check_arch says if it is known."""
    if arch is not None and meta.arch != arch:
        raise UserError(f"{flag} {path}: a checkpoint of {meta.arch}, not of --arch {arch}; "
                        f"pass --arch {meta.arch} or another file")
    if num_classes is not None and meta.num_classes != num_classes:
        raise UserError(f"{flag} {path}: a checkpoint with {meta.num_classes} classes; "
                        f"this needs {num_classes}")
