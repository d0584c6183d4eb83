"""smoothviz.bounds at the edges of double precision: tiny and huge sigmas, ratios and distances.

The worst case depends only on sigma1/sigma0 and distance/sigma0, the radius only on r * sigma0
(times sigma0). Extreme inputs must give finite, correct values without numpy warnings, or be
refused in one line when the ratio itself is not a representable double. Correctness is checked
against the mpmath reference (tests/mp_reference.py) and, where the values are far below what
that reference resolves, against an exact one-dimensional mpmath computation written here.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import warnings
from pathlib import Path

import mp_reference as ref
import mpmath as mp
import numpy as np
import pytest

from smoothviz import bounds
from smoothviz.errors import InvalidArgument

ROOT = Path(__file__).resolve().parents[1]
NORMAL_MIN = float(np.finfo(float).tiny)
HUGE = float(np.finfo(float).max)


def _worst_1d_exact(kappa: float, delta: float, p_a: float, dps: int = 80) -> mp.mpf:
    """Worst case in dimension 1, from the definition: the least-P1 set of P0-mass p_a is the
    interval [c - rho, c + rho] (kappa > 1) or its complement (kappa < 1), c = -delta/(kappa^2 - 1)."""
    with mp.workdps(dps):
        k, d, p = mp.mpf(kappa), mp.mpf(delta), mp.mpf(p_a)
        c = -d / (k * k - 1)
        ball = k > 1
        target = p if ball else 1 - p

        def mass(rho: mp.mpf) -> mp.mpf:
            return mp.ncdf(c + rho) - mp.ncdf(c - rho)

        lo, hi = mp.mpf(0), abs(c) + 60
        for _ in range(4 * dps):  # bisection to the working precision (mpmath's exponent has no floor)
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if mass(mid) < target else (lo, mid)
        rho = (lo + hi) / 2
        upper, lower = (c + rho - d) / k, (c - rho - d) / k
        if ball:
            return mp.ncdf(upper) - mp.ncdf(lower)
        return mp.ncdf(lower) + mp.ncdf(-upper)


def test_extreme_inputs_are_finite_or_refused_and_warn_nothing() -> None:
    """Sigmas and distances across the whole double range: a value in [0, 1], or a refusal naming
    the ratio exactly when that ratio is not a normal double."""
    sigmas = [NORMAL_MIN, 1e-150, 0.25, 1e150, HUGE]
    distances = [0.0, NORMAL_MIN, 0.1, 1e300, HUGE]
    p = np.array([1e-300, 0.1, 0.5, 0.9, 1 - 1e-16, 1.0])[:, None]
    dims = np.array([1, 2, 3072, bounds.DIM_MAX])[None, :]
    refused = computed = 0
    for s0, s1, d in itertools.product(sigmas, sigmas, distances):
        representable = NORMAL_MIN <= s1 / s0 < np.inf and d / s0 < np.inf
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                got = bounds.worst_case_probability(s0, s1, d, p, dims)
            except InvalidArgument as exc:
                assert not representable, (s0, s1, d, str(exc))
                assert "/sigma0" in str(exc) and "\n" not in str(exc)
                refused += 1
                continue
        assert representable, (s0, s1, d)
        assert np.all(np.isfinite(got)) and np.all((got >= 0) & (got <= 1)), (s0, s1, d, got)
        assert np.all(got[-1] == 1.0)  # p_a = 1: the whole space
        computed += 1
    assert refused > 0 and computed > refused


@pytest.mark.parametrize("name,args", [
    ("sigma0", (1e-320, 0.26, 0.1, 0.9, 3072)),
    ("sigma1", (0.25, 5e-324, 0.1, 0.9, 3072)),
    ("distance", (0.25, 0.26, 1e-310, 0.9, 3072)),
])
def test_subnormal_inputs_are_refused(name: str, args: tuple) -> None:
    with pytest.raises(InvalidArgument, match=f"{name} = .* subnormal"):
        bounds.worst_case_probability(*args)


def test_huge_dimensions_are_refused_not_overflowed() -> None:
    for dim in (bounds.DIM_MAX + 1, 9223372036854775808, 1180591620717411303424, 1e300):
        with pytest.raises(InvalidArgument, match="dim"):
            bounds.worst_case_probability(0.25, 0.26, 0.1, 0.9, dim)
        with pytest.raises(InvalidArgument, match="dim"):
            bounds.input_dependent_radius(0.9, 0.25, 0.1, dim)


@pytest.mark.parametrize("scale", [1e-300, 1e-150, 1e150, 1e300])
def test_only_the_ratios_matter(scale: float) -> None:
    s1 = np.array([0.25, 0.26, 0.2, 0.27, 0.1])
    d = np.array([0.1, 0.0, 0.2, 0.3, 0.05])
    p = np.array([0.9, 0.99, 0.6, 0.999, 0.7])
    dims = np.array([3072, 10, 1, 50, 2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = bounds.worst_case_probability(0.25, s1, d, p, dims)
        scaled = bounds.worst_case_probability(0.25 * scale, s1 * scale, d * scale, p, dims)
        r_plain = bounds.input_dependent_radius(p, 0.25, 0.1, dims)
        r_scaled = bounds.input_dependent_radius(p, 0.25 * scale, 0.1 / scale, dims)
    assert plain.min() > 1e-6  # not trivially zero
    np.testing.assert_allclose(scaled, plain, rtol=0, atol=1e-14)
    np.testing.assert_allclose(r_scaled / scale, r_plain, rtol=1e-12)


# (sigma1/sigma0, distance/sigma0, p_a, dim): ratios far from 1, values the reference resolves
MP_POINTS = [
    (3.0, 2.0, 0.9, 2), (3.0, 1e-8, 0.5, 1), (1e3, 0.0, 0.9, 2), (1e3, 50.0, 0.5, 1),
    (1e3, 2.0, 0.9, 2), (1e8, 50.0, 0.9, 1), (1e8, 0.0, 0.5, 1),
]


@pytest.mark.parametrize("kappa,delta,p_a,dim", MP_POINTS)
def test_far_ratios_match_mpmath(kappa: float, delta: float, p_a: float, dim: int) -> None:
    want = ref.worst_case(1.0, kappa, delta, p_a, dim)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = float(bounds.worst_case_probability(1.0, kappa, delta, p_a, dim))
    assert want > 1e-9
    assert got == pytest.approx(want, rel=1e-9, abs=1e-15)


def test_tiny_worst_cases_match_the_exact_one_dimensional_value() -> None:
    """Dimension 1 at 80 digits: values agree to 1e-14 (absolute, as everywhere), and wherever the
    cut-off for provably negligible cases applies the exact value is indeed below 1e-300."""
    rng = np.random.default_rng(5)
    cut = kept_small = 0
    for _ in range(40):
        kappa = float(10.0 ** rng.uniform(-12, 12))
        delta = float(10.0 ** rng.uniform(-2, 3))
        p_a = float(rng.choice([1e-12, 0.3, 0.5, 0.9, 1 - 1e-9]))
        exact = _worst_1d_exact(kappa, delta, p_a)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            got = float(bounds.worst_case_probability(1.0, kappa, delta, p_a, 1))
            negligible = bool(bounds._negligible(np.array([kappa]), np.array([(kappa - 1) * (kappa + 1)]),
                                                 np.array([delta]), np.array([p_a]), np.array([1]))[0])
        assert abs(got - float(exact)) <= 1e-14, (kappa, delta, p_a, got, exact)
        if negligible:
            assert exact < mp.mpf("1e-300"), (kappa, delta, p_a, exact)
            cut += 1
        else:
            kept_small += exact < 1e-6
    assert cut > 3 and kept_small > 3  # both regimes were exercised


def test_radius_extremes_are_finite_or_refused() -> None:
    cases = [
        ((0.99, 1e-300, 0.1, 3072), None), ((0.99, 1e300, 1e-301, 3072), None),
        ((0.5 + 1e-12, 0.25, 1.0, 1), None), ((1 - 1e-16, 0.25, 0.0, bounds.DIM_MAX), None),
        ((0.99, 5e-324, 0.0, 10), "subnormal"),
        ((0.99, HUGE, 0.0, 10), "beyond double precision"),
        ((0.6, 1e300, 1e10, 1), "r \\* sigma0"),
    ]
    for args, refusal in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            if refusal:
                with pytest.raises(InvalidArgument, match=refusal):
                    bounds.input_dependent_radius(*args)
                continue
            got = float(bounds.input_dependent_radius(*args))
        p, s0 = args[:2]
        assert 0 < got <= float(bounds.cohen_radius(p, s0)) * (1 + 1e-12) and np.isfinite(got), args


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "smoothviz", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)


def test_cli_extremes_print_finite_values_and_no_warnings() -> None:
    """One subprocess per verb: numpy or scipy warnings would reach stderr."""
    res = _cli("bound", "--sigma0", "1e-150", "--sigma1", "1e150", "--distance", "1e-300", "--pa",
               "0.999999", "--dim", "1")
    assert res.returncode == 0 and res.stderr == "", res.stderr
    value = json.loads(res.stdout)["bound"]
    assert 0.0 <= value < 1e-290  # an interval ~1e-150 sigma0 wide under N(x1, (1e300 sigma0)^2)
    res = _cli("radius", "--pa", "0.9999", "--sigma0", "1e300", "--r", "1e-300", "--dim", "100000000",
               "--naive")
    assert res.returncode == 0 and res.stderr == "", res.stderr
    out = json.loads(res.stdout)
    assert np.isfinite(out["radius"]) and 0 < out["radius"] <= out["naive_radius"]
