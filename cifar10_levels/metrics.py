"""Classification metrics shared by training, tracking and the ensemble."""
from __future__ import annotations

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
