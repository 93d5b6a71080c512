"""A checkpoint's metadata (what rebuilds the model from the file alone), read and validated
without building a model."""
from __future__ import annotations

import json
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
    ok = (isinstance(meta.arch, str) and isinstance(meta.img_size, int)
          and MIN_IMG_SIZE <= meta.img_size <= MAX_IMG_SIZE and isinstance(meta.num_classes, int)
          and 2 <= meta.num_classes <= MAX_CLASSES and isinstance(meta.class_names, list)
          and len(meta.class_names) == meta.num_classes
          and all(isinstance(n, str) for n in meta.class_names)
          and all(isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v)
                  for v in (meta.mean, meta.std)) and all(x > 0 for x in meta.std)
          and isinstance(meta.val_acc, (int, float)) and meta.weights in WEIGHTS)
    if not ok:
        raise UserError(f"{flag} {path}: metadata has wrong types or sizes (arch, img_size "
                        f"{MIN_IMG_SIZE}-{MAX_IMG_SIZE}, num_classes with as many class_names, "
                        "3 mean/std values, weights raw or ema)")
    return meta


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
