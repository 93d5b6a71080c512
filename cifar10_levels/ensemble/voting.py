"""Votes across ensemble members: pure functions on probability tensors.

`probs` is always (members, samples, classes) of per-member class probabilities; predictions are
(members, samples) or (samples,) class indices.
"""
from __future__ import annotations

import torch

TIE_RULE = ("majority ties are broken by the summed probability of the tied classes over all "
            "members (then by the lower class index)")


def vote_counts(probs: torch.Tensor) -> torch.Tensor:
    """(samples, classes): how many members picked each class as their top-1."""
    members_top1 = probs.argmax(2)
    return torch.nn.functional.one_hot(members_top1, probs.shape[2]).sum(0)


def majority_ties(probs: torch.Tensor) -> torch.Tensor:
    """(samples,) bool: True where two or more classes share the highest vote count."""
    counts = vote_counts(probs)
    return (counts == counts.max(1, keepdim=True).values).sum(1) > 1


def majority_vote(probs: torch.Tensor) -> torch.Tensor:
    """Hard vote; among the classes with the most votes, the one with the largest summed probability."""
    counts = vote_counts(probs)
    tied_top = counts == counts.max(1, keepdim=True).values
    summed = probs.sum(0).masked_fill(~tied_top, float("-inf"))
    return summed.argmax(1)


def vote_shares(probs: torch.Tensor) -> torch.Tensor:
    """(samples, classes): the share of members voting for each class, the majority vote's
    probabilities (what its calibration is measured on)."""
    return vote_counts(probs).to(probs.dtype) / probs.shape[0]


def mean_probabilities(probs: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """(samples, classes): the (weighted) mean of the members' probabilities; weights sum to 1."""
    if weights is None:
        return probs.mean(0)
    w = weights.to(probs.dtype) / weights.sum()
    return torch.einsum("m,mnc->nc", w, probs)


def soft_vote(probs: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """(samples,) argmax of the (weighted) mean probability."""
    return mean_probabilities(probs, weights).argmax(1)


def accuracy_weights(val_accuracies: torch.Tensor) -> torch.Tensor:
    """Each member weighted by its validation accuracy, normalized to sum to 1."""
    return val_accuracies / val_accuracies.sum()


def fit_mixture_weights(val_probs: torch.Tensor, val_labels: torch.Tensor,
                        iterations: int = 200) -> torch.Tensor:
    """Weights maximizing the validation likelihood of the mixture sum_m w_m p_m(y).

    EM for mixture proportions: monotone, stays on the simplex, and needs no learning rate.
    """
    members = val_probs.shape[0]
    p_true = val_probs[:, torch.arange(val_probs.shape[1]), val_labels].double().clamp_min(1e-12)
    w = torch.full((members,), 1.0 / members, dtype=torch.float64)
    for _ in range(iterations):
        responsibility = w[:, None] * p_true
        w = (responsibility / responsibility.sum(0, keepdim=True)).mean(1)
    return w.float()


def weighted_vote(probs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Soft vote with per-member weights (fitted or taken on validation data, never on test)."""
    return soft_vote(probs, weights)


def accuracy(preds: torch.Tensor, labels: torch.Tensor) -> float:
    return (preds == labels).float().mean().item()


def oracle_accuracy(member_preds: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of samples that at least one member gets right: the ceiling for any vote."""
    return (member_preds == labels).any(0).float().mean().item()


def pairwise_disagreement(member_preds: torch.Tensor) -> torch.Tensor:
    """(members, members): fraction of samples on which two members' predictions differ."""
    return (member_preds[:, None, :] != member_preds[None, :, :]).float().mean(2)


def mean_disagreement(member_preds: torch.Tensor) -> float:
    """Mean pairwise disagreement over distinct pairs of members."""
    m = member_preds.shape[0]
    matrix = pairwise_disagreement(member_preds)
    return (matrix.sum() / (m * (m - 1))).item() if m > 1 else 0.0
