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
# Below this a worst case is returned as 0: the bound of _negligible proves it is that small, far
# below the ~1e-15 absolute accuracy of every other evaluation.
_TINY = 1e-300
# Largest input dimension accepted (a 4K RGB image has 2.5e7); both routes are checked against
# mpmath up to 3072 and stay smooth (no special-function warnings) up to here.
DIM_MAX = 10**8
# Inputs must be normal doubles: a subnormal sigma keeps only a few significant bits.
_NORMAL_MIN = float(np.finfo(float).tiny)


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


def _weighted(values: Array, weights: Array) -> Array:
    """Each row of ``values`` summed with ``weights``, row by row.

    Not ``values @ weights``: a BLAS matrix-vector product may block its rows differently for
    different numbers of rows, so a point's result would change in the last bits with the
    points computed beside it, and a resumed or distributed run would not reproduce a clean one.
    """
    return (values * weights).sum(axis=1)


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
        prob, fp = _weighted(prob, om)[:, None], _weighted(slope, om)[:, None]
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
    return _weighted(_set_prob(eta, mu, s, w1, delta, kappa), om)


def _worst_ncx2(kappa: Array, km1: Array, delta: Array, p_a: Array, dim: int) -> Array:
    """Non-central chi-square route (scipy/Boost); requires km1 != 0.

    lam1 = (kappa delta / km1)^2 and lam0 = lam1 / kappa^2 are formed from km1 / kappa (which is
    kappa - 1/kappa once kappa >= 2), so neither overflows for any finite kappa.
    """
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        per_kappa = np.where(kappa >= 2.0, kappa - 1.0 / kappa, km1 / kappa)
        root1 = np.abs(delta / per_kappa)
        lam1 = root1 * root1
        lam0 = (root1 / kappa) ** 2
    ball = km1 > 0
    # Ball: threshold F^-1(p_a) = isf(1 - p_a); complement: F^-1(1 - p_a) = isf(p_a). 1 - p_a is
    # exact for p_a >= 1/2, and isf keeps the small tail's relative precision. One call for both.
    q = stats.ncx2.isf(np.where(ball, 1.0 - p_a, p_a), dim, lam0)
    with np.errstate(under="ignore"):
        cdf = special.chndtr(q / kappa / kappa, dim, lam1)
    return np.where(ball, cdf, 1.0 - cdf)  # absolute precision is what the result needs


def _negligible(kappa: Array, km1: Array, delta: Array, p_a: Array, dim: Array) -> Array:
    """Where a rigorous upper bound puts the worst case below _TINY (so it is 0 in doubles).

    The extremes (s1/s0 near 0 or huge, distances of many sigmas) are where the routes' special
    functions overflow; there the bound below decides. With S the least-P1 set of P0-mass p_a
    (x0 = 0, x1 = delta e1, units of s0):
    - kappa > 1, S = ball(c, rho), |c| = delta/km1: ball(0, rho - |c|) lies inside S, so
      rho <= |c| + Rq with Rq^2 = chi2_N quantile at p_a. Then S lies in {u <= Rq} and in the slab
      |u + |c|| <= rho times {||v|| <= rho}, so P1(S) <= min(Phi((Rq - delta)/kappa),
      2 rho/(kappa sqrt(2 pi)) * P(chi2_{N-1} <= (rho/kappa)^2)).
    - kappa < 1, S = complement of ball(c, rho), c = m e1, m = delta/(1 - kappa^2), P0(ball) = 1 - p_a:
      the centred ball holds the most mass (Anderson), so rho >= sqrt(chi2_N quantile at 1 - p_a);
      a ball inside {||z|| > r} holds less than 1 - p_a when P(chi2_N > r^2) = 1 - p_a, so
      rho >= m - r. As ||x1 - c|| = m kappa^2, P1(S) <= P(chi2_N > ((rho - m kappa^2)/kappa)^2).
    The quantiles are widened by a relative 1e-9 so their rounding cannot break the bounds.
    """
    n = dim.astype(float)
    slack = 1.0 + 1e-9
    with np.errstate(divide="ignore", over="ignore", invalid="ignore", under="ignore"):
        # kappa > 1
        rq = np.sqrt(special.chdtri(n, 1.0 - p_a)) * slack + 1e-9
        rho = np.where(km1 > 0, delta / km1, 0.0) + rq
        along = special.ndtr((rq - delta) / kappa)
        width = np.minimum(1.0, 2.0 * (rho / kappa) / np.sqrt(2.0 * np.pi))
        across = np.where(n >= 2, special.chdtr(np.maximum(n - 1.0, 1.0), (rho / kappa) ** 2), 1.0)
        ball_bound = np.minimum(along, width * across)
        # kappa < 1
        r_sf = np.sqrt(special.chdtri(n, 1.0 - p_a)) * slack + 1e-9  # P(chi2_N > r^2) = 1 - p_a
        r_cdf = np.sqrt(special.chdtri(n, p_a)) / slack  # P(chi2_N <= r^2) = 1 - p_a
        off = delta * (kappa * kappa) / np.where(km1 < 0, -km1, 1.0)
        gap = np.maximum(delta - r_sf, r_cdf - off)  # rho - m kappa^2 >= gap
        z = np.where(gap > 0, gap / kappa, 0.0)
        outside_bound = np.where(gap > 0, special.chdtrc(n, z * z), 1.0)
    bound = np.where(km1 > 0, ball_bound, np.where(km1 < 0, outside_bound, 1.0))
    return (p_a < 1.0) & (bound < _TINY)


