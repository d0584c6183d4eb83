"""Certificate mathematics for randomized smoothing, vectorised over arrays of points.

Constant sigma: Cohen, Rosenfeld, Kolter, "Certified adversarial robustness via randomized
smoothing", ICML 2019. Input-dependent sigma: Sukenik, Kuvshinov, Guennemann, "Intriguing
properties of input-dependent randomized smoothing", ICML 2022 (Neyman-Pearson comparison of
N(x0, s0^2 I) with N(x1, s1^2 I): the worst-case set is a ball or a ball's complement).

Every public function takes numbers or arrays and broadcasts them like numpy ufuncs; scalars in
give numpy scalars (0-d results) out. Only numpy and scipy are used.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import linalg, special, stats

from smoothviz.errors import InvalidArgument

__all__ = [
    "admissible_sigma_band",
    "binomial_test_pvalue",
    "clopper_pearson_lower",
    "cohen_radius",
    "cohen_radius_two_sided",
    "input_dependent_radius",
    "max_certified_radius",
    "max_semi_elasticity",
    "naive_radius",
    "waterfall_ceiling",
    "worst_case_probability",
]

Array = NDArray[np.float64]

# Gauss nodes for the expectation over the central chi-square part of the integral route.
_N_NODES = 32
# The integral route is used where lam0 >= _ROUTE_FACTOR * max(1, kappa^2) * (dim + 30): there
# the ball's boundary is far from the chi-square bulk, so the integrand is smooth (analytic) over
# all the probability mass and Gauss quadrature converges to machine precision. Below it scipy's
# ncx2 (Boost) is accurate to ~1e-13 since lam stays below ~7 (dim + 30). The two routes agree
# to ~1e-14 from the switch up to lam ~ 1e5 (tests/test_bounds_reference.py).
_ROUTE_FACTOR = 3.0
# The certified radius keeps the worst case above 1/2 + _CERT_MARGIN: a few hundred ulps, above
# the rounding error of the evaluation, so that rounding never makes an uncertified radius look
# certified. At r = 0 it moves Cohen's radius by about 1e-13 * sigma0.
_CERT_MARGIN = 5e-14


def _out(x: Array) -> Array:
    """Return 0-d arrays as numpy scalars, others unchanged."""
    return x[()] if x.ndim == 0 else x


# ---------------------------------------------------------------------------------------------
# Monte Carlo statistics (Cohen et al. 2019, Section 3.2: CERTIFY and PREDICT)
# ---------------------------------------------------------------------------------------------


def clopper_pearson_lower(k: ArrayLike, n: ArrayLike, alpha: ArrayLike) -> Array:
    """One-sided (1 - alpha) Clopper-Pearson lower confidence bound of a binomial proportion k/n."""
    k, n, alpha = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (k, n, alpha)))
    with np.errstate(invalid="ignore"):
        low = stats.beta.ppf(alpha, k, n - k + 1.0)
    return _out(np.where(k <= 0, 0.0, low))


def binomial_test_pvalue(count_a: ArrayLike, count_b: ArrayLike) -> Array:
    """Two-sided exact binomial test p-value of count_a successes in count_a + count_b at p = 1/2.

    For p = 1/2 the distribution is symmetric, so scipy.stats.binomtest's p-value equals
    min(1, 2 * P(X <= min(a, b))) (Cohen et al. 2019, PREDICT, abstains when this exceeds alpha).
    """
    a, b = np.broadcast_arrays(np.asarray(count_a, dtype=float), np.asarray(count_b, dtype=float))
    n = a + b
    p = np.minimum(1.0, 2.0 * stats.binom.cdf(np.minimum(a, b), n, 0.5))
    return _out(np.where(a == b, 1.0, p))


# ---------------------------------------------------------------------------------------------
# Constant-sigma radii (Cohen et al. 2019, Theorem 1)
# ---------------------------------------------------------------------------------------------


def cohen_radius(p_a: ArrayLike, sigma: ArrayLike) -> Array:
    """Cohen's certified L2 radius sigma * Phi^-1(p_a) (<= 0 where p_a <= 1/2: callers abstain)."""
    return _out(np.asarray(sigma, dtype=float) * special.ndtri(np.asarray(p_a, dtype=float)))


