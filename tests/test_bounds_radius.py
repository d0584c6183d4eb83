"""Continuity of the worst case, soundness of the input-dependent radius, dimension tools."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from smoothviz import bounds

CASES = [  # p_a, sigma0, r, dim
    (0.9, 0.25, 0.5, 3072),
    (0.6, 0.5, 0.05, 10),
    (0.99, 1.0, 1.0, 2),
    (0.999, 0.12, 0.2, 784),
    (0.75, 0.5, 3.0, 100),
    (0.9999, 0.25, 0.01, 3072),
    (0.55, 0.25, 0.1, 3072),
    (1 - 1e-5, 0.5, 0.002, 1),
]


def _cohen(p_a: float, d: float, s0: float) -> float:
    return float(stats.norm.cdf(stats.norm.ppf(p_a) - d / s0))


@pytest.mark.parametrize("dim", [2, 100, 3072])
@pytest.mark.parametrize("p_a", [0.6, 0.99])
def test_gap_to_cohen_shrinks_in_proportion(dim: int, p_a: float) -> None:
    s0, d = 0.5, 0.4
    cohen = _cohen(p_a, d, s0)
    for sign in (1, -1):
        eps = np.array([1e-4, 1e-6, 1e-8, 1e-10])
        got = bounds.worst_case_probability(s0, s0 * (1 + sign * eps), d, p_a, dim)
        assert np.all(np.isfinite(got))
        slope = (got - cohen) / eps
        # the gap is linear in |s1/s0 - 1|: the same slope at 1e-6, 1e-8 and 1e-10 ...
        assert slope[1:] == pytest.approx(slope[-1], rel=2e-2, abs=1e-4)
        # ... and at 1e-4 a second-order term of relative size ~ dim * eps appears
        assert np.all(np.abs(got - cohen) <= eps * (1.1 * abs(slope[-1]) + dim * eps))
    assert bounds.worst_case_probability(s0, s0, d, p_a, dim) == pytest.approx(cohen, abs=1e-15)


def test_no_nan_across_a_wide_grid() -> None:
    ratio = 1 + np.concatenate([-np.geomspace(0.9, 1e-15, 30), [0.0], np.geomspace(1e-15, 9, 30)])
    d = np.array([0.0, 1e-12, 1e-6, 0.01, 0.3, 2.0, 50.0])[:, None]
    p = np.array([0.5, 0.7, 0.999, 1 - 1e-12, 1.0])[:, None, None]
    got = bounds.worst_case_probability(1.0, ratio, d, p, 512)
    assert got.shape == (5, 7, 61) and np.all(np.isfinite(got))
    assert np.all((got >= 0) & (got <= 1))
    assert np.all(got[-1] == 1.0)  # p_a = 1: the Gaussians are equivalent measures
    # at distance 0 the worst case is at most p_a (s1 = s0 gives exactly p_a)
    assert np.all(got[:, 0] <= p[:, 0] + 1e-12)


def test_distance_zero_is_central_chi_square() -> None:
    for kappa in (1.3, 0.8):
        for dim in (1, 7, 1000):
            q = stats.chi2.ppf(0.8, dim) if kappa > 1 else stats.chi2.isf(0.8, dim)
            want = stats.chi2.cdf(q / kappa**2, dim) if kappa > 1 else stats.chi2.sf(
                q / kappa**2, dim)
            assert bounds.worst_case_probability(2.0, 2.0 * kappa, 0.0, 0.8, dim) == pytest.approx(
                want, abs=1e-12)


@pytest.mark.parametrize("p_a", [0.55, 0.6, 0.8, 0.99, 0.9999])
def test_r_zero_equals_cohen(p_a: float) -> None:
    for dim in (1, 10, 3072):
        got = bounds.input_dependent_radius(p_a, 0.37, 0.0, dim)
        assert got == pytest.approx(float(bounds.cohen_radius(p_a, 0.37)), rel=1e-12)
        assert got <= bounds.cohen_radius(p_a, 0.37)


@pytest.mark.parametrize("p_a,sigma0,r,dim", CASES)
def test_radius_is_sound_on_a_dense_grid(p_a: float, sigma0: float, r: float, dim: int) -> None:
    radius = float(bounds.input_dependent_radius(p_a, sigma0, r, dim))
    assert 0 < radius <= bounds.cohen_radius(p_a, sigma0)
    d = np.linspace(0.0, radius, 120)[:, None]
    u = np.linspace(-1.0, 1.0, 81)[None, :]
    s1 = sigma0 * np.exp(r * d * u)  # every admissible sigma1 for distance d
    worst = bounds.worst_case_probability(sigma0, s1, d, p_a, dim)
    assert worst.min() > 0.5, np.unravel_index(np.argmin(worst), worst.shape)
    # just outside, the binding end of the band drops to <= 1/2
    out = radius * (1 + 1e-6) + 1e-15
    ends = bounds.worst_case_probability(sigma0, sigma0 * np.exp([-r * out, r * out]), out, p_a,
                                         dim)
    assert ends.min() <= 0.5


def test_radius_broadcasts_and_abstains() -> None:
    p = np.array([0.3, 0.5, 0.7, 0.95])[:, None]
    s0 = np.array([0.12, 0.5])
    got = bounds.input_dependent_radius(p, s0, 0.2, 784)
    assert got.shape == (4, 2)
    assert np.all(got[:2] == 0.0) and np.all(got[2:] > 0)
    for i in range(4):
        for j in range(2):
            assert bounds.input_dependent_radius(p[i, 0], s0[j], 0.2, 784) == pytest.approx(
                got[i, j], rel=1e-12, abs=0)
    assert np.array_equal(bounds.max_certified_radius(0.2, 784, s0, p), got)
    # larger r never certifies more (the band only widens), larger dim neither
    rs = bounds.input_dependent_radius(0.9, 0.25, np.array([0.0, 0.01, 0.1, 1.0, 10.0]), 3072)
    assert np.all(np.diff(rs) < 0)
    ds = bounds.input_dependent_radius(0.9, 0.25, 0.5, np.array([1, 10, 100, 1000, 3072]))
    assert np.all(np.diff(ds) < 0)
    assert bounds.input_dependent_radius(1.0, 0.25, 0.5, 3072) == np.inf


def test_admissible_band_at_distance_zero() -> None:
    p = np.array([0.6, 0.9, 0.999])
    dims = np.array([2, 100, 3072])
    low, high = bounds.admissible_sigma_band(p[:, None], dims[None, :])
    assert low.shape == (3, 3)
    assert np.all((low < 1) & (high > 1))
    for i, pa in enumerate(p):
        for j, dim in enumerate(dims):
            for k, sign in ((low[i, j], -1), (high[i, j], 1)):
                inside = bounds.worst_case_probability(1.0, k ** (1 - 1e-9), 0.0, pa, dim)
                beyond = bounds.worst_case_probability(1.0, k * np.exp(sign * 1e-6), 0.0, pa, dim)
                assert inside > 0.5 >= beyond
    # curse of dimensionality: the band narrows with dim, widens with p_a
    assert np.all(np.diff(high, axis=1) < 0) and np.all(np.diff(low, axis=1) > 0)
    assert np.all(np.diff(high, axis=0) > 0)
    assert bounds.admissible_sigma_band(1.0, 10) == (0.0, np.inf)


def test_max_semi_elasticity_inverts_the_radius() -> None:
    p_a, s0, dim = 0.99, 0.5, 784
    target = np.array([0.01, 0.1, 0.5])
    r = bounds.max_semi_elasticity(target, s0, p_a, dim)
    assert np.all(r > 0) and np.all(np.diff(r) < 0)
    got = bounds.input_dependent_radius(p_a, s0, r, dim)
    assert np.all(got >= target)  # r certifies the radius ...
    assert np.all(bounds.input_dependent_radius(p_a, s0, r * (1 + 1e-6), dim) < target)  # ... just
    assert bounds.max_semi_elasticity(2.0, s0, p_a, dim) == 0.0  # beyond Cohen's radius
    assert bounds.max_semi_elasticity(0.1, s0, 0.4, dim) == 0.0  # abstain


def test_invalid_arguments_raise_invalid_argument_naming_them() -> None:
    from smoothviz.errors import InvalidArgument

    bad = [
        (lambda: bounds.worst_case_probability(1.0, 1.1, 0.5, 0.9, 0), "dim"),
        (lambda: bounds.worst_case_probability(1.0, 1.1, 0.5, 0.9, 2.5), "dim"),
        (lambda: bounds.worst_case_probability(0.0, 1.1, 0.5, 0.9, 3), "sigma0"),
        (lambda: bounds.worst_case_probability(1.0, [1.0, np.nan], 0.5, 0.9, 3), "sigma1"),
        (lambda: bounds.worst_case_probability(1.0, 1.1, -0.5, 0.9, 3), "distance"),
        (lambda: bounds.worst_case_probability(1.0, 1.1, 0.5, 1.5, 3), "p_a"),
        (lambda: bounds.input_dependent_radius(0.9, 1.0, -0.1, 3), "r"),
        (lambda: bounds.input_dependent_radius(0.9, np.inf, 0.1, 3), "sigma0"),
        (lambda: bounds.admissible_sigma_band(np.nan, 3), "p_a"),
        (lambda: bounds.max_semi_elasticity(-1.0, 1.0, 0.9, 3), "radius"),
    ]
    for call, name in bad:
        with pytest.raises(InvalidArgument, match=name):
            call()


def test_radius_is_sound_for_random_settings() -> None:
    """A coarser grid over many random settings, in one vectorised evaluation."""
    rng = np.random.default_rng(11)
    k = 40
    p_a = rng.uniform(0.52, 0.99999, k)
    sigma0 = rng.uniform(0.05, 1.5, k)
    r = 10.0 ** rng.uniform(-6, 1.5, k)
    dim = rng.choice([1, 2, 3, 10, 100, 784, 3072], k)
    radius = bounds.input_dependent_radius(p_a, sigma0, r, dim)
    assert np.all(radius > 0) and np.all(radius <= bounds.cohen_radius(p_a, sigma0))
    frac = np.linspace(0.0, 1.0, 40)[None, :, None]
    u = np.linspace(-1.0, 1.0, 21)[None, None, :]
    d = radius[:, None, None] * frac
    s1 = sigma0[:, None, None] * np.exp(r[:, None, None] * d * u)
    col = (slice(None), None, None)
    worst = bounds.worst_case_probability(sigma0[col], s1, d, p_a[col], dim[col])
    assert worst.min() > 0.5
    out = radius * (1 + 1e-6) + 1e-15
    ends = bounds.worst_case_probability(sigma0[:, None], sigma0[:, None] * np.exp(
        np.outer(r * out, [-1.0, 1.0])), out[:, None], p_a[:, None], dim[:, None])
    assert np.all(ends.min(axis=1) <= 0.5)


def test_worst_case_is_monotone_in_p_a_and_distance() -> None:
    """More mass at x0 never lowers the bound; a larger distance never raises it."""
    rng = np.random.default_rng(3)
    for dim in (1, 3, 50, 3072):
        ratio = np.exp(rng.uniform(-0.7, 0.7, 12))
        ratio[:3] = [1.0, 1 + 1e-9, 1 - 1e-7]
        p = np.linspace(0.5, 0.99999, 25)[:, None, None]
        d = np.linspace(0.0, 1.5, 16)[None, :, None]
        w = bounds.worst_case_probability(0.4, 0.4 * ratio[None, None, :], d, p, dim)
        assert np.all(np.diff(w, axis=0) >= -1e-12)
        assert np.all(np.diff(w, axis=1) <= 1e-12)
