"""smoothviz.bounds against independent high-precision references (mpmath) and scipy."""

from __future__ import annotations

import json
import random

import mpmath as mp
import numpy as np
import pytest
from scipy import stats

import mp_reference as ref
from smoothviz import bounds

FIXTURE = json.loads(ref.FIXTURE.read_text())


def _worst(row: dict) -> float:
    return float(bounds.worst_case_probability(row["sigma0"], row["sigma1"], row["distance"],
                                               row["p_a"], row["dim"]))


def test_fixture_covers_the_required_spread() -> None:
    ratios = {round(r["sigma1"] / r["sigma0"] - 1, 12) for r in FIXTURE}
    for e in (1e-6, 1e-4, 1e-2, 0.1, 0.5):
        assert round(e, 12) in ratios and round(-e, 12) in ratios
    assert {r["dim"] for r in FIXTURE} >= {2, 3072}
    assert min(r["p_a"] for r in FIXTURE) == 0.5
    assert max(r["p_a"] for r in FIXTURE) == 1 - 1e-5
    assert len({r["distance"] for r in FIXTURE}) >= 4
    assert len(FIXTURE) >= 80


def test_worst_case_matches_mpmath_fixture_to_1e9() -> None:
    got = bounds.worst_case_probability(
        np.array([r["sigma0"] for r in FIXTURE]), np.array([r["sigma1"] for r in FIXTURE]),
        np.array([r["distance"] for r in FIXTURE]), np.array([r["p_a"] for r in FIXTURE]),
        np.array([r["dim"] for r in FIXTURE]))
    want = np.array([r["worst"] for r in FIXTURE])
    assert np.all(np.isfinite(got))
    err = np.abs(got - want)
    worst_row = FIXTURE[int(np.argmax(err))]
    assert err.max() <= 1e-9, (err.max(), worst_row)
    # one at a time gives the same numbers as the vectorised call
    for row, g in zip(FIXTURE[::9], got[::9]):
        assert _worst(row) == pytest.approx(g, abs=1e-15)


@pytest.mark.slow
def test_fixture_is_what_the_reference_computes() -> None:
    """Recompute a few fixture rows live (both reference routes), so the fixture cannot drift."""
    rng = random.Random(7)
    huge = [r for r in FIXTURE if abs(r["sigma1"] / r["sigma0"] - 1) < 2e-6 and r["distance"] > 0]
    moderate = [r for r in FIXTURE if abs(r["sigma1"] / r["sigma0"] - 1) > 0.05]
    for row in rng.sample(huge, 1) + rng.sample(moderate, 4):
        live = ref.worst_case(row["sigma0"], row["sigma1"], row["distance"], row["p_a"],
                              row["dim"])
        assert live == pytest.approx(row["worst"], abs=1e-14)


def test_reference_routes_agree_with_each_other() -> None:
    """The Poisson mixture and the quadrature route of the reference agree where both apply."""
    with mp.workdps(30):
        dim, kappa, delta = 10, mp.mpf("1.05"), mp.mpf("0.4")
        km1 = kappa**2 - 1
        m = delta / km1
        lam0 = m**2
        rho2 = lam0 + dim + mp.mpf(3)
        poisson = ref.ncx2_cdf_poisson(rho2, dim, lam0)
        quad = ref.set_prob_integral(rho2, -m, True, mp.mpf(0), mp.mpf(1), dim)
        assert abs(poisson - quad) < mp.mpf(10) ** -20
        lam1 = kappa**2 * lam0
        p1 = ref.ncx2_cdf_poisson(rho2 / kappa**2, dim, lam1)
        q1 = ref.set_prob_integral(rho2, -m, True, delta, kappa, dim)
        assert abs(p1 - q1) < mp.mpf(10) ** -20


@pytest.mark.parametrize("dim", [2, 50, 3072])
@pytest.mark.parametrize("kappa", [1.02, 0.98, 1.3, 0.7])
def test_both_routes_agree_where_both_are_accurate(dim: int, kappa: float) -> None:
    """Non-centralities between the switch point and ~1e5, where scipy's ncx2 is still exact."""
    km1 = kappa**2 - 1
    lam_switch = bounds._ROUTE_FACTOR * max(1.0, kappa**2) * (dim + 30)
    lam0 = np.geomspace(lam_switch, max(2 * lam_switch, 1e5), 4)
    delta = np.sqrt(lam0) * abs(km1)
    for p_a in (0.5, 0.8, 0.999):
        args = (np.full(4, kappa), np.full(4, km1), delta, np.full(4, p_a))
        a = bounds._worst_integral(*args, dim)
        b = bounds._worst_ncx2(*args, dim)
        assert np.all(np.abs(a - b) <= 1e-11), (a, b)