def cohen_radius_two_sided(p_a: ArrayLike, p_b: ArrayLike, sigma: ArrayLike) -> Array:
    """Cohen's two-sided radius sigma/2 * (Phi^-1(p_a) - Phi^-1(p_b)) (Theorem 1)."""
    p_a = np.asarray(p_a, dtype=float)
    p_b = np.asarray(p_b, dtype=float)
    return _out(0.5 * np.asarray(sigma, dtype=float) * (special.ndtri(p_a) - special.ndtri(p_b)))


def naive_radius(p_a: ArrayLike, sigma0: ArrayLike) -> Array:
    """sigma(x0) * Phi^-1(p_a): NOT a guarantee when sigma depends on the input.

    This is the certificate earlier input-dependent smoothing works reported; Sukenik et al. 2022
    show it can certify points that are not robust. Kept for comparison only.
    """
    return cohen_radius(p_a, sigma0)


def waterfall_ceiling(sigma: ArrayLike, n: ArrayLike, alpha: ArrayLike) -> Array:
    """sigma * Phi^-1(alpha^(1/n)): the largest radius a run with n samples at level alpha reports.

    With all n samples voting A the Clopper-Pearson bound is exactly alpha^(1/n).
    """
    sigma, n, alpha = (np.asarray(v, dtype=float) for v in (sigma, n, alpha))
    # Phi^-1(1 - q) = -Phi^-1(q) with q = 1 - alpha^(1/n) = -expm1(log(alpha)/n), no cancellation.
    return _out(-sigma * special.ndtri(-np.expm1(np.log(alpha) / n)))


# ---------------------------------------------------------------------------------------------
# Two-Gaussian worst case (Sukenik et al. 2022, Theorem 2 and Appendix; Neyman-Pearson lemma)
# ---------------------------------------------------------------------------------------------
#
# Work in units of sigma0: x0 = 0, x1 = delta e1, P0 = N(0, I), P1 = N(delta e1, kappa^2 I) with
# kappa = s1/s0, delta = d/s0. The likelihood ratio p1/p0 is monotone in ||z - c|| with
# c = -delta/(kappa^2 - 1) e1 (so |c| = m = delta/|kappa^2 - 1|): the least-P1 set of P0-mass p_a
# is the ball around c when kappa > 1 and the complement of a ball around c when kappa < 1.
#
# Route "ncx2": ||z - c||^2 under P0 is ncx2(N, lam0 = m^2); (||z - c||/kappa)^2 under P1 is
# ncx2(N, lam1 = kappa^2 m^2). Accurate while lam is moderate.
#
# Route "integral": split z = (u, v) along e1; w = ||v||^2 ~ chi2(N-1) independent of u. For each
# w the set is an interval (or two half-lines) in u, so P = E_w[Phi terms]. Parametrise the radius
# as rho^2 = m^2 + 2 s m eta (s = +1 ball, -1 complement) and write mu = 1/m; the inner edge is
#   t(w) = (2 eta - s w mu) / (1 + sqrt(1 + 2 s eta mu - w mu^2)),
# free of cancellation and finite as mu -> 0, where it tends to eta: Cohen's half-space.


@lru_cache(maxsize=64)
def _chi2_nodes(dof: int, n: int) -> tuple[Array, Array]:
    """Gauss rule for E[h(W)], W ~ chi2(dof): nodes and weights summing to one (Golub-Welsch)."""
    if dof == 0:
        return np.zeros(1), np.ones(1)
    a = dof / 2.0 - 1.0  # generalised Laguerre weight x^a e^-x with x = W/2
    k = np.arange(n, dtype=float)
    x, vec = linalg.eigh_tridiagonal(2.0 * k + a + 1.0, np.sqrt(k[1:] * (k[1:] + a)))
    w = vec[0] ** 2
    return 2.0 * x, w / w.sum()


