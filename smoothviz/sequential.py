"""Anytime-valid certification: confidence sequences for p_A and the stopping rules built on them.

CERTIFY (Cohen et al. 2019, Section 3.2) draws a fixed number n of estimation samples and then
computes one Clopper-Pearson bound; reading that bound earlier, or drawing more samples after
looking at it, voids its guarantee. A *confidence sequence* (Darling and Robbins 1967; Lai 1976,
"On confidence sequences", Ann. Statist. 4) is a sequence of bounds (L_t, U_t) with

    P(there is a t with p outside [L_t, U_t]) <= alpha,

so the bound may be read, and the sampling stopped, at any data-dependent time without losing
its guarantee. Two sequences for a Bernoulli mean are implemented here:

- ``union_cp_bounds``: Clopper-Pearson bounds at fixed checkpoints t_1 < t_2 < ..., the j-th at
  level alpha_j = 6 alpha / (pi^2 j^2) (sum over all j: alpha), so a union bound makes them hold
  at all checkpoints at once; between checkpoints the bound is the last checkpoint's. Voracek
  (NeurIPS 2024, arXiv 2406.17830) studies such union-bound sequences for randomized smoothing,
  for the question "is x certified at radius R?" that ``FixedRadiusRule`` answers; the spending
  sequence and the schedule here are our own.
- ``mixture_bounds``: the beta-binomial mixture martingale (Robbins 1970, "Statistical methods
  related to the law of the iterated logarithm", Ann. Math. Statist. 41; Lai 1976), with a
  point mass at q = 1 added to the Beta prior because p_A near 1 is the common case, inverted
  with Ville's inequality (Ville 1939, "Etude critique de la notion de collectif"). It is valid
  at every t, not only at checkpoints. Since every likelihood ratio of Bernoulli(q) against
  Bernoulli(p) is a bet 1 + lam (X - p) with lam = (q - p) / (p (1 - p)), the mixture is the
  capital of a mixture of constant bets, i.e. a betting confidence sequence in the sense of
  Waudby-Smith and Ramdas ("Estimating means of bounded random variables by betting",
  JRSS-B 2024: capital processes and their inversion by Ville's inequality).

The decision rules (``RadiusRule``, ``FixedRadiusRule``) are state machines over the running
counts (k_A, t) of the estimation samples of each point; they look at the counts only at the
checkpoints of ``checkpoint_schedule``. Class selection stays as in CERTIFY: c_A is picked from
n0 separate selection samples first; the sequence then runs on the estimation samples of c_A
only, which given the selection are i.i.d. Bernoulli(p_A), exactly the setting of the
guarantees above. Numbers and arrays broadcast like numpy ufuncs; only numpy and scipy are used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import IntEnum
from functools import cached_property

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special, stats

from smoothviz import bounds
from smoothviz.errors import InvalidArgument

__all__ = [
    "METHODS",
    "NOISE_BLOCK",
    "FixedRadiusRule",
    "RadiusRule",
    "Reason",
    "State",
    "certify_threshold",
    "checkpoint_alpha",
    "checkpoint_schedule",
    "draw_plan",
    "expected_samples",
    "mixture_bounds",
    "mixture_log_martingale",
    "sound_radius",
    "union_cp_bounds",
]

Array = NDArray[np.float64]
IntArray = NDArray[np.int64]

# Rows of one independently seeded noise block of the engine; equal to smoothviz.noise.NOISE_BLOCK
# (tests check it), repeated here because smoothviz.noise imports torch.
NOISE_BLOCK = 1024
METHODS = ("mixture", "union-cp")
# 1 - 2^-53 is the largest double below 1: the largest p_A a certificate can be computed for.
_Q_MIN = 2.0 ** -53


def _out(x: Array) -> Array:
    """Return 0-d arrays as numpy scalars, others unchanged."""
    return x[()] if x.ndim == 0 else x


def _check_alpha(alpha: float) -> float:
    if not (isinstance(alpha, (int, float, np.floating)) and 0.0 < float(alpha) < 1.0):
        raise InvalidArgument(f"alpha = {alpha} is outside (0, 1)")
    return float(alpha)


def _check_counts(k: ArrayLike, t: ArrayLike) -> tuple[Array, Array]:
    """Float arrays of k and t, broadcast; InvalidArgument unless integers with 0 <= k <= t."""
    k, t = np.broadcast_arrays(np.asarray(k, dtype=float), np.asarray(t, dtype=float))
    if not np.all(np.isfinite(t) & (t >= 0) & (t == np.round(t))):
        raise InvalidArgument("t must hold integers >= 0")
    if not np.all(np.isfinite(k) & (k >= 0) & (k <= t) & (k == np.round(k))):
        raise InvalidArgument("k must hold integers with 0 <= k <= t")
    return k, t


# ---------------------------------------------------------------------------------------------
# Checkpoints (where the rules look) and the union-bound Clopper-Pearson sequence
# ---------------------------------------------------------------------------------------------


def checkpoint_schedule(n_max: int, first: int = 16, growth: float = 1.25) -> IntArray:
    """Sample counts t_1 < t_2 < ... < t_J = n_max at which a sequential rule reads its counts.

    t_j = first * growth^(j-1), rounded up to an integer, and up to a multiple of NOISE_BLOCK
    once it reaches NOISE_BLOCK (repeats dropped), cut at n_max, which is always the last
    checkpoint. From NOISE_BLOCK on every increment t_j - t_(j-1) is thus a whole number of the
    engine's noise blocks (before it, one partial block). The schedule depends only on its
    arguments, never on the data, as the union bound requires. growth >= 1.01 (finer schedules
    only multiply the checkpoints). Defaults: the mixture sequence may be read as often as one
    likes, and in simulation (fixed radius 0.25 and 0.5, sigma = 0.25, p_A 0.99-0.9999,
    alpha = 1e-3) this finer schedule stopped 17-31 % earlier than first = 64, growth = 2; the
    union bound pays for every checkpoint, so ``union-cp`` does better with growth = 2.
    """
    for name, v in (("n_max", n_max), ("first", first)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise InvalidArgument(f"{name} = {v} must be an integer >= 1")
    if not (isinstance(growth, (int, float, np.floating)) and math.isfinite(growth)
            and growth >= 1.01):
        raise InvalidArgument(f"growth = {growth} must be a number >= 1.01")
    out: list[int] = []
    x = float(first)
    while True:
        t = math.ceil(x)
        if t >= NOISE_BLOCK:
            t = NOISE_BLOCK * math.ceil(t / NOISE_BLOCK)
        if t >= n_max:
            out.append(int(n_max))
            break
        if not out or t > out[-1]:
            out.append(t)
        x *= growth
    return np.asarray(out, dtype=np.int64)


def checkpoint_alpha(j: ArrayLike, alpha: float) -> Array:
    """alpha_j = 6 alpha / (pi^2 j^2), the level spent at checkpoint j >= 1 (sum over j: alpha)."""
    alpha = _check_alpha(alpha)
    j = np.asarray(j, dtype=float)
    if not np.all((j >= 1) & (j == np.round(j))):
        raise InvalidArgument("j must hold integers >= 1")
    return _out(6.0 * alpha / (np.pi ** 2 * j * j))


def _cp_bounds(k: Array, t: Array, level: Array) -> tuple[Array, Array]:
    """One-sided Clopper-Pearson bounds, each at its own level (smoothviz.bounds for the lower)."""
    lower = np.asarray(bounds.clopper_pearson_lower(k, t, level), dtype=float)
    with np.errstate(invalid="ignore"):
        upper = stats.beta.isf(level, k + 1.0, t - k)  # isf keeps the upper tail's precision
    upper = np.where(k >= t, 1.0, upper)
    return np.where(t > 0, lower, 0.0), upper


def union_cp_bounds(k: ArrayLike, t: ArrayLike, alpha: float, schedule: ArrayLike
                    ) -> tuple[Array, Array]:
    """Lower and upper Clopper-Pearson bounds with a union bound over the checkpoints ``schedule``.

    At checkpoint t = t_j (j = 1, 2, ... counted in ``schedule``) the bounds are the one-sided
    Clopper-Pearson bounds at level alpha_j = 6 alpha / (pi^2 j^2). Guarantee, for X_1, X_2, ...
    i.i.d. Bernoulli(p) and any p in [0, 1] (Clopper-Pearson: P(L_t >= p) <= alpha_j at a fixed
    t; union bound over j, sum alpha_j <= alpha):

        P(L_(t_j) >= p for some j) <= alpha   and   P(U_(t_j) <= p for some j) <= alpha,

    each one-sided and simultaneous over all checkpoints (both sides together: 2 alpha); the
    running max of L and min of U keep these guarantees. The schedule must be fixed before the
    data are seen; t must be one of its entries (InvalidArgument otherwise).
    """
    alpha = _check_alpha(alpha)
    k, t = _check_counts(k, t)
    sched = np.asarray(schedule, dtype=np.int64)
    if sched.ndim != 1 or sched.size == 0 or np.any(np.diff(sched) <= 0) or sched[0] < 1:
        raise InvalidArgument("schedule must be a strictly increasing sequence of integers >= 1")
    j = np.searchsorted(sched, t)
    if np.any((j >= sched.size) | (sched[np.minimum(j, sched.size - 1)] != t)):
        raise InvalidArgument("t must be a checkpoint of the schedule")
    lower, upper = _cp_bounds(k, t, checkpoint_alpha(j + 1, alpha))
    return _out(lower), _out(upper)


# ---------------------------------------------------------------------------------------------
# The beta-binomial mixture sequence
# ---------------------------------------------------------------------------------------------
#
# Alternatives q are mixed with the prior pi = (1 - w) Beta(a, b) + w delta_1. After k successes
# in t trials the mixture of likelihood ratios of Bernoulli(q) against Bernoulli(p) is
#   M_t(p) = [(1 - w) B(a + k, b + t - k) / B(a, b) + w 1{k = t}] / (p^k (1 - p)^(t - k)),
# a nonnegative martingale with M_0 = 1 under Bernoulli(p) (each likelihood ratio is one, and
# the weights do not depend on the data). Ville: P(sup_t M_t(p) >= 1/alpha) <= alpha.
# The point mass at q = 1 is there because p_A near 1 is the common case in certification: with
# every vote for c_A, M_t(p) >= w p^-t, so the lower bound is within log(1/w) nats of the
# Clopper-Pearson bound alpha^(1/t) (which, at k = t, is itself anytime-valid: it is the
# likelihood-ratio test against q = 1), while Beta(a, b) alone pays about (1/2) log t.
# Writing p_hat = k/t and rho_t = log(p_hat^k (1-p_hat)^(t-k)) - log(B(a+k, b+t-k) / B(a, b)) >= 0
# (the Beta mixture's regret: maximum likelihood over mixture likelihood),
#   log M_t(p) = t KL(p_hat || p) - rho_t + log(1 - w)                  (k < t),
#   log M_t(p) = t log(1/p) + log(w + (1 - w) exp(-rho_t))              (k = t),
# so {p : M_t(p) < 1/alpha} = {p : t KL(p_hat || p) < c} with c = log(1/alpha) + rho_t -
# log(1 - w), resp. c = log(1/alpha) - log(w + (1 - w) exp(-rho_t)): an interval around p_hat,
# because KL(p_hat || .) is convex. Its ends are found in the logit y of p, where
# g(y) = t KL(p_hat || expit(y)) - c has g'(y) = t expit(y) - k and g''(y) = t p (1 - p) > 0:
# g is convex, so Newton's method started left of the lower end increases monotonically to it
# without overshooting, and every iterate is a valid (conservative) lower bound.


def _check_prior(a: float, b: float, mass_at_one: float) -> tuple[float, float, float]:
    for name, v in (("a", a), ("b", b)):
        if not (isinstance(v, (int, float, np.floating)) and math.isfinite(v) and v > 0):
            raise InvalidArgument(f"prior {name} = {v} must be a number > 0")
    if not (isinstance(mass_at_one, (int, float, np.floating)) and 0 <= mass_at_one < 1):
        raise InvalidArgument(f"mass_at_one = {mass_at_one} is outside [0, 1)")
    return float(a), float(b), float(mass_at_one)


def _regret(k: Array, t: Array, a: float, b: float) -> Array:
    """rho_t = log(max likelihood / Beta(a, b) mixture likelihood) >= 0 (0 where t = 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        log_ml = special.xlogy(k, k / t) + special.xlogy(t - k, (t - k) / t)
    log_ml = np.where(t > 0, log_ml, 0.0)
    return np.maximum(special.betaln(a, b) - special.betaln(a + k, b + t - k) + log_ml, 0.0)


def _mixture_threshold(k: Array, t: Array, alpha: float, a: float, b: float, w: float) -> Array:
    """c such that {p : M_t(p) < 1/alpha} = {p : t KL(k/t || p) < c}."""
    rho = _regret(k, t, a, b)
    log_w = math.log(w) if w > 0 else -math.inf
    full = np.logaddexp(log_w, math.log1p(-w) - rho)  # log(w + (1 - w) e^-rho)
    return math.log(1.0 / alpha) + np.where(k >= t, -full, rho - math.log1p(-w))


def _kl_excess(y: Array, k: Array, t: Array, lp_hat: Array, lq_hat: Array, c: Array) -> Array:
    """g(y) = t KL(k/t || expit(y)) - c, from log p_hat, log(1 - p_hat) (no cancellation in p)."""
    return k * (lp_hat - special.log_expit(y)) + (t - k) * (lq_hat - special.log_expit(-y)) - c


def _lower_logit(k: Array, t: Array, c: Array) -> Array:
    """Logit of the lower end of {p : t KL(k/t || p) < c}; -inf where k = 0 (the end is 0).

    The result y has g(y) >= 0 as evaluated (it lies at or left of the end up to rounding of g).
    """
    y = np.full(k.shape, -np.inf)
    full = (k >= t) & (t > 0)
    # k = t: t log(1/p) = c, so log p = -c/t and logit = log p - log(1 - p)
    lp = -c[full] / t[full]
    y[full] = lp - np.log(-np.expm1(lp))
    inner = np.flatnonzero((k > 0) & (k < t))
    if inner.size == 0:
        return y
    kk, tt, cc = k[inner], t[inner], c[inner]
    lp_hat, lq_hat = np.log(kk / tt), np.log((tt - kk) / tt)
    # Start left of the end, where g > 0: 1.5 times the end of the quadratic approximation
    # g ~ -c + t p_hat (1 - p_hat) (y - y_hat)^2 / 2 where that has g > 0 as evaluated; else the
    # crude p0 below, where g(p0) >= k > 0 because log(1 - p) <= 0 in
    # g(p) >= k log(p_hat / p) + (t-k) log(1-p_hat) - c.
    near = lp_hat - lq_hat - 1.5 * np.sqrt(2.0 * cc * tt / (kk * (tt - kk)))
    lp0 = lp_hat + ((tt - kk) * lq_hat - cc) / kk - 1.0
    crude = lp0 - np.log1p(-np.exp(lp0))
    cur = np.where(_kl_excess(near, kk, tt, lp_hat, lq_hat, cc) >= 0.0, near, crude)
    best = cur.copy()
    over = np.full(inner.size, np.inf)  # an iterate where g < 0 as evaluated (rounding)
    active = np.arange(inner.size)
    for _ in range(200):
        yv = cur[active]
        kv, tv = kk[active], tt[active]
        g = _kl_excess(yv, kv, tv, lp_hat[active], lq_hat[active], cc[active])
        ok = g >= 0.0
        best[active[ok]] = yv[ok]
        over[active[~ok]] = yv[~ok]
        slope = tv * special.expit(yv) - kv  # < 0 left of p_hat
        step = np.where(ok, -g / slope, 0.0)
        cur[active] = yv + step
        done = ~ok | (step <= 4e-16 * np.maximum(1.0, np.abs(yv)))
        active = active[~done]
        if active.size == 0:
            break
    # Where the last Newton step crossed the end, it landed on the end up to rounding (the error
    # after a Newton step is quadratic): step back a few hundred ulps and keep that if g >= 0
    # there; otherwise bisect down to ulps. The result is a y with g(y) >= 0 as evaluated.
    sel = np.flatnonzero(np.isfinite(over))
    back = over[sel] - 4e-14 * np.maximum(1.0, np.abs(over[sel]))
    gain = back > best[sel]
    sel, back = sel[gain], back[gain]
    ok = _kl_excess(back, kk[sel], tt[sel], lp_hat[sel], lq_hat[sel], cc[sel]) >= 0.0
    best[sel[ok]] = back[ok]
    sel, lo, hi = sel[~ok], best[sel[~ok]], back[~ok]
    for _ in range(80):
        if sel.size == 0 or np.all(hi - lo <= 4e-16 * np.maximum(1.0, np.abs(lo))):
            break
        mid = 0.5 * (lo + hi)
        ok = _kl_excess(mid, kk[sel], tt[sel], lp_hat[sel], lq_hat[sel], cc[sel]) >= 0.0
        lo, hi = np.where(ok, mid, lo), np.where(ok, hi, mid)
    best[sel] = lo
    y[inner] = best
    return y


def _mixture(k: Array, t: Array, alpha: float, a: float, b: float, w: float
             ) -> tuple[Array, Array]:
    k, t = np.broadcast_arrays(k, t)
    shape = k.shape
    k, t = k.ravel(), t.ravel()
    c = _mixture_threshold(k, t, alpha, a, b, w)
    lower = special.expit(_lower_logit(k, t, c))
    # The upper end for k is one minus the lower end for t - k (KL(x || p) = KL(1-x || 1-p));
    # at k = t it is 1, and c of k = 0 is the plain Beta one (no point mass at q = 0).
    upper = special.expit(-_lower_logit(t - k, t, c))
    return (np.where(t > 0, lower, 0.0).reshape(shape),
            np.where(t > 0, upper, 1.0).reshape(shape))


def mixture_log_martingale(p: ArrayLike, k: ArrayLike, t: ArrayLike, a: float = 0.5,
                           b: float = 0.5, mass_at_one: float = 0.5) -> Array:
    """log M_t(p), the mixture of likelihood ratios after k successes in t trials.

    M_t(p) = [(1 - w) B(a+k, b+t-k) / B(a, b) + w 1{k = t}] / (p^k (1-p)^(t-k)) with
    w = mass_at_one: alternatives q drawn from (1 - w) Beta(a, b) + w delta_1. A martingale
    with mean 1 when the trials are i.i.d. Bernoulli(p); +inf where p = 0 < k or p = 1 > k - t.
    """
    a, b, w = _check_prior(a, b, mass_at_one)
    k, t = _check_counts(k, t)
    p = np.asarray(p, dtype=float)
    if not np.all((p >= 0) & (p <= 1)):
        raise InvalidArgument("p must lie in [0, 1]")
    log_w = math.log(w) if w > 0 else -math.inf
    with np.errstate(divide="ignore"):
        mix = np.logaddexp(math.log1p(-w) + special.betaln(a + k, b + t - k) - special.betaln(a, b),
                           np.where(k >= t, log_w, -np.inf))
        out = mix - special.xlogy(k, p) - special.xlog1py(t - k, -p)
    return _out(out)


def mixture_bounds(k: ArrayLike, t: ArrayLike, alpha: float, a: float = 0.5, b: float = 0.5,
                   mass_at_one: float = 0.5) -> tuple[Array, Array]:
    """Ends (L_t, U_t) of the mixture confidence sequence after k successes in t trials.

    {p : M_t(p) < 1/alpha} = (L_t, U_t), with M_t of ``mixture_log_martingale``: alternatives
    mixed over (1 - w) Beta(a, b) + w delta_1, w = mass_at_one (a = b = 1/2, w = 0: the
    Krichevsky-Trofimov mixture). Guarantee, for X_1, X_2, ... i.i.d. Bernoulli(p) and any p in
    (0, 1) (Ville's inequality for the nonnegative martingale M_t(p), M_0(p) = 1):

        P(L_t >= p or U_t <= p for some t >= 1) <= alpha,

    two-sided and simultaneous over every t, so each one-sided statement also holds at level
    alpha, at any stopping time and for the running max of L and min of U. L_t = 0 where k = 0
    and U_t = 1 where k = t (those ends are not excluded). The default w = 1/2 costs log 2 nats
    of threshold when some vote is not for A and saves about (1/2) log t while all are.

    Computed by Newton's method on the logit scale from below (upper end: by the symmetry
    k -> t-k), so the returned ends lie inside the exact interval up to rounding; stable for t
    up to 1e7 and more and for k near 0 or t; within 2e-10 (relative, of the value and of its
    complement) of 50-digit mpmath, the rest being scipy's betaln at large arguments.

    Price of anytime validity: L_t never exceeds the fixed-t Clopper-Pearson lower bound L_CP at
    the same level (the fixed-t test M_t >= 1/alpha has level alpha by Markov's inequality, and
    its rejection region in k is upward closed above p_hat), and for 100 <= t <= 1e7 and
    0.05 <= p_hat <= 0.99 its width p_hat - L_t is at most
    F = sqrt((log(1/alpha) + log(t)/2 + 2 - log(1 - w)) / (z^2/2)), z = Phi^-1(1 - alpha),
    times p_hat - L_CP (F = 1.5-1.9 at alpha = 1e-3): a KL ball of radius c/t has width about
    sqrt(2 p (1-p) c / t) against z sqrt(p (1-p) / t) (tests/test_sequential.py checks F).
    """
    alpha = _check_alpha(alpha)
    a, b, w = _check_prior(a, b, mass_at_one)
    k, t = _check_counts(k, t)
    lower, upper = _mixture(k, t, alpha, a, b, w)
    return _out(lower), _out(upper)


# ---------------------------------------------------------------------------------------------
# Radii and the probability a radius needs
# ---------------------------------------------------------------------------------------------


def _check_sigma_model(r: float, dim: int | None) -> None:
    if not (isinstance(r, (int, float, np.floating)) and math.isfinite(r) and r >= 0):
        raise InvalidArgument(f"r = {r} must be a number >= 0")
    if r > 0 and (dim is None or not isinstance(dim, (int, np.integer)) or dim < 1):
        raise InvalidArgument(f"dim = {dim} must be an integer >= 1 when r > 0")


def sound_radius(p_lower: ArrayLike, sigma: ArrayLike, r: float = 0.0, dim: int | None = None
                 ) -> Array:
    """Certified radius of a lower bound p_lower on p_A: Cohen's sigma Phi^-1(p) for r = 0, else
    smoothviz.bounds.input_dependent_radius (sound for a semi-elastic sigma(x)); 0 where p <= 1/2.
    """
    _check_sigma_model(r, dim)
    p = np.asarray(p_lower, dtype=float)
    s = np.asarray(sigma, dtype=float)
    if r == 0:
        p, s = np.broadcast_arrays(p, s)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.where(p > 0.5, bounds.cohen_radius(p, s), 0.0)
        return _out(np.asarray(out, dtype=float))
    return bounds.input_dependent_radius(p, s, r, dim)


def certify_threshold(radius: ArrayLike, sigma: ArrayLike, r: float = 0.0, dim: int | None = None
                      ) -> Array:
    """Smallest p_A whose sound radius reaches ``radius`` (rounded up, so it surely does).

    r = 0: Phi(R / sigma) (Cohen et al. 2019, Theorem 1). r > 0: input_dependent_radius is
    inverted in x = log(1 - p) by a bracketing root-finder (Illinois regula falsi, i.e. bisection
    sped up by secant steps) on [log 2^-53, log Phi(-R / sigma)] (the sound radius never exceeds
    Cohen's), keeping input_dependent_radius >= R at the end p_hi that is returned, until the
    bracket is 1e-10 wide (relative in 1 - p); Cohen's formula would certify too much. 1/2 for
    R = 0; 1.0 where not even p = 1 - 2^-53 reaches R (no finite sample certifies it).
    """
    _check_sigma_model(r, dim)
    rad = np.asarray(radius, dtype=float)
    s = np.asarray(sigma, dtype=float)
    if not np.all(np.isfinite(rad) & (rad >= 0)):
        raise InvalidArgument("radius must hold finite numbers >= 0")
    if not np.all(np.isfinite(s) & (s > 0)):
        raise InvalidArgument("sigma must hold finite numbers > 0")
    rad, s = np.broadcast_arrays(rad, s)
    if r == 0:
        return _out(np.asarray(special.ndtr(rad / s), dtype=float))
    shape = rad.shape
    rad, s = rad.ravel(), s.ravel()
    out = np.where(rad > 0, 1.0, 0.5)
    todo = np.flatnonzero(rad > 0)
    if todo.size == 0:
        return _out(out.reshape(shape))

    def excess(x: Array, sub: IntArray) -> Array:  # sound radius at p = 1 - e^x, minus R
        return bounds.input_dependent_radius(-np.expm1(x), s[sub], r, dim) - rad[sub]

    a = np.full(todo.size, math.log(_Q_MIN))  # excess >= 0 here (where R is reachable at all)
    fa = excess(a, todo)
    keep = fa >= 0
    todo, a, fa = todo[keep], a[keep], fa[keep]
    with np.errstate(divide="ignore"):
        b = np.log(special.ndtr(-rad[todo] / s[todo]))  # Cohen's p: the sound radius is < R
    b = np.maximum(b, a + 1e-300)
    fb = np.minimum(excess(b, todo), -1e-300)
    last = np.zeros(todo.size, dtype=np.int8)  # which end moved last (+1 a, -1 b)
    for _ in range(200):
        active = np.flatnonzero(b - a > 1e-10)
        if active.size == 0:
            break
        aa, bb, ffa, ffb = a[active], b[active], fa[active], fb[active]
        x = bb - ffb * (bb - aa) / (ffb - ffa)
        width = bb - aa
        x = np.clip(x, aa + 1e-3 * width, bb - 1e-3 * width)
        fx = excess(x, todo[active])
        up = fx >= 0
        a[active] = np.where(up, x, aa)
        fa[active] = np.where(up, fx, np.where(last[active] == -1, 0.5 * ffa, ffa))
        b[active] = np.where(up, bb, x)
        fb[active] = np.where(up, np.where(last[active] == 1, 0.5 * ffb, ffb), fx)
        last[active] = np.where(up, 1, -1)
    out[todo] = -np.expm1(a)
    return _out(out.reshape(shape))


# ---------------------------------------------------------------------------------------------
# Decision rules
# ---------------------------------------------------------------------------------------------


class Reason(IntEnum):
    """Why a point's sampling stopped (UNDECIDED while it goes on)."""

    UNDECIDED = 0
    BUDGET = 1  # n_max estimation samples spent
    ABSTAIN = 2  # radius mode: upper bound <= 1/2, p_A > 1/2 is excluded
    RADIUS_CAP = 3  # radius mode: the radius reached max_radius
    STALLED = 4  # radius mode: the radius grew by less than the tolerance over a doubling of t
    CERTIFIED = 5  # fixed radius: the lower bound reached the p_A the radius needs
    BELOW_TARGET = 6  # fixed radius: upper bound < the p_A needed, the radius is excluded
    SHORT = 7  # not even all remaining samples voting A could reach the goal within n_max


@dataclass(frozen=True)
class State:
    """Per-point state of a sequential rule (arrays of one length, replaced on every update).

    ``t``, ``k``: estimation samples and votes for c_A at the last checkpoint read;
    ``checkpoint``: how many checkpoints were read (the index of the next one); ``lower``,
    ``upper``: running max / min of the sequence's bounds; ``radius``: the sound radius of
    ``lower``, filled in once a point is decided (radius mode with a tolerance: at every
    checkpoint; fixed radius: for certified points only, the others keep 0, and
    ``sound_radius(lower, ...)`` gives theirs); ``certified``: the outcome so far (radius mode:
    lower > 1/2; fixed radius: lower reached ``target``); ``reason``: a ``Reason``; ``target``:
    the p_A the goal needs (1/2 in radius mode); ``cap``: the p_A whose radius reaches the radius
    mode's max_radius (inf without a cap); ``k_needed``: the fewest votes for c_A among n_max
    samples with which the final lower bound reaches the goal (n_max + 1: none does);
    ``ref_t``, ``ref_radius``: where the radius mode's current doubling of the samples began
    (samples and radius then; 0 until the radius is positive).
    """

    t: IntArray
    k: IntArray
    checkpoint: IntArray
    lower: Array
    upper: Array
    radius: Array
    certified: NDArray[np.bool_]
    reason: NDArray[np.int8]
    sigma: Array
    target: Array
    cap: Array
    k_needed: IntArray
    ref_t: IntArray
    ref_radius: Array

    @property
    def decided(self) -> NDArray[np.bool_]:
        return self.reason != Reason.UNDECIDED


@dataclass(frozen=True, kw_only=True)
class _Rule:
    """What every sequential rule shares: the sequence, its level, the budget and the schedule.

    ``method``: "mixture" (``mixture_bounds`` with ``prior`` = (a, b, mass_at_one)) or
    "union-cp" (``union_cp_bounds``; ``prior`` unused). ``n_max``: estimation samples at most;
    ``first``, ``growth``: the checkpoints (``checkpoint_schedule``). ``r``, ``dim``: the
    semi-elasticity of sigma(x) and the input dimension; r = 0 is constant sigma (Cohen's radius).
    """

    alpha: float
    n_max: int
    method: str = "mixture"
    first: int = 16
    growth: float = 1.25
    prior: tuple[float, float, float] = (0.5, 0.5, 0.5)
    r: float = 0.0
    dim: int | None = None

    def __post_init__(self) -> None:
        _check_alpha(self.alpha)
        if self.method not in METHODS:
            raise InvalidArgument(f"method = {self.method!r} is not one of {', '.join(METHODS)}")
        _check_prior(*self.prior)
        _check_sigma_model(self.r, self.dim)
        checkpoint_schedule(self.n_max, self.first, self.growth)

    @cached_property
    def schedule(self) -> IntArray:
        """The checkpoints (``checkpoint_schedule``) at which the rule reads the counts."""
        return checkpoint_schedule(self.n_max, self.first, self.growth)

    def bounds_at(self, k: ArrayLike, checkpoint: ArrayLike) -> tuple[Array, Array]:
        """The sequence's (lower, upper) after k votes at the checkpoint numbered ``checkpoint``."""
        j = np.asarray(checkpoint, dtype=np.int64)
        t = self.schedule[j].astype(float)
        k = np.asarray(k, dtype=float)
        if self.method == "mixture":
            return _mixture(k, t, self.alpha, *self.prior)
        return _cp_bounds(k, t, checkpoint_alpha(j + 1, self.alpha))

    def start(self, sigma: ArrayLike) -> State:
        """The state before any estimation sample, for points with noise levels ``sigma``."""
        s = np.atleast_1d(np.asarray(sigma, dtype=float)).ravel()
        if not np.all(np.isfinite(s) & (s > 0)):
            raise InvalidArgument("sigma must hold finite numbers > 0")
        n = s.size
        target = self._target(s)
        state = State(t=np.zeros(n, dtype=np.int64), k=np.zeros(n, dtype=np.int64),
                      checkpoint=np.zeros(n, dtype=np.int64), lower=np.zeros(n), upper=np.ones(n),
                      radius=np.zeros(n), certified=np.zeros(n, dtype=bool),
                      reason=np.zeros(n, dtype=np.int8), sigma=s, target=target,
                      cap=self._cap(s), k_needed=self._votes_needed(target),
                      ref_t=np.zeros(n, dtype=np.int64), ref_radius=np.zeros(n))
        short = self._short(state, np.arange(n))
        reason = np.where(short, Reason.SHORT, Reason.UNDECIDED).astype(np.int8)
        return replace(state, reason=reason)

    def _votes_needed(self, target: Array) -> IntArray:
        """Fewest votes for c_A in n_max samples whose final lower bound reaches the goal.

        n_max + 1 where none does. Bisection over k, which relies on the lower bound growing
        with k at fixed t (tests check it); were it violated, SHORT would only cost power.
        """
        uniq, inverse = np.unique(target, return_inverse=True)
        last = np.full(uniq.size, self.schedule.size - 1)

        def reaches(k: IntArray) -> NDArray[np.bool_]:
            return self._goal(self.bounds_at(k, last)[0], uniq)

        lo = np.full(uniq.size, -1, dtype=np.int64)  # the goal fails at lo (k = -1: no votes)
        hi = np.full(uniq.size, self.n_max, dtype=np.int64)  # and holds at hi, where any k does
        while np.any(hi - lo > 1):
            mid = (lo + hi) // 2
            ok = reaches(np.maximum(mid, 0)) & (mid >= 0)
            lo, hi = np.where(ok, lo, mid), np.where(ok, mid, hi)
        need = np.where(reaches(np.full(uniq.size, self.n_max)), hi, self.n_max + 1)
        return need.astype(np.int64)[inverse.reshape(-1)]

    def next_samples(self, state: State) -> IntArray:
        """Estimation samples each point needs before its next update (0 once decided)."""
        j = np.minimum(state.checkpoint, self.schedule.size - 1)
        return np.where(state.decided, 0, self.schedule[j] - state.t).astype(np.int64)

    def next_draw(self, state: State) -> tuple[IntArray, IntArray]:
        """(rows, first noise block) of each point's next draw (``draw_plan``); rows 0 once decided.

        What the engine needs to pack the undecided points of many into one forward batch:
        point i draws rows[i] estimation samples as the noise blocks numbered from first[i].
        """
        _, first = draw_plan(self.schedule)
        return self.next_samples(state), first[np.minimum(state.checkpoint, self.schedule.size - 1)]

    def update(self, state: State, k: ArrayLike, t: ArrayLike) -> State:
        """Read the running counts (k votes for c_A in t estimation samples) of every point.

        Undecided points must be at their next checkpoint (t = previous t + ``next_samples``);
        entries of decided points are ignored. Returns the new state (bounds, radius, decision);
        the input state is left as it was.
        """
        k = np.asarray(k, dtype=np.int64).ravel()
        t = np.asarray(t, dtype=np.int64).ravel()
        if k.shape != state.t.shape or t.shape != state.t.shape:
            raise InvalidArgument(f"k and t must hold one count per point ({state.t.size})")
        idx = np.flatnonzero(~state.decided)
        if idx.size == 0:
            return state
        j = state.checkpoint[idx]
        if np.any(t[idx] != self.schedule[j]):
            raise InvalidArgument("t must be each undecided point's next checkpoint "
                                  "(see next_samples)")
        new_votes, new_rows = k[idx] - state.k[idx], t[idx] - state.t[idx]
        if np.any((new_votes < 0) | (new_votes > new_rows)):
            raise InvalidArgument("k must be the running count of votes for c_A "
                                  "(0 <= new votes <= new samples)")
        low, up = self.bounds_at(k[idx], j)
        fields = {name: getattr(state, name).copy() for name in
                  ("t", "k", "checkpoint", "lower", "upper", "radius", "certified", "reason",
                   "ref_t", "ref_radius")}
        fields["t"][idx], fields["k"][idx], fields["checkpoint"][idx] = t[idx], k[idx], j + 1
        fields["lower"][idx] = np.maximum(state.lower[idx], low)
        fields["upper"][idx] = np.minimum(state.upper[idx], up)
        new = replace(state, **fields)
        self._decide(new, idx)
        return new

    def _set_radius(self, state: State, idx: IntArray) -> None:
        state.radius[idx] = sound_radius(state.lower[idx], state.sigma[idx], self.r, self.dim)

    def _threshold(self, radius: float, sigma: Array) -> Array:
        """certify_threshold per point, computed once per distinct sigma."""
        uniq, inverse = np.unique(sigma, return_inverse=True)
        return np.asarray(certify_threshold(radius, uniq, self.r, self.dim), dtype=float
                          ).reshape(-1)[inverse.reshape(-1)]

    def _short(self, state: State, idx: IntArray) -> NDArray[np.bool_]:
        """Whether even n_max - t further votes for c_A leave the final lower bound short."""
        best_votes = state.k[idx] + self.n_max - state.t[idx]
        return (best_votes < state.k_needed[idx]) & ~self._goal(state.lower[idx], state.target[idx])

    def _decide_common(self, state: State, idx: IntArray, reason: NDArray[np.int8]
                       ) -> NDArray[np.int8]:
        """BUDGET at n_max and SHORT when the goal is out of reach, for points still undecided."""
        und = reason == Reason.UNDECIDED
        reason = np.where(und & (state.t[idx] >= self.n_max), Reason.BUDGET, reason)
        und = reason == Reason.UNDECIDED
        if und.any():
            sub = idx[und]
            reason[und] = np.where(self._short(state, sub), Reason.SHORT, Reason.UNDECIDED)
        return reason.astype(np.int8)

    def _goal(self, lower: Array, target: Array) -> NDArray[np.bool_]:
        return (lower >= target) & (lower > 0.5)


@dataclass(frozen=True, kw_only=True)
class RadiusRule(_Rule):
    """Radius mode: sample each point until its certified radius is as good as it will get.

    A point stops at the first checkpoint where (in this order) its radius reached ``max_radius``
    (RADIUS_CAP; checked as lower >= certify_threshold(max_radius), computed once per sigma, so
    no radius is needed per checkpoint); its radius grew by less than ``tolerance`` over the
    last doubling of its samples (STALLED: once the radius is positive at some t_0, it is
    compared at the first checkpoint t >= 2 t_0 with its value at t_0, and t_0 moves on to t;
    a whole doubling, so that the checkpoint-to-checkpoint noise of the bound does not stop it;
    the default 0 never stops for this); its upper bound is <= 1/2 (ABSTAIN); n_max samples are
    spent (BUDGET); or not even n_max - t further votes for c_A could lift
    the lower bound above 1/2 at n_max (SHORT). It reports the sound radius (``sound_radius``)
    of the running max of the lower bound, > 0 iff that bound exceeds 1/2. With r > 0 each
    radius costs a root-find (about a millisecond), so it is computed once a point is decided,
    and at every checkpoint only where the tolerance needs it.

    Soundness under optional stopping: the stopping time is any function of the counts, and the
    lower bound holds at all checkpoints at once (``union_cp_bounds`` / ``mixture_bounds``), so
    P(the reported radius exceeds the true radius of g at x) <= P(L_t >= p_A for some t) <=
    alpha. Abstentions are never wrong certificates; the upper bound only saves samples.
    """

    max_radius: float = math.inf
    tolerance: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (isinstance(self.max_radius, (int, float, np.floating)) and self.max_radius > 0):
            raise InvalidArgument(f"max_radius = {self.max_radius} must be a number > 0")
        if not (isinstance(self.tolerance, (int, float, np.floating))
                and math.isfinite(self.tolerance) and self.tolerance >= 0):
            raise InvalidArgument(f"tolerance = {self.tolerance} must be a number >= 0")

    def _target(self, sigma: Array) -> Array:
        return np.full(sigma.shape, 0.5)

    def _cap(self, sigma: Array) -> Array:
        # radius >= max_radius  <=>  lower >= this p, so the cap needs no radius per checkpoint
        if math.isinf(self.max_radius):
            return np.full(sigma.shape, np.inf)
        return self._threshold(self.max_radius, sigma)

    def _decide(self, state: State, idx: IntArray) -> None:
        """Fill in certified, reason and radius of the points idx just updated in ``state``."""
        certified = state.lower[idx] > 0.5
        reason = np.full(idx.size, Reason.UNDECIDED, dtype=np.int8)
        reason[certified & (state.lower[idx] >= state.cap[idx])] = Reason.RADIUS_CAP
        if self.tolerance > 0:
            self._set_radius(state, idx)
            radius, t = state.radius[idx], state.t[idx]
            ref_t, ref_radius = state.ref_t[idx], state.ref_radius[idx]
            window = (ref_radius > 0) & (t >= 2 * ref_t)
            stalled = window & (radius - ref_radius < self.tolerance)
            reason[(reason == Reason.UNDECIDED) & stalled] = Reason.STALLED
            restart = (window & ~stalled) | ((ref_radius == 0) & (radius > 0))
            state.ref_t[idx] = np.where(restart, t, ref_t)
            state.ref_radius[idx] = np.where(restart, radius, ref_radius)
        reason[(reason == Reason.UNDECIDED) & (state.upper[idx] <= 0.5)] = Reason.ABSTAIN
        state.certified[idx] = certified
        state.reason[idx] = reason = self._decide_common(state, idx, reason)
        if self.tolerance == 0:
            self._set_radius(state, idx[reason != Reason.UNDECIDED])


@dataclass(frozen=True, kw_only=True)
class FixedRadiusRule(_Rule):
    """Fixed-radius mode: "is x certified at radius R?", with as few samples as the data allow.

    The p_A needed for R is ``certify_threshold`` (Cohen's Phi(R / sigma) for r = 0; the inverted
    sound input-dependent radius for r > 0). A point stops at the first checkpoint where its
    lower bound reaches it (CERTIFIED; the radius of the bound is then >= R), where its upper
    bound falls below it (BELOW_TARGET), at n_max (BUDGET), or when not even n_max - t further
    votes for c_A could reach it (SHORT, also at the start when R lies beyond what n_max samples
    can certify).

    Soundness under optional stopping: P(certified at R although the true p_A is below the
    needed value) <= P(L_t >= p_A for some t) <= alpha. A BELOW_TARGET verdict is wrong (p_A is
    above the needed value after all) with probability <= alpha as well (``mixture``: both
    verdicts together <= alpha; ``union-cp``: <= alpha each).
    """

    radius: float

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (isinstance(self.radius, (int, float, np.floating)) and math.isfinite(self.radius)
                and self.radius >= 0):
            raise InvalidArgument(f"radius = {self.radius} must be a finite number >= 0")

    def _target(self, sigma: Array) -> Array:
        return self._threshold(self.radius, sigma)

    def _cap(self, sigma: Array) -> Array:
        return np.full(sigma.shape, np.inf)

    def _decide(self, state: State, idx: IntArray) -> None:
        """Fill in certified, reason and (if certified) radius of the points idx just updated."""
        certified = self._goal(state.lower[idx], state.target[idx])
        reason = np.full(idx.size, Reason.UNDECIDED, dtype=np.int8)
        reason[certified] = Reason.CERTIFIED
        reason[~certified & (state.upper[idx] < state.target[idx])] = Reason.BELOW_TARGET
        state.certified[idx] = certified
        state.reason[idx] = self._decide_common(state, idx, reason)
        self._set_radius(state, idx[certified])


# ---------------------------------------------------------------------------------------------
# Engine and benchmark helpers
# ---------------------------------------------------------------------------------------------


def draw_plan(schedule: ArrayLike) -> tuple[IntArray, IntArray]:
    """(rows, first_block) of each draw between consecutive checkpoints, for the engine's noise.

    Draw i takes rows[i] = t_i - t_(i-1) samples (t_0 = 0). Its noise blocks are the consecutive
    blocks of smoothviz.noise.block_sizes(rows[i]) numbered from first_block[i] (NoiseStream's
    ``first_blocks``), so no block number repeats within a point's estimation stream: every
    draw gets fresh, independent noise, and the noise of a point still depends only on
    (seed, point) because the schedule is fixed in advance.
    """
    sched = np.asarray(schedule, dtype=np.int64)
    if sched.ndim != 1 or sched.size == 0 or sched[0] < 1 or np.any(np.diff(sched) <= 0):
        raise InvalidArgument("schedule must be a strictly increasing sequence of integers >= 1")
    rows = np.diff(sched, prepend=0)
    blocks = -(-rows // NOISE_BLOCK)  # blocks of block_sizes(rows): ceil(rows / NOISE_BLOCK)
    first = np.concatenate([[0], np.cumsum(blocks)[:-1]]).astype(np.int64)
    return rows, first


def expected_samples(rule: RadiusRule | FixedRadiusRule, p: ArrayLike, sigma: ArrayLike = 1.0,
                     streams: int = 1000, seed: int = 0) -> tuple[Array, Array]:
    """Monte Carlo estimate of (mean estimation samples, certified fraction) per point.

    ``p`` holds each point's p_A (e.g. k/n of a fixed-n run's counts), ``sigma`` its noise level.
    Each point gets ``streams`` simulated Bernoulli(p) streams; between checkpoints the votes
    are drawn as Binomial(increment, p), which has exactly the law of the counts the rule reads.
    """
    if not isinstance(streams, (int, np.integer)) or streams < 1:
        raise InvalidArgument(f"streams = {streams} must be an integer >= 1")
    p = np.asarray(p, dtype=float)
    if not np.all((p >= 0) & (p <= 1)):
        raise InvalidArgument("p must lie in [0, 1]")
    p, s = np.broadcast_arrays(p, np.asarray(sigma, dtype=float))
    shape = p.shape
    pp, ss = np.repeat(p.ravel(), streams), np.repeat(s.ravel(), streams)
    rng = np.random.default_rng(seed)
    state = rule.start(ss)
    k = np.zeros(pp.size, dtype=np.int64)
    t = np.zeros(pp.size, dtype=np.int64)
    while True:
        need = rule.next_samples(state)
        if not need.any():
            break
        k = k + rng.binomial(need, pp)
        t = t + need
        state = rule.update(state, k, t)
    samples = state.t.reshape(-1, streams).mean(axis=1).reshape(shape)
    certified = state.certified.reshape(-1, streams).mean(axis=1).reshape(shape)
    return _out(samples), _out(certified)
