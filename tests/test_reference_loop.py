"""The reference-loop baseline: correct counting, Cohen's CERTIFY, and statistically the engine's twin."""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
import torch
from scipy.stats import chi2_contingency
from torch import nn

from smoothviz.certify import certify_points, sample_counts
from smoothviz.reference_loop import ABSTAIN, count_votes, reference_certify, reference_sample_counts
from smoothviz.sigma import Constant

SHAPE = (1, 8, 8)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_cnn(seed: int = 0, classes: int = 5) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 64, classes),
    ).eval()


class ConstantClass(nn.Module):
    """Votes for one class whatever the input: every sample agrees."""

    def __init__(self, label: int, classes: int):
        super().__init__()
        self.label, self.classes = label, classes

    def forward(self, x):
        out = torch.zeros(x.shape[0], self.classes)
        out[:, self.label] = 1.0
        return out


class RecordingModel(nn.Module):
    """Wraps a model and records the batch sizes it is called with."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.sizes = inner, []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        return self.inner(x)


def test_count_votes_matches_bincount():
    labels = np.random.default_rng(0).integers(0, 7, 500)
    assert np.array_equal(count_votes(labels, 7), np.bincount(labels, minlength=7))


def test_reference_batches_repeat_one_point():
    model = RecordingModel(tiny_cnn())
    x = torch.rand(SHAPE)
    votes = reference_sample_counts(model, x, 0.5, 2500, 5, generator=torch.Generator().manual_seed(0))
    assert model.sizes == [1000, 1000, 500]
    assert votes.sum() == 2500 and votes.shape == (5,)


def test_reference_certify_of_a_constant_classifier_hits_the_waterfall():
    """All n samples vote for class 3: p_A = alpha^(1/n), radius = sigma * Phi^-1(alpha^(1/n))."""
    n, alpha, sigma = 1000, 0.001, 0.25
    label, radius = reference_certify(ConstantClass(3, 5), torch.rand(SHAPE), sigma, 100, n, alpha, 5)
    mpmath.mp.dps = 30
    p = mpmath.power(mpmath.mpf(alpha), mpmath.mpf(1) / n)
    expected = sigma * float(mpmath.sqrt(2) * mpmath.erfinv(2 * p - 1))
    assert label == 3
    assert radius == pytest.approx(expected, rel=1e-9)


def test_reference_certify_abstains_on_an_even_split():
    class Alternate(nn.Module):
        def forward(self, x):
            out = torch.zeros(x.shape[0], 2)
            out[torch.arange(x.shape[0]), torch.arange(x.shape[0]) % 2] = 1.0
            return out

    assert reference_certify(Alternate(), torch.rand(SHAPE), 0.25, 100, 2000, 0.001, 2) == (ABSTAIN, 0.0)


def test_reference_loop_matches_the_engine_statistically():
    """Same classifier, same sigma, independent draws: the vote distributions of the reference
    loop and the engine agree (chi-square homogeneity per point), so the speed comparison is a
    comparison of the same computation."""
    model = tiny_cnn()
    x = torch.rand((4, *SHAPE), generator=torch.Generator().manual_seed(1))
    num, sigma = 4000, 0.5
    engine = sample_counts(model, x, torch.full((4,), sigma), num, 5, 1024, torch.Generator(), seeds=[1, 2, 3, 4])
    gen = torch.Generator().manual_seed(99)
    spread = 0
    for p in range(4):
        ref = reference_sample_counts(model, x[p], sigma, num, 5, generator=gen)
        table = np.array([ref, engine[p].numpy()])
        table = table[:, table.sum(axis=0) > 0]
        spread += table.shape[1]
        assert chi2_contingency(table).pvalue > 1e-4
    assert spread >= 12, "votes should spread over classes for the comparison to mean something"


def test_reference_certify_agrees_with_engine_certify():
    model = tiny_cnn(seed=3)
    x = torch.rand((6, *SHAPE), generator=torch.Generator().manual_seed(5))
    sigma, n, alpha = 0.25, 4000, 0.001
    engine = certify_points(model, x, [0] * 6, list(range(6)), Constant(sigma), 100, n, alpha, 5, 1024,
                            "cpu", 7, 0.0, 64)
    gen = torch.Generator().manual_seed(123)
    clear = 0
    for p, res in enumerate(engine):
        label, radius = reference_certify(model, x[p], sigma, 100, n, alpha, 5, generator=gen)
        if res.p_a_lower > 0.7:  # clear margin: both certify the same class
            clear += 1
            assert label == res.predict
            # radii differ only through sampling error of p_A (sd of the estimate ~ 1/sqrt(n))
            assert abs(radius - res.radius) < sigma * 0.25
    assert clear >= 2