def _set_prob(eta: Array, mu: Array, s: Array, w: Array, shift: Array, scale: Array) -> Array:
    """P(S) under N(shift e1, scale^2 I) of the NP set with parameter eta, at chi-square nodes w.

    eta, mu, s, shift, scale have shape (P, 1); w has shape (P, n) (already multiplied by
    scale^2). Returns shape (P, n): the conditional probability given ||v||^2 = w.
    """
    b = 1.0 + 2.0 * s * eta * mu - w * mu * mu
    inside = b >= 0.0
    t = (2.0 * eta - s * w * mu) / (1.0 + np.sqrt(np.where(inside, b, 0.0)))
    with np.errstate(divide="ignore"):
        two_m = 2.0 / mu
    ball = s > 0
    # ball: S = {-2m - t < u < t}; complement of a ball: S = {u < t} | {u > 2m - t}
    main = special.ndtr((t - shift) / scale)
    far = np.where(ball, -special.ndtr((-two_m - t - shift) / scale),
                   special.ndtr((t - two_m + shift) / scale))
    return np.where(inside, main + far, np.where(ball, 0.0, 1.0))


def _p0_residual(eta: Array, mu: Array, s: Array, w: Array, p_a: Array, upper: Array
                 ) -> tuple[Array, Array]:
    """Residual of P0(S(eta)) = p_a and its eta-derivative, shapes (P,); one pass over the nodes.

    Where p_a > 1/2 the residual is (1 - p_a) - P0(not S): Phi^-1 is ill-conditioned near 1, so
    the small tail carries the information. Both forms increase with eta.
    """
    b = 1.0 + 2.0 * s * eta * mu - w * mu * mu
    inside = b > 0.0
    root = np.sqrt(np.where(inside, b, 1.0))
    t = (2.0 * eta - s * w * mu) / (1.0 + root)
    with np.errstate(divide="ignore"):
        two_m = 2.0 / mu
    ball = s > 0
    t_far = np.where(ball, -two_m - t, t - two_m)  # S = {t_far < u < t} or {u < t} | {u > -t_far}
    sign = np.where(upper, -1.0, 1.0)
    tail = np.where(ball, -special.ndtr(t_far), special.ndtr(t_far))
    prob = special.ndtr(sign * t) + sign * tail
    empty = np.where(ball, 0.0, 1.0)  # P0(S) when no u qualifies for this w
    prob = np.where(inside, prob, np.where(upper, 1.0 - empty, empty))
    dens = (np.exp(-0.5 * t * t) + np.exp(-0.5 * t_far * t_far)) / np.sqrt(2.0 * np.pi)
    slope = np.where(inside, dens / root, 0.0)
    return prob, slope


