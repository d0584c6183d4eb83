"""Independent high-precision (mpmath) reference for the two-Gaussian worst case.

Written from the definitions, sharing no code with smoothviz.bounds:
- moderate non-centrality: the non-central chi-square CDF as a Poisson mixture of central
  chi-square CDFs (regularised incomplete gamma, summed by its exact recurrence), the quantile by
  mpmath.findroot;
- huge non-centrality (s1/s0 close to 1): the exact 1-D integral over w = ||v||^2 ~ chi2(N-1)
  of the normal probability of the u-interval cut out by the ball, with mpmath.quad; all
  formulas are the naive ones, made safe by working at 50 significant digits.

Run ``python tests/mp_reference.py`` to regenerate tests/reference/bounds_reference.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mpmath as mp

DPS = 50
POISSON_MAX_LAM = mp.mpf(20000)
FIXTURE = Path(__file__).parent / "reference" / "bounds_reference.json"


def ncx2_cdf_poisson(x: mp.mpf, dof: int, lam: mp.mpf) -> mp.mpf:
    """P(ncx2(dof, lam) <= x) = sum_j Pois(j; lam/2) P(dof/2 + j, x/2)."""
    if x <= 0:
        return mp.mpf(0)
    half = lam / 2
    sd = mp.sqrt(half) if half > 0 else mp.mpf(0)
    j0 = max(0, int(mp.floor(half - 20 * sd - 20)))
    j1 = int(mp.ceil(half + 20 * sd + 40))
    a = mp.mpf(dof) / 2 + j0
    y = x / 2
    gam = mp.gammainc(a, 0, y, regularized=True)  # P(a, y)
    # term(a) = y^a e^-y / Gamma(a + 1); P(a + 1, y) = P(a, y) - term(a).
    term = mp.exp(a * mp.log(y) - y - mp.loggamma(a + 1))
    weight = mp.exp(-half + j0 * mp.log(half) - mp.loggamma(j0 + 1)) if half > 0 else mp.mpf(1)
    total = mp.mpf(0)
    for j in range(j0, j1 + 1):
        total += weight * gam
        if half == 0:
            break
        gam -= term
        term *= y / (a + 1)
        a += 1
        weight *= half / (j + 1)
    return total


def _chi2_pdf(w: mp.mpf, k: int) -> mp.mpf:
    if w <= 0:
        return mp.mpf(0)
    h = mp.mpf(k) / 2
    return mp.exp((h - 1) * mp.log(w) - w / 2 - h * mp.log(2) - mp.loggamma(h))


def _chi2_sf(w: mp.mpf, k: int) -> mp.mpf:
    return mp.gammainc(mp.mpf(k) / 2, w / 2, mp.inf, regularized=True)


def set_prob_integral(rho2: mp.mpf, c1: mp.mpf, ball: bool, shift: mp.mpf, scale: mp.mpf,
                      dim: int) -> mp.mpf:
    """P((u - c1)^2 + w <= rho2) (ball) or its complement, u ~ N(shift, scale^2),
    w / scale^2 ~ chi2(dim - 1), by quadrature over w' = w / scale^2."""

    def cond(wp: mp.mpf) -> mp.mpf:
        rest = rho2 - scale**2 * wp
        if rest <= 0:
            return mp.mpf(0) if ball else mp.mpf(1)
        half = mp.sqrt(rest)
        inside = mp.ncdf((c1 + half - shift) / scale) - mp.ncdf((c1 - half - shift) / scale)
        return inside if ball else 1 - inside

    if dim == 1:
        return cond(mp.mpf(0))
    k = dim - 1
    edge = rho2 / scale**2  # beyond it the conditional probability is constant
    sd = mp.sqrt(2 * k)
    pts = {mp.mpf(0)}
    for z in (-12, -6, -3, 0, 3, 6, 12, 24, 48):
        p = k + z * sd
        if 0 < p:
            pts.add(p)
    pts.add(k + 48 * sd + 200)
    pts = sorted(p for p in pts if p < edge) + [min(edge, k + 48 * sd + 200)]
    total = mp.quad(lambda wp: _chi2_pdf(wp, k) * cond(wp), pts)
    if not ball and edge < k + 48 * sd + 200:
        total += _chi2_sf(edge, k)
    return total


