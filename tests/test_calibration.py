"""NLL, expected calibration error and the reliability diagram, against hand computations."""
import math

import pytest
import torch

from cifar10_levels.evaluation import metrics
from cifar10_levels.tracking.plots import plot_reliability

from helpers.images import assert_picture


def test_nll_is_the_mean_negative_log_probability_of_the_true_class():
    probs = torch.tensor([[0.5, 0.25, 0.25], [0.5, 0.25, 0.25]])
    assert math.isclose(metrics.negative_log_likelihood(probs, torch.tensor([0, 1])),
                        (math.log(2) + math.log(4)) / 2, rel_tol=1e-9)
    certain_miss = torch.tensor([[1.0, 0.0, 0.0]])
    assert math.isfinite(metrics.negative_log_likelihood(certain_miss, torch.tensor([1])))


def test_ece_by_hand_with_15_equal_width_bins():
    # two samples at confidence 0.95 (one right): bin (14/15, 1], accuracy 0.5, gap 0.45;
    # two at 0.5 (both right): bin (7/15, 8/15], accuracy 1, gap 0.5. ECE = 0.5*0.45 + 0.5*0.5
    probs = torch.tensor([[0.95, 0.05, 0.0], [0.95, 0.05, 0.0], [0.5, 0.3, 0.2], [0.2, 0.5, 0.3]])
    labels = torch.tensor([0, 1, 0, 1])
    bins = metrics.reliability_bins(probs, labels)
    assert bins.counts.tolist() == [0] * 7 + [2] + [0] * 6 + [2]
    assert math.isclose(metrics.expected_calibration_error(probs, labels), 0.475, abs_tol=1e-6)


def test_ece_is_zero_when_confidence_matches_accuracy():
    probs = torch.tensor([[0.75, 0.25]] * 4)
    assert metrics.expected_calibration_error(probs, torch.tensor([0, 0, 0, 1])) < 1e-12
    assert metrics.expected_calibration_error(probs, torch.tensor([1, 1, 1, 1])) > 0.7


def test_reliability_diagram_shows_its_bars(tmp_path):
    probs = torch.softmax(torch.randn(300, 10) * 3, 1)
    plot_reliability(metrics.reliability_bins(probs, torch.randint(0, 10, (300,))),
                     tmp_path / "reliability.png", "random")
    assert_picture(tmp_path / "reliability.png", min_size=(500, 500), max_size=(1000, 1000))
    # the same axes without a sample draw no bar: the check tells them apart
    plot_reliability(metrics.reliability_bins(probs[:0], torch.zeros(0, dtype=torch.long)),
                     tmp_path / "empty.png", "no samples")
    with pytest.raises(AssertionError, match="in colour"):
        assert_picture(tmp_path / "empty.png", min_size=(500, 500), max_size=(1000, 1000))