def _upper_binomial_tail(k: int, n: int, x: mp.mpf) -> mp.mpf:
    """P(Bin(n, x) >= k) = I_x(k, n - k + 1) as the exact finite sum (term ratio recurrence)."""
    term = mp.binomial(n, k) * x**k * (1 - x) ** (n - k)
    total = mp.mpf(0)
    for i in range(k, n + 1):
        total += term
        term *= mp.mpf(n - i) / (i + 1) * x / (1 - x)
    return total


def test_clopper_pearson_matches_mpmath_beta_inversion() -> None:
    cases = [(1, 10, 0.05), (7, 10, 0.001), (99, 100, 0.001), (100, 100, 0.001),
             (500, 1000, 0.01), (99990, 100000, 0.001), (100000, 100000, 0.001)]
    k, n, a = (np.array(v) for v in zip(*cases))
    got = bounds.clopper_pearson_lower(k, n, a)
    with mp.workdps(40):
        for (kk, nn, aa), g in zip(cases, got):
            lo, hi = mp.mpf(0), mp.mpf(1)  # bisection on the increasing Beta CDF
            for _ in range(120):
                mid = (lo + hi) / 2
                if _upper_binomial_tail(kk, nn, mid) < aa:
                    lo = mid
                else:
                    hi = mid
            want = lo
            assert float(want) == pytest.approx(g, rel=1e-10, abs=1e-14)
            # the bound is one-sided: P(Bin(n, L) >= k) = alpha
            assert float(_upper_binomial_tail(kk, nn, mp.mpf(g))) == pytest.approx(aa, rel=1e-8)
    assert bounds.clopper_pearson_lower(0, 100, 0.001) == 0.0
    # all n samples voting A give exactly alpha^(1/n)
    assert bounds.clopper_pearson_lower(1000, 1000, 0.001) == pytest.approx(0.001 ** (1 / 1000),
                                                                              rel=1e-13)
    assert bounds.clopper_pearson_lower(np.array([[3], [8]]), 10, 0.01).shape == (2, 1)


def test_binomial_test_matches_scipy_and_mpmath_exact_sum() -> None:
    cases = [(0, 0), (5, 5), (7, 3), (3, 7), (60, 40), (1000, 0), (0, 1), (520, 480),
             (2100, 1900)]
    a, b = (np.array(v) for v in zip(*cases))
    got = bounds.binomial_test_pvalue(a, b)
    for (ca, cb), g in zip(cases, got):
        n = ca + cb
        if n:
            assert g == pytest.approx(stats.binomtest(ca, n, 0.5).pvalue, rel=1e-9, abs=1e-300)
        with mp.workdps(40):
            if n == 0:
                exact = mp.mpf(1)
            else:
                pk = mp.binomial(n, ca) / mp.mpf(2) ** n
                exact = mp.fsum(mp.binomial(n, i) / mp.mpf(2) ** n for i in range(n + 1)
                                if mp.binomial(n, i) / mp.mpf(2) ** n <= pk)
            assert g == pytest.approx(float(min(1, exact)), rel=1e-9)


def test_cohen_radii_against_mpmath() -> None:
    with mp.workdps(30):
        for p in (0.51, 0.9, 0.999999):
            z = mp.sqrt(2) * mp.erfinv(2 * mp.mpf(p) - 1)
            assert bounds.cohen_radius(p, 0.25) == pytest.approx(float(0.25 * z), rel=1e-13)
            zb = mp.sqrt(2) * mp.erfinv(2 * mp.mpf(0.05) - 1)
            assert bounds.cohen_radius_two_sided(p, 0.05, 0.5) == pytest.approx(
                float(0.25 * (z - zb)), rel=1e-13)
    assert bounds.naive_radius(0.9, 0.5) == bounds.cohen_radius(0.9, 0.5)
    assert "NOT a guarantee" in bounds.naive_radius.__doc__


def test_waterfall_ceiling_against_mpmath() -> None:
    with mp.workdps(40):
        want = 0.25 * mp.sqrt(2) * mp.erfinv(2 * mp.mpf("0.001") ** (mp.mpf(1) / 100000) - 1)
    assert bounds.waterfall_ceiling(0.25, 100000, 0.001) == pytest.approx(float(want), rel=1e-12)
    # 3.8 sigma at n = 1e5, alpha = 1e-3
    assert bounds.waterfall_ceiling(1.0, 1e5, 1e-3) == pytest.approx(3.8, abs=0.02)
    assert bounds.waterfall_ceiling(0.5, 100, 0.001) == pytest.approx(
        float(bounds.cohen_radius(bounds.clopper_pearson_lower(100, 100, 0.001), 0.5)), rel=1e-10)
