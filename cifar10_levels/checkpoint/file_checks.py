"""Weight files a user passes, checked before anything loads them: pickles refused (loading one can
run code), and a --pretrained-file that is one of our checkpoints must fit the run."""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .meta import FORMAT, check_fits, parse_meta, read_header

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")


def refuse_pickle(path: str | Path, flag: str) -> None:
    if Path(path).suffix.lower() in PICKLE_SUFFIXES:
        raise UserError(
            f"{flag} {path}: pickle files are refused (loading one can run code); convert it once, "
            "where you trust it, with: python -c \"import torch,safetensors.torch as s; "
            f"s.save_file(torch.load('{path}', weights_only=True), 'model.safetensors')\"")


def check_pretrained_file(path: str | Path, arch: str, num_classes: int,
                          flag: str = "--pretrained-file") -> None:
    """Before timm loads a --pretrained-file: no pickle; plain timm weights pass as they are, one of
    our checkpoints must also fit the run."""
    from ..models.factory import check_arch  # torch and timm: refuse_pickle alone stays light

    refuse_pickle(path, flag)
    header = read_header(path, flag)
    if header.get("format") == FORMAT:
        meta = parse_meta(header, Path(path), flag)
        check_arch(meta.arch, flag, path)
        check_fits(meta, path, flag, arch, num_classes)
