"""The ensemble's votes (majority, soft, weighted, fitted) scored on val and test, and the
comparison of votes and members that ensemble.py prints and saves."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..evaluation import metrics
from . import voting
from .members import Member


@dataclass
class VoteScore:
    name: str
    description: str
    val_acc: float
    test_acc: float
    test_preds: torch.Tensor
    test_probs: torch.Tensor       # (samples, classes): what the vote's calibration is measured on
    test_labels: torch.Tensor
    weights: list[float] | None = None

    @property
    def test_nll(self) -> float:
        return metrics.negative_log_likelihood(self.test_probs, self.test_labels)

    @property
    def test_ece(self) -> float:
        return metrics.expected_calibration_error(self.test_probs, self.test_labels,
                                                  preds=self.test_preds)


@dataclass
class EnsembleReport:
    members: list[dict]
    votes: list[VoteScore]
    best_vote: str
    oracle_test_acc: float
    majority_ties_test: int
    majority_ties_val: int
    pairwise_disagreement_test: list[list[float]]
    mean_disagreement_test: float
    per_class_acc: dict[str, float]
    confusion_matrix: list[list[int]]
    class_names: list[str]
    tie_rule: str = voting.TIE_RULE   # how a majority tie is broken, printed and saved with the votes


def score_votes(val: torch.Tensor, val_labels: torch.Tensor, test: torch.Tensor,
                test_labels: torch.Tensor) -> list[VoteScore]:
    """Every vote on val and test; weights only ever come from val."""
    member_val_acc = torch.tensor([voting.accuracy(p.argmax(1), val_labels) for p in val])
    acc_weights = voting.accuracy_weights(member_val_acc.clamp_min(1e-6))
    fitted = voting.fit_mixture_weights(val, val_labels)
    # (name, description, the vote's probabilities, its predictions, member weights)
    rules = [
        ("majority", "hard vote, the write-up's", voting.vote_shares, voting.majority_vote, None),
        ("soft", "mean probability", voting.mean_probabilities, None, None),
        ("weighted", "soft, weighted by val accuracy",
         lambda p: voting.mean_probabilities(p, acc_weights), None, acc_weights),
        ("fitted", "soft, weights fitted on val by max likelihood",
         lambda p: voting.mean_probabilities(p, fitted), None, fitted),
    ]
    scores = []
    for name, text, vote_probs, vote_preds, w in rules:
        predict = vote_preds or (lambda p: vote_probs(p).argmax(1))
        test_preds = predict(test)
        scores.append(VoteScore(name, text, voting.accuracy(predict(val), val_labels),
                                voting.accuracy(test_preds, test_labels), test_preds,
                                vote_probs(test), test_labels,
                                None if w is None else [round(x, 4) for x in w.tolist()]))
    return scores


def build_report(members: list[Member], probs: dict[str, torch.Tensor],
                 labels: dict[str, torch.Tensor]) -> EnsembleReport:
    votes = score_votes(probs["val"], labels["val"], probs["test"], labels["test"])
    best = max(votes, key=lambda v: v.val_acc)  # chosen on val, so the test number stays honest
    test_preds = probs["test"].argmax(2)
    class_names = members[0].meta.class_names
    num_classes = len(class_names)
    member_rows = [{"path": str(m.path), "arch": m.meta.arch, "level": m.meta.level,
                    "train_img_size": m.meta.img_size, "eval_img_size": m.eval_img_size,
                    "sha256": m.sha256,
                    "val_acc": voting.accuracy(probs["val"][i].argmax(1), labels["val"]),
                    "test_acc": voting.accuracy(test_preds[i], labels["test"]),
                    "test_nll": metrics.negative_log_likelihood(probs["test"][i], labels["test"]),
                    "test_ece": metrics.expected_calibration_error(probs["test"][i], labels["test"])}
                   for i, m in enumerate(members)]
    return EnsembleReport(
        members=member_rows, votes=votes, best_vote=best.name,
        oracle_test_acc=voting.oracle_accuracy(test_preds, labels["test"]),
        majority_ties_test=int(voting.majority_ties(probs["test"]).sum()),
        majority_ties_val=int(voting.majority_ties(probs["val"]).sum()),
        pairwise_disagreement_test=voting.pairwise_disagreement(test_preds).tolist(),
        mean_disagreement_test=voting.mean_disagreement(test_preds),
        per_class_acc=dict(zip(class_names, metrics.per_class_accuracy(
            best.test_preds, labels["test"], num_classes))),
        confusion_matrix=metrics.confusion_matrix(best.test_preds, labels["test"], num_classes).tolist(),
        class_names=class_names)
