"""What a user passes as --weights: a checkpoint file, a run directory, or a Hub export directory."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError
from .meta import BEST_NAME

if TYPE_CHECKING:  # torch and timm load after argument parsing, so --help stays instant
    from torch import nn

    from .meta import CheckpointMeta

EXPORT_WEIGHTS = "model.safetensors"     # timm's Hub layout: config.json beside it
EXPORT_CONFIG = "config.json"
META_KEY = "cifar10_levels"              # our checkpoint metadata, kept inside config.json


def is_export_dir(path: Path) -> bool:
    return path.is_dir() and (path / EXPORT_CONFIG).is_file()


def resolve_weights(text: str | Path, flag: str = "--weights") -> Path:
    """A checkpoint file, a Hub export directory, or a run directory (its best checkpoint)."""
    from .file_checks import refuse_pickle

    path = Path(text)
    if path.is_file():
        refuse_pickle(path, flag)
        return path
    if is_export_dir(path):
        return path
    if (path / BEST_NAME).is_file():
        return path / BEST_NAME
    if path.is_dir():
        raise UserError(f"{flag} {path}: neither a run directory (no {BEST_NAME}) nor a Hub export "
                        f"(no {EXPORT_CONFIG}); pass a .safetensors checkpoint, a run directory or "
                        "a directory written by cifar10-export")
    raise UserError(f"{flag} {path}: no such file or directory")


def read_export_config(directory: Path, flag: str = "--weights") -> dict:
    try:
        config = json.loads((directory / EXPORT_CONFIG).read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{flag} {directory / EXPORT_CONFIG}: unreadable ({err})") from None
    if not isinstance(config, dict) or not isinstance(config.get("pretrained_cfg"), dict) \
            or not isinstance(config.get("architecture"), str):
        raise UserError(f"{flag} {directory / EXPORT_CONFIG}: not a timm config (needs "
                        "architecture and pretrained_cfg); export one with cifar10-export")
    return config


# what timm passes to the model's constructor from config.json: cifar10-export writes only these
EXPORT_MODEL_ARGS = ("num_classes", "in_chans", "global_pool")


def export_meta(directory: Path, flag: str = "--weights") -> CheckpointMeta:
    """Our metadata from an export's config.json, every field checked before anything uses it; what
    timm uses (size, mean, std, classes) wins."""
    from .meta import MAX_CLASSES, CheckpointMeta, check_meta, is_int

    where = f"{flag} {directory / EXPORT_CONFIG}"
    config = read_export_config(directory, flag)
    cfg = config["pretrained_cfg"]
    saved = config.get(META_KEY) if isinstance(config.get(META_KEY), dict) else {}
    num_classes = config.get("num_classes", cfg.get("num_classes"))
    input_size = cfg.get("input_size")
    if not (isinstance(input_size, list) and len(input_size) == 3 and all(map(is_int, input_size))
            and input_size[0] == 3 and input_size[1] == input_size[2]):
        raise UserError(f"{where}: pretrained_cfg.input_size is {json.dumps(input_size)[:60]}, not "
                        "[3, SIZE, SIZE]; export it again with cifar10-export")
    names = config.get("label_names") or saved.get("class_names")
    if names is None and is_int(num_classes) and 2 <= num_classes <= MAX_CLASSES:
        names = [str(i) for i in range(num_classes)]
    known = {k: v for k, v in saved.items() if k in CheckpointMeta.__dataclass_fields__}
    meta = CheckpointMeta(**{"level": "?", "seed": 0, "epoch": 0, "val_acc": 0.0, **known,
                             "arch": config["architecture"], "img_size": input_size[-1],
                             "num_classes": num_classes, "class_names": names,
                             "mean": cfg.get("mean"), "std": cfg.get("std")})
    check_meta(meta, directory / EXPORT_CONFIG, flag)
    model_args = config.get("model_args", {})
    if not isinstance(model_args, dict) or set(model_args) - set(EXPORT_MODEL_ARGS) \
            or model_args.get("num_classes", num_classes) != num_classes \
            or cfg.get("num_classes", num_classes) != num_classes or model_args.get("in_chans", 3) != 3:
        raise UserError(f"{where}: model_args {json.dumps(model_args)[:80]} are not what "
                        f"cifar10-export writes (only {', '.join(EXPORT_MODEL_ARGS)}, {num_classes} "
                        "classes, 3 channels); export it again with cifar10-export")
    return meta


def read_weights_meta(path: Path, flag: str = "--weights") -> CheckpointMeta:
    """The metadata alone, checked, before any model is built."""
    from .meta import read_meta
    from ..models.factory import check_arch

    meta = export_meta(path, flag) if path.is_dir() else read_meta(path, flag)
    check_arch(meta.arch, flag, path / EXPORT_CONFIG if path.is_dir() else path)
    return meta


def load_export(directory: Path, flag: str = "--weights") -> tuple[nn.Module, CheckpointMeta]:
    """timm's own loader, as a user of the export would call it; only safetensors weights."""
    import timm

    from ..models import speednet  # noqa: F401  registers cifar_speednet with timm
    from .meta import check_safetensors_file

    meta = read_weights_meta(directory, flag)
    check_safetensors_file(directory / EXPORT_WEIGHTS, flag)  # timm would fall back to pickles
    try:
        model = timm.create_model(f"local-dir:{directory}", pretrained=True)
    except (RuntimeError, KeyError, ValueError) as err:
        raise UserError(f"{flag} {directory}: timm cannot load this export "
                        f"({str(err).splitlines()[0][:160]})") from None
    return model.eval(), meta


def load_weights(path: Path, flag: str = "--weights") -> tuple[nn.Module, CheckpointMeta]:
    """(model in eval mode, metadata) from a path given by resolve_weights."""
    from .io import load_checkpoint

    return load_export(path, flag) if path.is_dir() else load_checkpoint(path, flag)
