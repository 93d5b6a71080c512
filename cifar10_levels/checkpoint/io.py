"""Checkpoints: safetensors weights plus the metadata (meta.CheckpointMeta) that rebuilds the model
from the file alone."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .meta import CheckpointMeta, check_fits, read_meta
from ..errors import UserError
from ..files import atomic_path
from ..models.factory import check_arch, create_model


def save_checkpoint(path: str | Path, state_dict: dict[str, torch.Tensor],
                    meta: CheckpointMeta) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, tmp,
                  metadata=meta.to_header())


def load_checkpoint(path: str | Path, flag: str = "checkpoint", num_classes: int | None = None
                    ) -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild the model from the file alone: metadata validated before anything is built."""
    path = Path(path)
    meta = read_meta(path, flag)
    check_arch(meta.arch, flag, path)
    check_fits(meta, path, flag, num_classes=num_classes)
    try:
        state = load_file(str(path))
    except Exception as err:
        raise UserError(f"{flag} {path}: corrupt safetensors file "
                        f"({str(err).splitlines()[0][:160]})") from None
    model = create_model(meta.arch, num_classes=meta.num_classes)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise UserError(f"{flag} {path}: weights do not match {meta.arch} with "
                        f"{meta.num_classes} classes ({str(err).splitlines()[0][:160]})") from None
    return model.eval(), meta
