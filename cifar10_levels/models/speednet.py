"""cifar_speednet: a small CIFAR-native network for the fast recipe, registered with timm.

Ideas from the CIFAR-10 speed records (airbench, arXiv 2404.00498), written anew: a frozen 2x2
first layer that whitens image patches, three VGG-like conv groups whose convs start as identities,
and BatchNorm with scales fixed at 1. Its optimizer (Muon for the conv filters, Nesterov SGD for the
rest) is optim/muon.py.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models import (build_model_with_cfg, generate_default_cfgs, register_model,
                         resolve_pretrained_cfg)
from torch import nn

from ..errors import UserError
from ..recipes import CIFAR10_MEAN, CIFAR10_STD

WIDTHS = (64, 256, 256)
VARIANTS = {"cifar_speednet": WIDTHS, "cifar_speednet_m": (64, 192, 192), "cifar_speednet_s": (48, 160, 160)}
WHITEN_KERNEL = 2
WHITEN_EPS = 5e-4
WHITEN_PATCH_IMAGES = 5000     # images whose patches estimate the covariance (deterministic: the first N)


class ShiftOnlyBatchNorm(nn.BatchNorm2d):
    """BatchNorm with its scale fixed at 1 (no weight to unfreeze by mistake): only the shift learns."""

    def __init__(self, num_features: int, momentum: float = 0.4, eps: float = 1e-12):
        super().__init__(num_features, eps=eps, momentum=momentum, affine=False)
        self.bias = nn.Parameter(torch.zeros(num_features))


class IdentityConv(nn.Conv2d):
    """3x3 conv, no bias, whose first filters start as the identity (dirac) on the input channels."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, kernel_size=3, padding="same", bias=False)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        with torch.no_grad():
            nn.init.dirac_(self.weight[: min(self.in_channels, self.out_channels)])


class ConvGroup(nn.Module):
    """conv, maxpool, BN, GELU, conv, BN, GELU: halves the resolution."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = IdentityConv(in_channels, out_channels)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = ShiftOnlyBatchNorm(out_channels)
        self.conv2 = IdentityConv(out_channels, out_channels)
        self.norm2 = ShiftOnlyBatchNorm(out_channels)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


def whitening_filters(images: torch.Tensor, kernel: int = WHITEN_KERNEL,
                      eps: float = WHITEN_EPS) -> torch.Tensor:
    """Conv filters (2*C*k*k, C, k, k) that decorrelate k x k patches: +/- eigenvectors / sqrt(eig)."""
    x = images.float()
    c = x.shape[1]
    patches = x.unfold(2, kernel, 1).unfold(3, kernel, 1).permute(0, 2, 3, 1, 4, 5)
    flat = patches.reshape(-1, c * kernel * kernel).double()
    flat = flat - flat.mean(0)
    cov = flat.T @ flat / len(flat)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)
    filters = eigenvectors.T / torch.sqrt(eigenvalues.clamp(min=0) + eps).unsqueeze(1)
    filters = filters.reshape(-1, c, kernel, kernel).float()
    return torch.cat([filters, -filters])


class SpeedNet(nn.Module):
    """Whitening 2x2 conv (frozen buffer) -> GELU -> 3 conv groups -> global max pool -> linear/width."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, widths: tuple[int, ...] = WIDTHS):
        super().__init__()
        self.num_classes = num_classes
        whiten_width = 2 * in_chans * WHITEN_KERNEL ** 2
        self.register_buffer("whiten_weight", torch.empty(whiten_width, in_chans, WHITEN_KERNEL,
                                                          WHITEN_KERNEL))
        nn.init.kaiming_uniform_(self.whiten_weight, a=5 ** 0.5)  # replaced by init_from_data
        self.whiten_bias = nn.Parameter(torch.zeros(whiten_width))
        channels = (whiten_width, *widths)
        self.groups = nn.Sequential(*[ConvGroup(a, b) for a, b in zip(channels, channels[1:])])
        self.num_features = widths[-1]
        self.reset_classifier(num_classes)

    def init_from_data(self, images_uint8: torch.Tensor) -> None:
        """Set the frozen first layer from the patch covariance of (the first) training images,
        normalized as the fast recipe feeds them (CIFAR-10 mean/std). Pretrained weights keep theirs."""
        if not getattr(self, "whiten_from_data", True):
            return
        mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
        sample = (images_uint8[:WHITEN_PATCH_IMAGES].float().div(255) - mean) / std
        self.whiten_weight.copy_(whitening_filters(sample))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes, bias=False) if num_classes \
            else nn.Identity()
        if num_classes:
            nn.init.normal_(self.head.weight)  # unit weights; forward_head divides by the width

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.whiten_weight.to(x.dtype), self.whiten_bias.to(x.dtype))
        return self.groups(F.gelu(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.amax(x, dim=(2, 3))
        return x if pre_logits else self.head(x) / self.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# input_size and normalization of the fast recipe, so a Hub export records them
default_cfgs = generate_default_cfgs({variant: dict(
    num_classes=10, input_size=(3, 32, 32), pool_size=None, crop_pct=1.0, interpolation="bilinear",
    mean=CIFAR10_MEAN, std=CIFAR10_STD, first_conv="whiten_bias", classifier="head",
    license="mit") for variant in VARIANTS})


def has_weights_source(cfg) -> bool:
    return bool(cfg.file or cfg.hf_hub_id or cfg.url or cfg.state_dict)


def _build(variant: str, pretrained: bool, kwargs: dict) -> SpeedNet:
    cfg = resolve_pretrained_cfg(variant, kwargs.get("pretrained_cfg"), kwargs.get("pretrained_cfg_overlay"))
    if pretrained and not has_weights_source(cfg):
        raise UserError(f"{variant} has no published pretrained weights; train it with --level "
                        f"fast, or pass --pretrained-file with a {variant} checkpoint")
    allowed = {k: kwargs[k] for k in ("num_classes", "in_chans", "widths", "pretrained_cfg",
                                      "pretrained_cfg_overlay", "cache_dir", "pretrained_model_args")
               if k in kwargs}
    allowed.setdefault("widths", VARIANTS[variant])
    model = build_model_with_cfg(SpeedNet, variant, pretrained, **allowed)
    model.whiten_from_data = not pretrained  # loaded weights bring their own whitening layer
    return model


@register_model
def cifar_speednet(pretrained: bool = False, **kwargs) -> SpeedNet:
    """~2M-parameter CIFAR-native net (widths 64/256/256); see the module docstring.

    pretrained=True needs weights of ours: --pretrained-file, or a Hub export ("local-dir:" / "hf-hub:").
    """
    return _build("cifar_speednet", pretrained, kwargs)


@register_model
def cifar_speednet_m(pretrained: bool = False, **kwargs) -> SpeedNet:
    """cifar_speednet with widths 64/192/192 (~1.2M parameters): fewer FLOPs per image."""
    return _build("cifar_speednet_m", pretrained, kwargs)


@register_model
def cifar_speednet_s(pretrained: bool = False, **kwargs) -> SpeedNet:
    """cifar_speednet with widths 48/160/160 (~0.8M parameters): fewer FLOPs per image."""
    return _build("cifar_speednet_s", pretrained, kwargs)
