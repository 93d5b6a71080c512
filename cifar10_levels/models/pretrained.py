"""Whether timm can get an arch's pretrained weights now: from a reachable Hub or its local cache."""
from __future__ import annotations

from pathlib import Path

import torch

from ..offline import unavailable_reason


def pretrained_weights_problem(arch: str, hub_up: bool) -> str | None:
    """Why timm could not get `arch`'s pretrained weights now (no Hub, not cached); None if it can."""
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg
    from timm.models._hub import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    cfg = get_pretrained_cfg(arch)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        return f"--arch {arch}: timm has no pretrained weights for it; pass --no-pretrained"
    if hub_up:
        return None
    names = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else (HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME)
    if cfg.hf_hub_id and any(isinstance(try_to_load_from_cache(cfg.hf_hub_id, name), str)
                             for name in names):
        return None
    if cfg.url and (Path(torch.hub.get_dir()) / "checkpoints" / Path(cfg.url).name).exists():
        return None
    if cfg.hf_hub_id:
        fetch = f"hf download {cfg.hf_hub_id} {names[0]} --local-dir DIR"
        local = f"DIR/{names[0]}"
    else:
        fetch, local = f"download {cfg.url} to DIR", f"DIR/{Path(cfg.url).name}"
    return (f"--pretrained-file: the pretrained weights for {arch} are not cached and "
            f"{unavailable_reason()}; "
            f"fetch them once where the Hub is reachable ({fetch}), then pass --pretrained-file "
            f"{local}, or train from scratch with --no-pretrained")
