"""timm models: creation (pretrained from the Hub or a local safetensors file), freezing, size.

A --pretrained-file is checked before it reaches create_model (checkpoint.file_checks): this module
reads no checkpoint of ours."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from ..errors import UserError
from ..offline import go_offline, hub_reachable


def known_arch(arch: str) -> bool:
    """A timm (or our) model name; with a pretrained tag (`name.tag`) only a tag timm has."""
    import timm
    from timm.models import split_model_name_tag

    from . import speednet  # noqa: F401  registers our own models with timm
    _, tag = split_model_name_tag(arch)
    # is_model ignores the tag, and create_model then fails on an unknown one
    return timm.is_model(arch) and (not tag or arch in timm.list_pretrained(arch))


def check_arch(arch: str, flag: str, path: str | Path | None = None) -> None:
    """The one unknown-arch error, whether the arch came from a flag or from a file's metadata."""
    if not known_arch(arch):
        where = f"{flag} {path}: arch" if path is not None else flag
        raise UserError(f"{where} {arch!r} is unknown to timm and to this package; see "
                        "timm.list_models(), or upgrade timm")


def create_model(arch: str, num_classes: int, pretrained: bool = False,
                 pretrained_file: str | None = None) -> nn.Module:
    import timm

    check_arch(arch, "--arch")
    if pretrained_file:  # checked by the caller (checkpoint.file_checks.check_pretrained_file)
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


def size_problem(model: nn.Module, img_size: int) -> str | None:
    """A dry forward pass at `img_size`: why the model cannot take it, or None."""
    import torch

    try:
        with torch.inference_mode():
            model(torch.zeros(1, 3, img_size, img_size))
    except (RuntimeError, AssertionError) as err:  # timm's ViTs assert on the input size
        return (str(err) or type(err).__name__).splitlines()[0][:120]
    return None