def worst_case(sigma0: float, sigma1: float, distance: float, p_a: float, dim: int) -> float:
    """Smallest P1(S) over sets with P0(S) = p_a (Neyman-Pearson), as a float."""
    with mp.workdps(DPS):
        s0, s1, d, p = (mp.mpf(v) for v in (sigma0, sigma1, distance, p_a))
        if p >= 1:
            return 1.0
        kappa = s1 / s0
        delta = d / s0
        km1 = kappa**2 - 1
        if km1 == 0:
            return float(mp.ncdf(mp.sqrt(2) * mp.erfinv(2 * p - 1) - delta))
        ball = km1 > 0
        lam0 = (delta / km1) ** 2
        lam1 = kappa**2 * lam0
        if lam0 <= POISSON_MAX_LAM:
            target = p if ball else 1 - p
            q = _findroot_increasing(lambda x: ncx2_cdf_poisson(x, dim, lam0) - target,
                                     mp.mpf(dim) + lam0, mp.sqrt(2 * dim + 4 * lam0))
            val = ncx2_cdf_poisson(q / kappa**2, dim, lam1)
            return float(val if ball else 1 - val)
        m = delta / abs(km1)
        c1 = -m if ball else m
        sgn = 1 if ball else -1

        def p0(h: mp.mpf) -> mp.mpf:
            rho2 = m**2 + 2 * sgn * m * h
            return set_prob_integral(rho2, c1, ball, mp.mpf(0), mp.mpf(1), dim)

        h = _findroot_increasing(lambda h: p0(h) - p,
                                 mp.sqrt(2) * mp.erfinv(2 * p - 1) + sgn * (dim - 1) / (2 * m),
                                 mp.mpf(1))
        rho2 = m**2 + 2 * sgn * m * h
        return float(set_prob_integral(rho2, c1, ball, delta, kappa, dim))


def _findroot_increasing(f, x0: mp.mpf, scale: mp.mpf) -> mp.mpf:
    """Root of an increasing function: bracket from x0 by steps of scale, then Illinois."""
    a, b = x0 - scale, x0 + scale
    fa, fb = f(a), f(b)
    while fa > 0:
        a, fa = a - 4 * (b - a), f(a - 4 * (b - a))
    while fb < 0:
        b, fb = b + 4 * (b - a), f(b + 4 * (b - a))
    side = 0
    for _ in range(400):
        x = b - fb * (b - a) / (fb - fa)
        if not a < x < b:
            x = (a + b) / 2
        fx = f(x)
        if abs(fx) < mp.mpf(10) ** -35 or b - a < abs(x) * mp.mpf(10) ** -40:
            break
        if fx > 0:
            b, fb = x, fx
            if side == -1:
                fa /= 2
            side = -1
        else:
            a, fa = x, fx
            if side == 1:
                fb /= 2
            side = 1
    assert abs(fx) < mp.mpf(10) ** -25, "reference root-find did not converge"
    return x


def reference_points() -> list[dict]:
    """The spread of (dim, s1/s0, p_a, distance) the accuracy test covers."""
    pts = []
    dims = [2, 10, 100, 784, 3072]
    ratios = [1 + e for e in (1e-6, 1e-4, 1e-2, 0.1, 0.5)] + [1 - e for e in (1e-6, 1e-4, 1e-2,
                                                                            0.1, 0.5)]
    pas = [0.5, 0.6, 0.9, 0.999, 1 - 1e-5]
    dists = [0.0, 0.05, 0.3, 1.0, 2.5]
    i = 0
    for dim in dims:
        for ratio in ratios:
            # a deterministic spread: each (dim, ratio) pair gets two (p_a, distance) combinations
            for _ in range(2):
                pa = pas[i % len(pas)]
                d = dists[(i * 3 + i // 5) % len(dists)]
                pts.append({"sigma0": 0.5, "sigma1": 0.5 * ratio, "distance": d, "p_a": pa,
                            "dim": dim})
                i += 1
    return pts


def main() -> int:
    rows = []
    for k, pt in enumerate(reference_points()):
        val = worst_case(pt["sigma0"], pt["sigma1"], pt["distance"], pt["p_a"], pt["dim"])
        rows.append({**pt, "worst": val})
        print(k, pt, val, file=sys.stderr, flush=True)
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
