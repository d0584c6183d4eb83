"""Monte Carlo check: a classifier that IS the worst-case set attains the formula at x0 and x1."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from smoothviz import bounds

N_SAMPLES = 200_000
LEVEL = 1e-4  # two-sided miss probability of each interval


def _two_sided_interval(k: int, n: int) -> tuple[float, float]:
    """Exact (Clopper-Pearson) two-sided interval at level LEVEL."""
    lo = stats.beta.ppf(LEVEL / 2, k, n - k + 1) if k > 0 else 0.0
    hi = stats.beta.isf(LEVEL / 2, k + 1, n - k) if k < n else 1.0
    return lo, hi


def _fraction_in_set(rng: np.random.Generator, centre_x: float, sigma: float, c: float,
                     rho2: float, ball: bool, dim: int) -> int:
    """Count samples x + sigma * g (x = centre_x e1) in the ball ||z - c e1||^2 <= rho2 (or not)."""
    hits = 0
    for start in range(0, N_SAMPLES, 50_000):
        z = sigma * rng.standard_normal((min(50_000, N_SAMPLES - start), dim))
        z[:, 0] += centre_x - c
        inside = np.einsum("ij,ij->i", z, z) <= rho2
        hits += int(np.count_nonzero(inside if ball else ~inside))
    return hits


@pytest.mark.parametrize(
    "dim,sigma0,sigma1,distance,p_a",
    [
        (10, 0.5, 0.6, 0.4, 0.9),  # ball
        (10, 0.5, 0.42, 0.3, 0.8),  # complement of a ball
        (100, 0.25, 0.26, 0.1, 0.95),  # ball, high dimension
        (100, 0.25, 0.245, 0.05, 0.99),  # complement, high dimension
        (100, 1.0, 1.01, 0.8, 0.9),  # s1 close to s0: the integral route, a large ball
    ],
)
def test_worst_case_set_attains_the_formula(dim: int, sigma0: float, sigma1: float,
                                            distance: float, p_a: float) -> None:
    rng = np.random.default_rng(20190101 + dim)
    km1 = sigma1**2 / sigma0**2 - 1
    ball = km1 > 0
    # Neyman-Pearson set: ball around c e1, c = -d s0^2 / (s1^2 - s0^2); its radius from scipy's
    # non-central chi-square quantile (independent of smoothviz).
    c = -distance * sigma0**2 / (sigma1**2 - sigma0**2)
    lam0 = (c / sigma0) ** 2
    q = stats.ncx2.ppf(p_a if ball else 1 - p_a, dim, lam0)
    rho2 = q * sigma0**2

    formula = float(bounds.worst_case_probability(sigma0, sigma1, distance, p_a, dim))
    integral_route = lam0 >= bounds._ROUTE_FACTOR * max(1.0, (sigma1 / sigma0) ** 2) * (dim + 30)
    assert integral_route == (sigma1 == 1.01)  # the cases cover both routes

    k0 = _fraction_in_set(rng, 0.0, sigma0, c, rho2, ball, dim)
    lo, hi = _two_sided_interval(k0, N_SAMPLES)
    assert lo <= p_a <= hi, (k0 / N_SAMPLES, p_a)

    k1 = _fraction_in_set(rng, distance, sigma1, c, rho2, ball, dim)
    lo, hi = _two_sided_interval(k1, N_SAMPLES)
    assert lo <= formula <= hi, (k1 / N_SAMPLES, formula)
