"""Weights between a (wrapped) model and a checkpoint file: keys without the wrappers' prefixes, and
full weights loaded into a plain, compiled, DDP- or FSDP-wrapped model."""
from __future__ import annotations

import torch
from torch import nn


def load_full_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Clean (unprefixed) full weights into the model, whether plain, compiled, DDP- or FSDP-wrapped."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=True))


def clean_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    clean = {}
    for key, value in state.items():
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix):]
        clean[key.replace("._orig_mod.", ".")] = value.detach().contiguous()
    return clean
