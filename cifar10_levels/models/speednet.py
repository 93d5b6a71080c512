"""cifar_speednet: a small CIFAR-native network for the fast recipe, registered with timm.

Ideas from the CIFAR-10 speed records (airbench, arXiv 2404.00498), written anew: a frozen 2x2
first layer that whitens image patches, three VGG-like conv groups whose convs start as identities,
BatchNorm with scales fixed at 1, and Muon for conv filters with Nesterov SGD for the rest.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.optim.sgd import sgd
from timm.models import (build_model_with_cfg, generate_default_cfgs, register_model,
                         resolve_pretrained_cfg)
from torch import nn

from ..errors import UserError
from ..recipes import CIFAR10_MEAN, CIFAR10_STD

WIDTHS = (64, 256, 256)
WHITEN_KERNEL = 2
WHITEN_EPS = 5e-4
WHITEN_PATCH_IMAGES = 5000     # images whose patches estimate the covariance (deterministic: the first N)
# SGD lrs per image of the batch as fractions of the Muon lr (the loss is a batch mean, so lr x batch
# size; --lr scales every group), and momenta.
BIAS_LR_PER_IMAGE = 0.053 / 0.24
HEAD_LR_PER_IMAGE = 0.67 / 0.24
SGD_MOMENTUM = 0.85
MUON_MOMENTUM = 0.6


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

    def optimizer_groups(self, lr: float, weight_decay: float, batch_size: int,
                         decay_biases: bool = True, whiten_bias_fraction: float = 1.0) -> "MuonWithSGD":
        """Muon for conv filters; Nesterov SGD (lr per image x batch) for biases and the head.

        weight_decay is the fraction of an SGD-trained weight decayed per step at full lr;
        decay_biases=False: none on the biases (the whitening bias and BatchNorm shifts).
        whiten_bias_fraction < 1: the whitening bias has a group of its own whose schedule ends (lr 0,
        the bias frozen) after that fraction of the phase's steps (the scheduler reads
        "schedule_fraction").
        """
        filters = [p for p in self.groups.parameters() if p.ndim == 4]
        norm_biases = [p for p in self.groups.parameters() if p.ndim == 1]
        biases = [([self.whiten_bias] + norm_biases, 1.0)] if whiten_bias_fraction >= 1 else \
            [([self.whiten_bias], whiten_bias_fraction), (norm_biases, 1.0)]
        groups = [dict(params=filters, lr=lr, muon=True, momentum=MUON_MOMENTUM, weight_decay=0.0)]
        for params, per_image, decay, fraction in (
                *((b, BIAS_LR_PER_IMAGE, decay_biases, f) for b, f in biases),
                (list(self.head.parameters()), HEAD_LR_PER_IMAGE, True, 1.0)):
            group_lr = lr * per_image * batch_size
            groups.append(dict(params=params, lr=group_lr, muon=False, momentum=SGD_MOMENTUM,
                               weight_decay=weight_decay / group_lr if decay else 0.0,
                               schedule_fraction=fraction))
        return MuonWithSGD(groups)


def orthogonalize(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Newton-Schulz iteration towards the nearest semi-orthogonal matrix (Muon's update).

    fp32: on CPUs without AMX bf16 matmuls of these small matrices measured slower.
    """
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.float()
    x = x / (x.norm() + eps)
    transposed = x.shape[0] > x.shape[1]
    if transposed:
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if transposed else x).to(g.dtype)


class MuonWithSGD(torch.optim.Optimizer):
    """One optimizer (one state_dict, one scheduler) with Muon groups and Nesterov SGD groups.

    Muon groups: weights renormalised to norm sqrt(out_channels), then an orthogonalised Nesterov
    momentum step. SGD groups: torch's Nesterov SGD with coupled weight decay.
    """

    def __init__(self, groups: list[dict]):
        super().__init__(groups, dict(lr=0.0, muon=False, momentum=0.0, weight_decay=0.0,
                                      schedule_fraction=1.0))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if group["muon"]:
                self._muon_step(params, group)
            elif params:
                bufs = [self.state[p].get("momentum_buffer") for p in params]
                sgd(params, [p.grad for p in params], bufs,
                                    weight_decay=group["weight_decay"], momentum=group["momentum"],
                                    lr=group["lr"], dampening=0.0, nesterov=True, maximize=False)
                for p, buf in zip(params, bufs):
                    self.state[p]["momentum_buffer"] = buf
        return loss

    def _muon_step(self, params: list[torch.Tensor], group: dict) -> None:
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p)
            buf = state["momentum_buffer"]
            buf.mul_(group["momentum"]).add_(p.grad)
            g = p.grad.add(buf, alpha=group["momentum"])
            p.mul_(p.shape[0] ** 0.5 / p.norm().clamp(min=1e-12))  # scale-free filters: fix the norm
            p.add_(orthogonalize(g.reshape(len(g), -1)).view_as(p), alpha=-group["lr"])


# input_size and normalization of the fast recipe, so a Hub export records them
default_cfgs = generate_default_cfgs({"cifar_speednet": dict(
    num_classes=10, input_size=(3, 32, 32), pool_size=None, crop_pct=1.0, interpolation="bilinear",
    mean=CIFAR10_MEAN, std=CIFAR10_STD, first_conv="whiten_bias", classifier="head",
    license="mit")})


def has_weights_source(cfg) -> bool:
    return bool(cfg.file or cfg.hf_hub_id or cfg.url or cfg.state_dict)


@register_model
def cifar_speednet(pretrained: bool = False, **kwargs) -> SpeedNet:
    """~2M-parameter CIFAR-native net (widths 64/256/256); see the module docstring.

    pretrained=True needs weights of ours: --pretrained-file, or a Hub export ("local-dir:" / "hf-hub:").
    """
    cfg = resolve_pretrained_cfg("cifar_speednet", kwargs.get("pretrained_cfg"),
                                 kwargs.get("pretrained_cfg_overlay"))
    if pretrained and not has_weights_source(cfg):
        raise UserError("cifar_speednet has no published pretrained weights; train it with --level "
                        "fast, or pass --pretrained-file with a cifar_speednet checkpoint")
    allowed = {k: kwargs[k] for k in ("num_classes", "in_chans", "widths", "pretrained_cfg",
                                      "pretrained_cfg_overlay", "cache_dir", "pretrained_model_args")
               if k in kwargs}
    model = build_model_with_cfg(SpeedNet, "cifar_speednet", pretrained, **allowed)
    model.whiten_from_data = not pretrained  # loaded weights bring their own whitening layer
    return model
