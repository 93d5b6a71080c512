"""timm models: creation (pretrained from the Hub or a local safetensors file) and freezing."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..checkpoint.meta import FORMAT, check_fits, parse_meta, read_header
from ..errors import UserError
from ..offline import go_offline, hub_reachable, unavailable_reason

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")


def refuse_pickle(path: str | Path, flag: str) -> None:
    if Path(path).suffix.lower() in PICKLE_SUFFIXES:
        raise UserError(
            f"{flag} {path}: pickle files are refused (loading one can run code); convert it once, "
            "where you trust it, with: python -c \"import torch,safetensors.torch as s; "
            f"s.save_file(torch.load('{path}', weights_only=True), 'model.safetensors')\"")


def known_arch(arch: str) -> bool:
    import timm

    from . import speednet  # noqa: F401  registers our own models with timm
    return timm.is_model(arch)


def check_arch(arch: str, flag: str, path: str | Path | None = None) -> None:
    """The one unknown-arch error, whether the arch came from a flag or from a file's metadata."""
    if not known_arch(arch):
        where = f"{flag} {path}: arch" if path is not None else flag
        raise UserError(f"{where} {arch!r} is unknown to timm and to this package; see "
                        "timm.list_models(), or upgrade timm")


def check_pretrained_file(path: str | Path, arch: str, num_classes: int,
                          flag: str = "--pretrained-file") -> None:
    """Plain timm weights pass as they are; one of our checkpoints must also fit the run."""
    header = read_header(path, flag)
    if header.get("format") == FORMAT:
        meta = parse_meta(header, Path(path), flag)
        check_arch(meta.arch, flag, path)
        check_fits(meta, path, flag, arch, num_classes)


def create_model(arch: str, num_classes: int, pretrained: bool = False,
                 pretrained_file: str | None = None) -> nn.Module:
    import timm

    check_arch(arch, "--arch")
    if pretrained_file:
        refuse_pickle(pretrained_file, "--pretrained-file")
        check_pretrained_file(pretrained_file, arch, num_classes)
        try:
            return timm.create_model(arch, pretrained=True, num_classes=num_classes,
                                     pretrained_cfg_overlay=dict(file=str(pretrained_file)))
        except (RuntimeError, KeyError) as err:
            raise UserError(f"--pretrained-file {pretrained_file}: weights do not fit {arch} "
                            f"({str(err).splitlines()[0][:160]})") from None
    if not pretrained:
        return timm.create_model(arch, pretrained=False, num_classes=num_classes)
    if not hub_reachable():
        go_offline()  # cached weights still load; otherwise fail in seconds
    try:
        return timm.create_model(arch, pretrained=True, num_classes=num_classes)
    except Exception as err:
        raise UserError(f"cannot get pretrained weights for {arch} ({type(err).__name__}); pass "
                        "--no-pretrained, or --pretrained-file FILE.safetensors with local weights"
                        ) from None


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


def classifier_parameters(model: nn.Module) -> list[nn.Parameter]:
    head = model.get_classifier()
    return list(head.parameters())


def set_backbone_trainable(model: nn.Module, trainable: bool) -> None:
    """Phase 1 freezes everything but timm's classifier; phase 2 trains all."""
    model.requires_grad_(trainable)
    for p in classifier_parameters(model):
        p.requires_grad_(True)


def set_train_mode(model: nn.Module, backbone_trainable: bool) -> None:
    """A frozen backbone stays in eval mode so BatchNorm running statistics do not move."""
    if backbone_trainable:
        model.train()
    else:
        from accelerate.utils import extract_model_from_parallel
        model.eval()
        extract_model_from_parallel(model).get_classifier().train()  # DDP hides timm's methods


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


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
