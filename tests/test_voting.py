"""Votes on hand-made probabilities whose answers are known."""
import pytest
import torch

from cifar10_levels.evaluation import metrics
from cifar10_levels.ensemble import voting


def probs(*members: list[list[float]]) -> torch.Tensor:
    """(members, samples, classes) from nested lists."""
    return torch.tensor(members, dtype=torch.float32)


def test_majority_vote_follows_the_majority_even_against_confidence():
    # two members say class 0 weakly, one says class 1 very confidently
    p = probs([[0.5, 0.4, 0.1]], [[0.5, 0.3, 0.2]], [[0.0, 1.0, 0.0]])
    assert voting.majority_vote(p).tolist() == [0]
    assert voting.soft_vote(p).tolist() == [1]   # mean: 0.33, 0.57, 0.10
    assert voting.majority_ties(p).tolist() == [False]


def test_three_way_tie_goes_to_the_largest_summed_probability():
    # each member votes a different class; summed probabilities: 0.6+0.2+0.1=0.9, 1.3, 0.8
    p = probs([[0.6, 0.3, 0.1]], [[0.2, 0.7, 0.1]], [[0.1, 0.3, 0.6]])
    assert voting.majority_ties(p).tolist() == [True]
    assert voting.majority_vote(p).tolist() == [1]


def test_two_class_tie_ignores_classes_outside_the_tie():
    # four members: 2 votes for class 0, 2 for class 2; class 1 has the largest summed probability
    # (0.45*4 = 1.8) but no top vote, so it must not win
    p = probs([[0.5, 0.45, 0.05]], [[0.5, 0.45, 0.05]], [[0.05, 0.45, 0.5]], [[0.0, 0.45, 0.55]])
    assert voting.majority_ties(p).tolist() == [True]
    assert voting.majority_vote(p).tolist() == [2]   # class 2: 1.15 > class 0: 1.05


def test_exact_tie_of_votes_and_probability_takes_the_lower_class():
    p = probs([[0.6, 0.4]], [[0.4, 0.6]])
    assert voting.majority_vote(p).tolist() == [0]
    assert "summed probability" in voting.TIE_RULE


def test_votes_on_a_batch_count_ties_per_sample():
    p = probs([[0.9, 0.1, 0.0], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]],
              [[0.8, 0.2, 0.0], [0.2, 0.7, 0.1], [0.2, 0.7, 0.1]],
              [[0.1, 0.9, 0.0], [0.1, 0.1, 0.8], [0.1, 0.1, 0.8]])
    assert voting.majority_ties(p).tolist() == [False, True, False]
    assert int(voting.majority_ties(p).sum()) == 1
    assert voting.majority_vote(p).tolist() == [0, 1, 2]   # sample 1: sums 0.9, 1.1, 1.0


def test_weighted_vote_lets_a_trusted_member_win():
    p = probs([[0.2, 0.8]], [[0.2, 0.8]], [[0.9, 0.1]])
    assert voting.soft_vote(p).tolist() == [1]                       # means 0.43 vs 0.57
    assert voting.weighted_vote(p, torch.tensor([1.0, 1.0, 4.0])).tolist() == [0]
    # weights are normalized: scaling them changes nothing
    assert voting.weighted_vote(p, torch.tensor([2.0, 2.0, 8.0])).tolist() == [0]


def test_accuracy_weights_are_normalized_val_accuracies():
    w = voting.accuracy_weights(torch.tensor([0.5, 0.25, 0.25]))
    assert w.tolist() == pytest.approx([0.5, 0.25, 0.25])
    assert voting.accuracy_weights(torch.tensor([0.9, 0.9])).tolist() == pytest.approx([0.5, 0.5])


def test_fitted_weights_favour_the_member_that_explains_validation():
    torch.manual_seed(0)
    labels = torch.randint(0, 4, (200,))
    good = torch.nn.functional.one_hot(labels, 4).float() * 0.9 + 0.025
    noise = torch.full((200, 4), 0.25)
    w = voting.fit_mixture_weights(torch.stack([noise, good, noise]), labels)
    assert w.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert w[1] > 0.95 and (w >= 0).all()


def test_oracle_counts_a_sample_when_any_member_is_right():
    labels = torch.tensor([0, 1, 2, 3])
    preds = torch.tensor([[0, 0, 0, 0],     # right on sample 0
                          [1, 1, 1, 1],     # right on sample 1
                          [2, 2, 2, 0]])    # right on sample 2
    assert voting.oracle_accuracy(preds, labels) == pytest.approx(0.75)
    assert voting.accuracy(preds[0], labels) == pytest.approx(0.25)


def test_pairwise_disagreement_on_constructed_predictions():
    preds = torch.tensor([[0, 1, 2, 3],
                          [0, 1, 2, 0],    # differs from member 0 on 1 of 4
                          [1, 0, 2, 0]])   # differs from 0 on 3, from 1 on 2
    matrix = voting.pairwise_disagreement(preds)
    assert matrix.tolist() == [[0.0, 0.25, 0.75], [0.25, 0.0, 0.5], [0.75, 0.5, 0.0]]
    assert voting.mean_disagreement(preds) == pytest.approx((0.25 + 0.75 + 0.5) / 3)
    assert voting.mean_disagreement(preds[:1]) == 0.0


def test_confusion_matrix_and_per_class_accuracy():
    labels = torch.tensor([0, 0, 1, 1, 2])
    preds = torch.tensor([0, 1, 1, 1, 0])
    assert metrics.confusion_matrix(preds, labels, 3).tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    per_class = metrics.per_class_accuracy(preds, labels, 4)
    assert per_class[:3] == pytest.approx([0.5, 1.0, 0.0])
    assert per_class[3] != per_class[3]   # nan: class absent