def _worst_unit(kappa: Array, km1: Array, delta: Array, p_a: Array, dim: Array) -> Array:
    """Worst case in sigma0 units; km1 = kappa^2 - 1 is passed separately to keep its precision.

    All arguments are 1-D arrays of one length; dim holds integers >= 1. kappa may be 0 or inf
    (the radius search reaches them for huge r * R), where the worst case is its limit 0.
    """
    out = np.where(p_a >= 1.0, 1.0, 0.0)
    todo = (p_a > 0.0) & (p_a < 1.0)
    todo &= ~_negligible(kappa, km1, delta, p_a, dim)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        lam0 = np.where(km1 == 0.0, np.inf, (delta / km1) ** 2)
        integral = lam0 >= _ROUTE_FACTOR * np.maximum(1.0, kappa * kappa) * (dim + 30.0)
    for n in np.unique(dim[todo]):
        for route, fn in ((integral, _worst_integral), (~integral, _worst_ncx2)):
            sel = todo & (dim == n) & route
            if sel.any():
                out[sel] = fn(kappa[sel], km1[sel], delta[sel], p_a[sel], int(n))
    return np.clip(out, 0.0, 1.0)


def _prepare_dim(dim: ArrayLike) -> NDArray[np.int64]:
    """dim as int64, else InvalidArgument: integers from 1 to DIM_MAX (huge Python ints included)."""
    try:
        d = np.asarray(dim)
        if d.dtype == object:
            d = d.astype(float)
        with np.errstate(invalid="ignore"):
            ok = bool(np.all(np.isfinite(d) & (d >= 1) & (d <= DIM_MAX) & (d == np.round(d))))
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise InvalidArgument(f"dim must hold integers from 1 to {DIM_MAX:.0e}")
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


def _normal(name: str, v: Array) -> Array:
    """v unchanged, or InvalidArgument when it holds a subnormal number (0 < |v| < 2.2e-308)."""
    sub = (v != 0) & (np.abs(v) < _NORMAL_MIN)
    if np.any(sub):
        raise InvalidArgument(f"{name} = {v[sub].ravel()[0]:g} is subnormal (below {_NORMAL_MIN:.3g}) "
                              "and keeps too few digits; scale the lengths up together")
    return v


