"""Classification metrics shared by training, tracking and the ensemble."""
from __future__ import annotations

from dataclasses import dataclass

import torch


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(true, predicted) counts."""
    return torch.bincount(labels * num_classes + preds,
                          minlength=num_classes * num_classes).view(num_classes, num_classes)


def per_class_accuracy(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float]:
    """Recall of each class; nan for a class absent from `labels`."""
    matrix = confusion_matrix(preds, labels, num_classes).double()
    totals = matrix.sum(1)
    return [(matrix[c, c] / totals[c]).item() if totals[c] > 0 else float("nan")
            for c in range(num_classes)]


ECE_BINS = 15


def negative_log_likelihood(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean -log p(true class) of (N, C) probabilities; clamped so one certain miss stays finite."""
    p_true = probs.double().gather(1, labels.view(-1, 1)).squeeze(1)
    return (-p_true.clamp_min(1e-12).log()).mean().item()


@dataclass
class ReliabilityBins:
    """Equal-width confidence bins (lo, hi]: samples, mean confidence and accuracy in each."""

    edges: torch.Tensor           # (bins + 1,)
    counts: torch.Tensor          # (bins,)
    confidence: torch.Tensor      # (bins,) mean top-1 probability, 0 where empty
    accuracy: torch.Tensor        # (bins,) share of top-1 right, 0 where empty

    @property
    def ece(self) -> float:
        """sum over bins of |bin| / N x |accuracy - mean confidence| (Guo et al. 2017)."""
        return ((self.counts / self.counts.sum()) * (self.accuracy - self.confidence).abs()).sum().item()


def reliability_bins(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS,
                     preds: torch.Tensor | None = None) -> ReliabilityBins:
    """`preds`: the predictions when they are not the argmax (a majority vote's tie-break); the
    confidence is then the probability given to the predicted class."""
    probs = probs.double()
    if preds is None:
        confidence, preds = probs.max(1)
    else:
        confidence = probs.gather(1, preds.view(-1, 1)).squeeze(1)
    correct = (preds == labels).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    index = torch.bucketize(confidence, edges[1:-1])  # bin m holds (m/bins, (m+1)/bins]
    counts = torch.bincount(index, minlength=bins).double()
    safe = counts.clamp_min(1)
    return ReliabilityBins(edges, counts, torch.bincount(index, confidence, bins) / safe,
                           torch.bincount(index, correct, bins) / safe)


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS,
                               preds: torch.Tensor | None = None) -> float:
    return reliability_bins(probs, labels, bins, preds).ece