def _worst_integral(kappa: Array, km1: Array, delta: Array, p_a: Array, dim: int) -> Array:
    """Integral route for one dimension; arrays of shape (P,), p_a strictly inside (0, 1)."""
    w0, om = _chi2_nodes(dim - 1, _N_NODES)
    kappa, km1, delta, p_a = (v[:, None] for v in (kappa, km1, delta, p_a))
    s = np.where(km1 < 0, -1.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        mu = np.where(km1 == 0.0, 0.0, np.abs(km1) / delta)
    w0 = np.broadcast_to(w0, (kappa.shape[0], w0.size))

    # eta with P0(S) = p_a: safeguarded Newton on a smooth increasing function, started at the
    # first-order expansion t ~ eta - s w mu / 2 around E[w] = dim - 1.
    eta = special.ndtri(p_a) + s * (dim - 1) * mu / 2.0
    upper = p_a > 0.5
    q_a = 1.0 - p_a  # exact for p_a >= 1/2
    lo = np.full_like(eta, -np.inf)
    hi = np.full_like(eta, np.inf)
    active = np.ones(eta.shape[0], dtype=bool)
    idx: slice | Array = slice(None)
    for _ in range(100):
        e = eta[idx]
        prob, slope = _p0_residual(e, mu[idx], s[idx], w0[idx], p_a[idx], upper[idx])
        prob, fp = (prob @ om)[:, None], (slope @ om)[:, None]
        f = np.where(upper[idx], q_a[idx] - prob, prob - p_a[idx])
        l_ = lo[idx] = np.where(f < 0, np.maximum(lo[idx], e), lo[idx])
        h_ = hi[idx] = np.where(f > 0, np.minimum(hi[idx], e), hi[idx])
        with np.errstate(divide="ignore", invalid="ignore"):
            step = np.clip(np.where(fp > 0, f / fp, np.sign(f)), -2.0, 2.0)
        new = e - step
        # converged once the Newton step is at rounding level (before any safeguard acts)
        done = (f == 0) | (np.abs(step) <= 1e-15 * np.maximum(1.0, np.abs(e)))
        outside = ~((new > l_) & (new < h_)) & ~done
        if outside.any():
            both = np.isfinite(l_) & np.isfinite(h_)
            with np.errstate(invalid="ignore"):
                new = np.where(outside & both, 0.5 * (l_ + h_), new)
            new = np.where(outside & ~both, np.where(f < 0, e + 2.0, e - 2.0), new)
        eta[idx] = new
        active[np.flatnonzero(active)[done[:, 0]]] = False
        if not active.any():
            break
        idx = np.flatnonzero(active)

    w1 = kappa * kappa * w0
    return _set_prob(eta, mu, s, w1, delta, kappa) @ om


def _worst_ncx2(kappa: Array, km1: Array, delta: Array, p_a: Array, dim: int) -> Array:
    """Non-central chi-square route (scipy/Boost); requires km1 != 0."""
    lam0 = (delta / km1) ** 2
    with np.errstate(invalid="ignore"):
        lam1 = np.where(np.isfinite(kappa), kappa * kappa * lam0, 0.0)  # -> 0 as kappa -> inf
    ball = km1 > 0
    # Ball: threshold F^-1(p_a) = isf(1 - p_a); complement: F^-1(1 - p_a) = isf(p_a). 1 - p_a is
    # exact for p_a >= 1/2, and isf keeps the small tail's relative precision. One call for both.
    q = stats.ncx2.isf(np.where(ball, 1.0 - p_a, p_a), dim, lam0)
    cdf = special.chndtr(q / (kappa * kappa), dim, lam1)
    return np.where(ball, cdf, 1.0 - cdf)  # absolute precision is what the result needs


def _worst_unit(kappa: Array, km1: Array, delta: Array, p_a: Array, dim: Array) -> Array:
    """Worst case in sigma0 units; km1 = kappa^2 - 1 is passed separately to keep its precision.

    All arguments are 1-D arrays of one length; dim holds integers >= 1.
    """
    out = np.where(p_a >= 1.0, 1.0, 0.0)
    todo = (p_a > 0.0) & (p_a < 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        lam0 = np.where(km1 == 0.0, np.inf, (delta / km1) ** 2)
    integral = lam0 >= _ROUTE_FACTOR * np.maximum(1.0, kappa * kappa) * (dim + 30.0)
    for n in np.unique(dim[todo]):
        for route, fn in ((integral, _worst_integral), (~integral, _worst_ncx2)):
            sel = todo & (dim == n) & route
            if sel.any():
                out[sel] = fn(kappa[sel], km1[sel], delta[sel], p_a[sel], int(n))
    return np.clip(out, 0.0, 1.0)


def _prepare_dim(dim: ArrayLike) -> Array:
    d = np.asarray(dim)
    if not np.all(np.isfinite(d)) or np.any(d < 1) or np.any(d != np.round(d)):
        raise InvalidArgument("dim must hold integers >= 1")
    return d.astype(np.int64)


def _checked(name: str, value: ArrayLike, low: float, low_open: bool, high: float = np.inf,
             ) -> Array:
    """Float array of value, or InvalidArgument naming it when outside its range or NaN."""
    v = np.asarray(value, dtype=float)
    ok = (v > low if low_open else v >= low) & (v <= high) & np.isfinite(v)
    if not np.all(ok):
        bad = v[~ok].ravel()[0] if v.ndim else float(v)
        rng = f"{'(' if low_open else '['}{low:g}, {high:g}{']' if high < np.inf else ')'}"
        raise InvalidArgument(f"{name} = {bad} is outside {rng}")
    return v


def worst_case_probability(
    sigma0: ArrayLike, sigma1: ArrayLike, distance: ArrayLike, p_a: ArrayLike, dim: ArrayLike
) -> Array:
    """Smallest P(f(x1 + N(0, s1^2 I)) = A) over classifiers with P(f(x0 + N(0, s0^2 I)) = A) = p_a.

    ||x1 - x0|| = distance in dimension dim (Sukenik et al. 2022, Theorem 2). Equals Cohen's
    Phi(Phi^-1(p_a) - d/s0) when s1 = s0 and tends to it continuously as s1 -> s0.
    """
    s0 = _checked("sigma0", sigma0, 0.0, True)
    s1 = _checked("sigma1", sigma1, 0.0, True)
    d = _checked("distance", distance, 0.0, False)
    p = _checked("p_a", p_a, 0.0, False, 1.0)
    n = _prepare_dim(dim)
    s0, s1, d, p, n = np.broadcast_arrays(s0, s1, d, p, n)
    shape = s0.shape
    s0, s1, d, p, n = (v.ravel() for v in (s0, s1, d, p, n))
    # kappa^2 - 1 = (s1 - s0)(s1 + s0)/s0^2: s1 - s0 is exact for nearby floats (Sterbenz).
    km1 = (s1 - s0) * (s1 + s0) / (s0 * s0)
    res = _worst_unit(s1 / s0, km1, d / s0, p, n)
    return _out(res.reshape(shape))


# ---------------------------------------------------------------------------------------------
# Input-dependent radius (Sukenik et al. 2022, Theorem 3: semi-elastic sigma)
# ---------------------------------------------------------------------------------------------


def _regula_falsi(
    f: Callable[[Array, Array], Array],
    lo: Array,
    hi: Array,
    f_lo: Array,
    f_hi: Array,
    rtol: float,
    maxiter: int = 200,
) -> tuple[Array, Array]:
    """Vectorised bracketing root-finder (Anderson-Bjorck regula falsi, bisection safeguard).

    f(x, idx) evaluates the function for the points idx at x. Requires f_lo > 0 >= f_hi. Returns
    the final bracket (lo, hi), keeping f(lo) > 0 >= f(hi) throughout.
    """
    lo, hi, f_lo, f_hi = (np.array(v, dtype=float) for v in (lo, hi, f_lo, f_hi))
    side = np.zeros(lo.shape, dtype=np.int8)  # which end was retained last (+1 lo, -1 hi)
    width_before = hi - lo
    for it in range(maxiter):
        width = hi - lo
        active = width > rtol * np.maximum(np.abs(hi), np.abs(lo)) + 1e-300
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        a, b, fa, fb = lo[idx], hi[idx], f_lo[idx], f_hi[idx]
        with np.errstate(divide="ignore", invalid="ignore"):
            x = b - fb * (b - a) / (fb - fa)
        # Stay a quarter tolerance inside the bracket: once one end sits on the root, the next
        # point lands just past it and closes the bracket.
        step = 0.25 * rtol * np.maximum(np.abs(a), np.abs(b)) + 1e-300
        x = np.clip(np.where(np.isfinite(x), x, 0.5 * (a + b)), a + step, b - step)
        # Bisect when the bracket shrinks too slowly.
        bad = (it % 3 == 2) & (width[idx] > 0.5 * width_before[idx])
        x = np.where(bad, 0.5 * (a + b), x)
        if it % 3 == 2:
            width_before[idx] = width[idx]
        fx = f(x, idx)
        pos = fx > 0
        # Anderson-Bjorck: when the same end moves twice, scale the other end's value down.
        with np.errstate(divide="ignore", invalid="ignore"):
            m = np.where(pos, 1.0 - fx / fa, 1.0 - fx / fb)
        m = np.where((m > 0) & ~bad, m, 0.5)
        lo[idx] = np.where(pos, x, a)
        f_lo[idx] = np.where(pos, fx, np.where(side[idx] == 1, m * fa, fa))
        hi[idx] = np.where(pos, b, x)
        f_hi[idx] = np.where(pos, np.where(side[idx] == -1, m * fb, fb), fx)
        side[idx] = np.where(pos, -1, 1)
    return lo, hi


def _radius_margin(
    radius: Array, p_a: Array, sigma0: Array, r: Array, dim: Array
) -> Array:
    """min over s1 = s0 e^{-r R}, s0 e^{+r R} of worst case at distance R, minus 1/2."""
    x = r * radius
    # For huge r * R the band ends reach 0 and inf, where the worst case is 0 (its limit).
    with np.errstate(over="ignore", divide="ignore"):
        kappa = np.concatenate([np.exp(-x), np.exp(x)])
        km1 = np.concatenate([np.expm1(-2.0 * x), np.expm1(2.0 * x)])
        delta = np.tile(radius / sigma0, 2)
        w = _worst_unit(kappa, km1, delta, np.tile(p_a, 2), np.tile(dim, 2))
    return np.minimum(w[: x.size], w[x.size:]) - 0.5 - _CERT_MARGIN


def _radius_flat(p_a: Array, sigma0: Array, r: Array, dim: Array, rtol: float) -> Array:
    out = np.zeros_like(p_a)
    ok = p_a > 0.5 + _CERT_MARGIN
    if not ok.any():
        return out
    p, s0, rr, n = p_a[ok], sigma0[ok], r[ok], dim[ok]
    # s1 = s0 is always admissible and gives exactly 1/2 at Cohen's radius, so that radius is
    # not certified: [0, Cohen] brackets the answer.
    full = p >= 1.0
    res = np.full(p.shape, np.inf)
    sub = np.flatnonzero(~full)
    if sub.size:
        p, s0, rr, n = p[sub], s0[sub], rr[sub], n[sub]
        hi = s0 * special.ndtri(p)
        f_hi = np.minimum(_radius_margin(hi, p, s0, rr, n), 0.0)

        def f(x: Array, idx: Array) -> Array:
            return _radius_margin(x, p[idx], s0[idx], rr[idx], n[idx])

        res[sub], _ = _regula_falsi(f, np.zeros_like(hi), hi, p - 0.5 - _CERT_MARGIN, f_hi, rtol)
    out[ok] = res
    return out


def input_dependent_radius(
    p_a: ArrayLike, sigma0: ArrayLike, r: ArrayLike, dim: ArrayLike, rtol: float = 1e-13
) -> Array:
    """Sound L2 radius for a semi-elastic sigma(x) (|ln s(x) - ln s(y)| <= r ||x - y||).

    The largest R such that for every d <= R and s1 in [s0 e^{-r d}, s0 e^{r d}] the worst case
    stays > 1/2 (Sukenik et al. 2022, Theorem 3). The root-find in R uses the two ends of the
    band (the binding ones; tests check dense (d, s1) grids inside the radius) and returns the
    lower end of its final bracket (relative width rtol), with the worst case kept above
    1/2 + 5e-14 so rounding cannot certify too much. Cohen's radius at r = 0 (to ~1e-13 * s0),
    0 where p_a <= 1/2 (abstain), inf where p_a = 1. Non-increasing in r (the band only widens).
    """
    p = _checked("p_a", p_a, 0.0, False, 1.0)
    s0 = _checked("sigma0", sigma0, 0.0, True)
    rr = _checked("r", r, 0.0, False)
    n = _prepare_dim(dim)
    p, s0, rr, n = np.broadcast_arrays(p, s0, rr, n)
    shape = p.shape
    res = _radius_flat(p.ravel().copy(), s0.ravel().copy(), rr.ravel().copy(), n.ravel().copy(),
                       rtol)
    return _out(res.reshape(shape))


def max_certified_radius(
    r: ArrayLike, dim: ArrayLike, sigma0: ArrayLike, p_a: ArrayLike
) -> Array:
    """Curse-of-dimensionality view of input_dependent_radius as a function of (r, dim, s0, p_a)."""
    return input_dependent_radius(p_a, sigma0, r, dim)


def admissible_sigma_band(p_a: ArrayLike, dim: ArrayLike) -> tuple[Array, Array]:
    """(low, high) ratios s1/s0 at distance 0 between which the worst case stays > 1/2.

    Shows the curse of dimensionality: the band narrows like 1 +- O(1/sqrt(dim)).
    """
    p = _checked("p_a", p_a, 0.0, False, 1.0)
    n = _prepare_dim(dim)
    p, n = np.broadcast_arrays(p, n)
    shape = p.shape
    p, n = p.ravel().copy(), n.ravel().copy()
    ends = []
    for sign in (-1.0, 1.0):
        out = np.where(p >= 1.0, np.inf, 0.0)
        ok = (p > 0.5) & (p < 1.0)
        if ok.any():
            pp, nn = p[ok], n[ok]

            def margin(x: Array, idx: Array, pp: Array = pp, nn: Array = nn) -> Array:
                # x = |ln kappa|; distance 0.
                k = np.exp(sign * x)
                return _worst_unit(k, np.expm1(2.0 * sign * x), np.zeros_like(x), pp[idx],
                                   nn[idx]) - 0.5

            hi = np.ones_like(pp)
            all_idx = np.arange(pp.size)
            f_hi = margin(hi, all_idx)
            for _ in range(60):  # the margin tends to -1/2 as |ln kappa| grows
                grow = f_hi > 0
                if not grow.any():
                    break
                hi[grow] *= 2.0
                f_hi[grow] = margin(hi[grow], all_idx[grow])
            lo, _ = _regula_falsi(margin, np.zeros_like(pp), hi, pp - 0.5, np.minimum(f_hi, 0.0),
                              1e-13)
            out[ok] = lo
        ends.append(np.exp(sign * out))
    low, high = (e.reshape(shape) for e in ends)
    return _out(low), _out(high)


def max_semi_elasticity(
    radius: ArrayLike, sigma0: ArrayLike, p_a: ArrayLike, dim: ArrayLike, rtol: float = 1e-9
) -> Array:
    """Largest semi-elasticity r whose input-dependent radius still reaches `radius`.

    0 where even r = 0 (Cohen's radius) cannot certify it. The radius is non-increasing in r
    (the sigma band only widens), so a bisection-type search on r is exact up to rtol.
    """
    rad = _checked("radius", radius, 0.0, False)
    s0 = _checked("sigma0", sigma0, 0.0, True)
    p = _checked("p_a", p_a, 0.0, False, 1.0)
    n = _prepare_dim(dim)
    rad, s0, p, n = np.broadcast_arrays(rad, s0, p, n)
    shape = rad.shape
    rad, s0, p, n = (v.ravel().copy() for v in (rad, s0, p, n))
    out = np.zeros_like(rad)
    ok = (p > 0.5) & (rad < cohen_radius(p, s0))
    if ok.any():
        rr, ss, pp, nn = rad[ok], s0[ok], p[ok], n[ok]
        inf_ok = (rr <= 0.0) | (pp >= 1.0)

        def margin(x: Array, idx: Array) -> Array:
            got = _radius_flat(pp[idx], ss[idx], x, nn[idx], 1e-12)
            return got - rr[idx]

        res = np.full(rr.shape, np.inf)
        sub = np.flatnonzero(~inf_ok)
        if sub.size:
            hi = 1.0 / ss[sub]
            f_hi = margin(hi, sub)
            for _ in range(200):
                grow = f_hi >= 0
                if not grow.any():
                    break
                hi[grow] *= 4.0
                f_hi[grow] = margin(hi[grow], sub[grow])
            f_lo = cohen_radius(pp[sub], ss[sub]) - rr[sub]  # > 0: r = 0 certifies it
            lo, _ = _regula_falsi(lambda x, i: margin(x, sub[i]), np.zeros(sub.size), hi,
                              f_lo, np.minimum(f_hi, 0.0), rtol)
            res[sub] = lo
        out[ok] = res
    return _out(out.reshape(shape))
