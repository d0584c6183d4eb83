"""Sample explorer data: neighbours against brute force, sigma(x) against its formula, certificate
against closed forms (Clopper-Pearson at k = n, Cohen's radius) and the bounds module."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import norm

from smoothviz import bounds
from smoothviz.data import load_dataset
from smoothviz.errors import InvalidArgument
from smoothviz.explorer import explore_point, nearest_neighbours, neighbour_count, sample_test_sigmas
from smoothviz.sigma import build_sigma


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def constant_model(num_classes: int, dim: int, winner: int) -> torch.nn.Module:
    """A base classifier that answers ``winner`` for every input (zero weights, one positive bias)."""
    lin = torch.nn.Linear(dim, num_classes)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.zero_()
        lin.bias[winner] = 1.0
    return torch.nn.Sequential(torch.nn.Flatten(), lin).eval()


def random_model(num_classes: int, dim: int, seed: int = 0) -> torch.nn.Module:
    """A fixed random linear classifier (votes spread over several classes)."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(dim, num_classes)).eval()


def test_nearest_neighbours_match_brute_force_numpy(digits):
    train = digits.train_x.reshape(len(digits.train_x), -1).double().numpy()
    for i in (0, 17, 123):
        x = digits.test_x[i]
        idx, dist = nearest_neighbours(digits.train_x, x, k=7, chunk_size=300)  # several chunks
        brute = np.sqrt(((train - x.reshape(-1).double().numpy()) ** 2).sum(axis=1))
        order = np.argsort(brute, kind="stable")
        np.testing.assert_allclose(dist, brute[order[:7]], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(brute[idx], dist, rtol=1e-5, atol=1e-5)  # the indices have those distances
        assert len(set(idx.tolist())) == 7
        assert np.all(np.diff(dist) >= 0)


def test_nearest_neighbours_rejects_bad_k(digits):
    with pytest.raises(InvalidArgument, match="k must be"):
        nearest_neighbours(digits.train_x, digits.test_x[0], k=0)
    with pytest.raises(InvalidArgument, match="k must be"):
        nearest_neighbours(digits.train_x, digits.test_x[0], k=len(digits.train_x) + 1)


def test_knn_point_sigma_and_neighbours(digits):
    spec = "knn:0.25,0.5,5"
    sigma_fn = build_sigma(spec, digits.train_x)
    assert neighbour_count(sigma_fn) == 5
    model = random_model(10, digits.dim)
    res = explore_point(model, digits, 42, sigma_fn, n0=50, n=500, alpha=0.01, num_noisy=6, seed=3)
    assert res.neighbours is not None and len(res.neighbours.indices) == 5
    # sigma(x) from the paper's formula with brute-force distances
    train = digits.train_x.reshape(len(digits.train_x), -1).double().numpy()
    brute = np.sort(np.sqrt(((train - digits.test_x[42].reshape(-1).double().numpy()) ** 2).sum(axis=1)))[:5]
    expected = 0.25 * np.exp(0.5 * (brute.mean() - sigma_fn.m))
    assert res.sigma == pytest.approx(expected, rel=1e-5)
    np.testing.assert_array_equal(res.neighbours.labels, digits.train_y[res.neighbours.indices].numpy())
    np.testing.assert_array_equal(res.neighbours.images, digits.train_x[res.neighbours.indices].numpy())
    assert res.neighbours.images.shape == (5, *digits.input_shape)
    assert res.counts.sum() == 500 and res.counts.shape == (10,)
    assert res.noisy.shape == (6, *digits.input_shape) and res.noisy_predictions.shape == (6,)


def test_constant_sigma_has_no_neighbours_and_equal_radii(digits):
    sigma_fn = build_sigma("constant:0.3")
    assert neighbour_count(sigma_fn) is None
    res = explore_point(constant_model(10, digits.dim, 4), digits, 0, sigma_fn, n0=20, n=1000, alpha=0.001)
    assert res.neighbours is None
    assert res.sigma == pytest.approx(0.3)
    assert res.radius == pytest.approx(res.naive_radius, rel=1e-9)


def test_certificate_of_a_unanimous_classifier_matches_closed_forms(digits):
    """All n votes for one class: p_A lower = alpha**(1/n) exactly; Cohen radius = sigma * Phi^-1 of it."""
    n, alpha, winner = 2000, 0.001, 7
    model = constant_model(10, digits.dim, winner)
    const = explore_point(model, digits, 5, build_sigma("constant:0.25"), n0=30, n=n, alpha=alpha)
    assert const.predict == winner and not const.abstains
    assert const.correct == (int(digits.test_y[5]) == winner)
    assert const.counts[winner] == n and const.counts.sum() == n
    assert const.p_a_lower == pytest.approx(alpha ** (1 / n), rel=1e-10)
    assert const.radius == pytest.approx(0.25 * norm.ppf(alpha ** (1 / n)), rel=1e-7)

    knn_fn = build_sigma("knn:0.25,0.5,10", digits.train_x)
    res = explore_point(model, digits, 5, knn_fn, n0=30, n=n, alpha=alpha)
    assert res.r == 0.5 and res.dim == 64
    assert res.naive_radius == pytest.approx(res.sigma * norm.ppf(res.p_a_lower), rel=1e-7)
    sound = float(bounds.input_dependent_radius(res.p_a_lower, res.sigma, 0.5, 64))
    assert res.radius == pytest.approx(sound, rel=1e-9)
    assert 0 < res.radius < res.naive_radius  # the naive radius overstates the certificate


def test_abstains_when_votes_split(digits):
    """A classifier that splits votes near 50/50 cannot have a p_A lower bound above 1/2."""

    class Split(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # class 0 when the first noisy pixel is below the clean value, class 1 otherwise
            v = x.reshape(len(x), -1)[:, :1] - float(digits.test_x[9].reshape(-1)[0])
            logits = torch.zeros(len(x), 10)
            logits[:, 0:1] = -v
            logits[:, 1:2] = v
            return logits

    model = Split()
    model.register_parameter("p", torch.nn.Parameter(torch.zeros(1)))
    res = explore_point(model, digits, 9, build_sigma("constant:0.5"), n0=50, n=2000, alpha=0.001)
    assert res.abstains and res.predict == -1
    assert res.radius == 0.0 and res.p_a_lower <= 0.5
    assert res.counts[0] + res.counts[1] == 2000


def test_noisy_copies_have_sigma_spread(digits):
    sigma_fn = build_sigma("constant:0.2")
    res = explore_point(random_model(10, digits.dim), digits, 3, sigma_fn, n0=10, n=100, num_noisy=200, seed=1)
    noise = res.noisy - res.image[None]
    # 200 * 64 Gaussian draws: the sample std is within 3% of sigma with overwhelming probability
    assert noise.std() == pytest.approx(0.2, rel=0.03)
    assert abs(noise.mean()) < 0.01
    assert res.noisy.min() < 0.0  # noise is not clipped in the data (only for display)


def test_bad_index_is_a_user_error(digits):
    with pytest.raises(InvalidArgument, match="test index"):
        explore_point(random_model(10, digits.dim), digits, len(digits.test_y), build_sigma("constant:0.25"))


def test_sample_test_sigmas(digits):
    fn = build_sigma("knn:0.25,0.5,5", digits.train_x)
    a = sample_test_sigmas(fn, digits, max_points=50, seed=2)
    assert a.shape == (50,) and np.all(a > 0)
    np.testing.assert_array_equal(a, sample_test_sigmas(fn, digits, max_points=50, seed=2))
    everything = sample_test_sigmas(fn, digits, max_points=10_000)
    assert everything.shape == (len(digits.test_y),)
    # the subset's values are sigma(x) of actual test points
    full = fn(digits.test_x).numpy().astype(np.float64)
    assert np.all(np.isin(np.round(a, 6), np.round(full, 6)))
    np.testing.assert_allclose(np.sort(everything), np.sort(full), rtol=1e-6)


def test_a_data_dependent_sigma_is_refused_in_one_line(digits):
    model = constant_model(10, digits.dim, 4)
    sigma_fn = build_sigma("ddrs:0.12,0.5,4,n=8", model=model)
    assert sigma_fn.r is None
    with pytest.raises(InvalidArgument, match="no semi-elasticity, so no sound radius"):
        explore_point(model, digits, 0, sigma_fn, n0=20, n=100, alpha=0.001)