def worst_case_probability(
    sigma0: ArrayLike, sigma1: ArrayLike, distance: ArrayLike, p_a: ArrayLike, dim: ArrayLike
) -> Array:
    """Smallest P(f(x1 + N(0, s1^2 I)) = A) over classifiers with P(f(x0 + N(0, s0^2 I)) = A) = p_a.

    ||x1 - x0|| = distance in dimension dim (Sukenik et al. 2022, Theorem 2). Equals Cohen's
    Phi(Phi^-1(p_a) - d/s0) when s1 = s0 and tends to it continuously as s1 -> s0.
    """
    s0 = _normal("sigma0", _checked("sigma0", sigma0, 0.0, True))
    s1 = _normal("sigma1", _checked("sigma1", sigma1, 0.0, True))
    d = _normal("distance", _checked("distance", distance, 0.0, False))
    p = _checked("p_a", p_a, 0.0, False, 1.0)
    n = _prepare_dim(dim)
    s0, s1, d, p, n = np.broadcast_arrays(s0, s1, d, p, n)
    shape = s0.shape
    s0, s1, d, p, n = (v.ravel() for v in (s0, s1, d, p, n))
    # Only the ratios matter; they must be representable (normal, finite) doubles.
    with np.errstate(over="ignore", under="ignore"):
        kappa, delta = s1 / s0, d / s0
    for name, ratio, top in (("sigma1/sigma0", kappa, s1), ("distance/sigma0", delta, d)):
        bad = ~np.isfinite(ratio) | ((ratio < _NORMAL_MIN) & (ratio is kappa))
        if np.any(bad):
            i = int(np.flatnonzero(bad)[0])
            raise InvalidArgument(f"{name} = {top[i]:g}/{s0[i]:g} is beyond the range of double precision; "
                                  "the bound depends only on sigma1/sigma0 and distance/sigma0")
    # A distance below 2.2e-308 sigma0 is distance 0 to double precision (the bound is continuous).
    delta = np.where(delta < _NORMAL_MIN, 0.0, delta)
    # kappa^2 - 1 = ((s1 - s0)/s0)(kappa + 1): s1 - s0 is exact for nearby floats (Sterbenz), and
    # neither factor under- or overflows where kappa is representable (their product may reach inf).
    with np.errstate(over="ignore"):
        km1 = ((s1 - s0) / s0) * (kappa + 1.0)
    res = _worst_unit(kappa, km1, delta, p, n)
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
    radius: Array, p_a: Array, sigma0: Array | float, r: Array, dim: Array
) -> Array:
    """min over s1 = s0 e^{-r R}, s0 e^{+r R} of worst case at distance R, minus 1/2."""
    # For huge r * R the band ends reach 0 and inf, where the worst case is 0 (its limit).
    with np.errstate(over="ignore", divide="ignore"):
        x = r * radius
        kappa = np.concatenate([np.exp(-x), np.exp(x)])
        km1 = np.concatenate([np.expm1(-2.0 * x), np.expm1(2.0 * x)])
        delta = np.tile(radius / sigma0, 2)
        w = _worst_unit(kappa, km1, delta, np.tile(p_a, 2), np.tile(dim, 2))
    return np.minimum(w[: x.size], w[x.size:]) - 0.5 - _CERT_MARGIN


def _radius_flat(p_a: Array, sigma0: Array, r: Array, dim: Array, rtol: float) -> Array:
    """input_dependent_radius on flat arrays, solved in units of sigma0.

    The radius is sigma0 times a function of (p_a, r * sigma0, dim), so the root-find never sees
    the scale of sigma0 (inf where r * sigma0 overflows gives the limit 0).
    """
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
        with np.errstate(over="ignore"):
            r_unit = rr * s0
        hi = special.ndtri(p)
        f_hi = np.minimum(_radius_margin(hi, p, 1.0, r_unit, n), 0.0)

        def f(x: Array, idx: Array) -> Array:
            return _radius_margin(x, p[idx], 1.0, r_unit[idx], n[idx])

        unit, _ = _regula_falsi(f, np.zeros_like(hi), hi, p - 0.5 - _CERT_MARGIN, f_hi, rtol)
        with np.errstate(over="ignore"):
            res[sub] = s0 * unit
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
    InvalidArgument for a subnormal sigma0, an r * sigma0 or a radius beyond double precision.
    """
    p = _checked("p_a", p_a, 0.0, False, 1.0)
    s0 = _normal("sigma0", _checked("sigma0", sigma0, 0.0, True))
    rr = _checked("r", r, 0.0, False)
    n = _prepare_dim(dim)
    p, s0, rr, n = np.broadcast_arrays(p, s0, rr, n)
    shape = p.shape
    p, s0, rr, n = (v.ravel().copy() for v in (p, s0, rr, n))
    with np.errstate(over="ignore"):
        beyond = ~np.isfinite(rr * s0)
    if np.any(beyond):
        i = int(np.flatnonzero(beyond)[0])
        raise InvalidArgument(f"r * sigma0 = {rr[i]:g} * {s0[i]:g} is beyond double precision "
                              "(the radius depends on r only through r * sigma0)")
    res = _radius_flat(p, s0, rr, n, rtol)
    over = ~np.isfinite(res) & (p < 1.0)
    if np.any(over):
        i = int(np.flatnonzero(over)[0])
        raise InvalidArgument(f"sigma0 = {s0[i]:g}: the radius (a multiple of sigma0) is beyond double "
                              "precision; give sigma0 in smaller units")
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
