"""Class probabilities of one model on uint8 32 px images: the same path as evaluation in training."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

    from ..checkpoint.meta import CheckpointMeta
    from ..data.cifar10 import ImageSet
    from .evaluate import EvalResult


def make_accelerator():
    import torch
    from accelerate import Accelerator

    return Accelerator(mixed_precision="fp16" if torch.cuda.is_available() else "no")


def model_probabilities(accelerator, model: nn.Module, meta: CheckpointMeta, images: ImageSet,
                        tta: int = 1, batch_size: int = 256, img_size: int | None = None) -> EvalResult:
    """evaluation.evaluate with the model's own normalization: 32 px views (tta.tta_views of its
    scheme), then Normalizer's resize to meta.img_size (or `img_size`), as in training."""
    import torch

    from ..data.normalize import Normalizer
    from ..data.cifar10 import make_loader
    from .evaluate import evaluate

    channels_last = accelerator.device.type == "cuda"
    model = model.to(accelerator.device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    normalize = Normalizer(img_size or meta.img_size, tuple(meta.mean), tuple(meta.std), channels_last,
                           meta.tta_scheme)
    loader = accelerator.prepare_data_loader(make_loader(images, batch_size, False, 0))
    with accelerator.autocast():
        return evaluate(accelerator, model, loader, normalize, max(tta, 1))
