"""Evaluation with Accelerate: weighted mean softmax over test-time views, every sample counted once."""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..data.normalize import Normalizer
from .tta import tta_scheme, tta_views


@dataclass
class EvalResult:
    loss: float                   # cross-entropy of the identity view
    acc: float
    probs: torch.Tensor           # (N, C) weighted mean softmax over the views, every sample once
    labels: torch.Tensor
    plain_probs: torch.Tensor     # (N, C) softmax of the identity view alone

    @property
    def preds(self) -> torch.Tensor:
        return self.probs.argmax(1)

    @property
    def plain_acc(self) -> float:
        return (self.plain_probs.argmax(1) == self.labels).float().mean().item()

    def plain(self) -> "EvalResult":
        """The identity view's result, without evaluating again."""
        return EvalResult(self.loss, self.plain_acc, self.plain_probs, self.labels, self.plain_probs)


@torch.inference_mode()
def evaluate(accelerator, model: nn.Module, loader, normalize: Normalizer, tta: int = 1,
             autocast: Callable[[], AbstractContextManager] = nullcontext) -> EvalResult:
    """Weighted mean softmax over the first `tta` views of normalize.tta_scheme; every sample
    counted exactly once across processes."""
    model.eval()
    probs, labels, plain_logits = [], [], []
    weights = tta_scheme(normalize.tta_scheme, max(tta, 1)).weights
    for images, target in loader:
        views = tta_views(images, max(tta, 1), normalize.tta_scheme)
        with autocast():
            logits = [model(normalize(v)).float() for v in views]
        mean = sum(w * lg.softmax(1) for w, lg in zip(weights, logits))
        p, lg, t = accelerator.gather_for_metrics((mean, logits[0], target))
        probs.append(p.cpu()), plain_logits.append(lg.cpu()), labels.append(t.cpu())
    probs_t, labels_t, plain_t = torch.cat(probs), torch.cat(labels), torch.cat(plain_logits)
    loss = nn.functional.cross_entropy(plain_t, labels_t).item()
    return EvalResult(loss=loss, acc=(probs_t.argmax(1) == labels_t).float().mean().item(),
                      probs=probs_t, labels=labels_t, plain_probs=plain_t.softmax(1))
