"""Anytime-valid certification statistics (smoothviz.sequential) against independent references.

The references never reuse the code under test: exact path probabilities by dynamic programming
over the binomial lattice, 50-digit mpmath for the mixture boundary, scipy's fixed-n
Clopper-Pearson bound, closed forms for all-A / no-A streams, and simulated Bernoulli streams
(numpy, seeded) for the error rates of the stopping rules under optional stopping.
"""

from __future__ import annotations

import math

import mpmath as mp
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy import special, stats

from smoothviz import bounds
from smoothviz import sequential as sq
from smoothviz.errors import InvalidArgument

PRIORS = [(0.5, 0.5, 0.0), (0.5, 0.5, 0.5), (2.0, 0.3, 0.1)]


def _cp_lower(k: int, m: int, level: float) -> float:
    return 0.0 if k == 0 else float(stats.beta.ppf(level, k, m - k + 1))


def _cp_upper(k: int, m: int, level: float) -> float:
    return 1.0 if k == m else float(stats.beta.ppf(1 - level, k + 1, m - k))


# ---------------------------------------------------------------------------------------------
# Exact probability that a sequence ever misses p, by dynamic programming over paths
# ---------------------------------------------------------------------------------------------


def _table(bounds_at, looks) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """(L, U) for k = 0..t at each t in ``looks``; bounds_at(k, t) takes the array k."""
    return {int(t): tuple(np.asarray(v) for v in bounds_at(np.arange(t + 1.0), int(t)))
            for t in looks}


def _exact_miss(table, p: float) -> tuple[float, float, float]:
    """P(ever L >= p), P(ever U <= p), P(either), looking at the t of ``table`` (up to its last).

    The mass of the paths that have not missed yet is propagated one Bernoulli(p) step at a time
    over the binomial lattice and removed where the bound misses p.
    """
    horizon = max(table)
    out = []
    for side in ("lower", "upper", "either"):
        mass = np.array([1.0])
        missed = 0.0
        for t in range(1, horizon + 1):
            new = np.zeros(t + 1)
            new[:-1] += mass * (1.0 - p)
            new[1:] += mass * p
            mass = new
            if t in table:
                low, up = table[t]
                miss = {"lower": low >= p, "upper": up <= p, "either": (low >= p) | (up <= p)}[side]
                missed += mass[miss].sum()
                mass[miss] = 0.0
        out.append(missed)
    return out[0], out[1], out[2]


P_GRID = [0.02, 0.1, 0.3, 0.5, 0.7, 0.9, 0.97, 0.995]


@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("alpha", [0.05, 0.2])
def test_mixture_exact_miss_probability_at_every_t(prior, alpha) -> None:
    """Two-sided, every t <= 60: the exact probability of ever excluding p stays <= alpha."""
    table = _table(lambda k, t: sq.mixture_bounds(k, t, alpha, *prior), range(1, 61))
    worst = 0.0
    for p in P_GRID:
        lo, up, either = _exact_miss(table, p)
        assert either <= alpha and lo <= either and up <= either, (p, lo, up, either)
        worst = max(worst, either)
    print(f"mixture {prior} alpha={alpha}: worst exact miss over t <= 60: {worst:.4f}")
    assert worst > 0.0  # the sequence does exclude p sometimes: the check is not vacuous


@pytest.mark.parametrize("alpha", [0.05, 0.2])
def test_union_cp_exact_miss_probability_at_checkpoints(alpha) -> None:
    """Each one-sided union-bound sequence: exact P(ever missing p) <= alpha over its checkpoints."""
    sched = sq.checkpoint_schedule(60, first=1, growth=1.3)
    assert sched.size >= 10
    table = _table(lambda k, t: sq.union_cp_bounds(k, t, alpha, sched), sched)
    for p in P_GRID:
        lo, up, _ = _exact_miss(table, p)
        assert lo <= alpha and up <= alpha, (p, lo, up)


def test_exact_dp_detects_peeking() -> None:
    """The same exact computation exposes a fresh fixed-n Clopper-Pearson bound read at every t."""
    alpha = 0.05

    def fresh(k, t):
        return (np.asarray(bounds.clopper_pearson_lower(k, t, alpha)),
                np.array([_cp_upper(int(v), t, alpha) for v in k]))

    table = _table(fresh, range(1, 61))
    lo, _, _ = _exact_miss(table, 0.5)
    single, _, _ = _exact_miss({60: table[60]}, 0.5)
    print(f"fresh CP read at every t <= 60: P(ever L >= p) = {lo:.4f}; read once at 60: {single:.4f}")
    assert single <= alpha
    assert lo > 2 * alpha


# ---------------------------------------------------------------------------------------------
# The mixture boundary against mpmath
# ---------------------------------------------------------------------------------------------


def _mp_bounds(k: int, t: int, alpha: float, a: float, b: float, w: float):
    """Ends of {p : M_t(p) < 1/alpha} at 50 digits, by bisection on the logit of p."""
    with mp.workdps(50):
        a, b, w = mp.mpf(a), mp.mpf(b), mp.mpf(w)
        log_beta = (mp.loggamma(a + k) + mp.loggamma(b + t - k) - mp.loggamma(a + b + t)
                    - mp.loggamma(a) - mp.loggamma(b) + mp.loggamma(a + b))
        mix = (1 - w) * mp.exp(log_beta) + (w if k == t else 0)
        log_mix, target = mp.log(mix), mp.log(1 / mp.mpf(alpha))

        def excess(y):  # log M_t(expit(y)) - log(1/alpha)
            return log_mix + k * mp.log1p(mp.exp(-y)) + (t - k) * mp.log1p(mp.exp(y)) - target

        def root(lo, hi):  # excess > 0 at lo, < 0 at hi (or the reverse)
            s_lo = excess(lo) > 0
            for _ in range(250):
                mid = (lo + hi) / 2
                if (excess(mid) > 0) == s_lo:
                    lo = mid
                else:
                    hi = mid
            return (lo + hi) / 2

        y_hat = mp.log(mp.mpf(k) / (t - k)) if 0 < k < t else None
        left = mp.mpf(-900)
        right = mp.mpf(900)
        y_low = None if k == 0 else root(left, y_hat if y_hat is not None else right)
        y_up = None if k == t else root(right, y_hat if y_hat is not None else left)

        def expit(y):
            return 1 / (1 + mp.exp(-y))

        low = mp.mpf(0) if y_low is None else expit(y_low)
        up = mp.mpf(1) if y_up is None else expit(y_up)
        return low, 1 - low, up, 1 - up


MP_CASES = [(0, 10), (10, 10), (1, 10), (5, 10), (3, 7), (990, 1000), (1, 1), (0, 10**6),
            (1, 10**6), (500_000, 10**6), (999_999, 10**6), (10**6, 10**6), (9_999_000, 10**7),
            (10**7, 10**7), (3, 10**7)]


@pytest.mark.parametrize("prior", PRIORS)
def test_mixture_bounds_match_mpmath(prior) -> None:
    a, b, w = prior
    alpha = 1e-3
    worst = 0.0
    for k, t in MP_CASES:
        low, up = sq.mixture_bounds(k, t, alpha, a, b, w)
        ref_low, ref_low_c, ref_up, ref_up_c = _mp_bounds(k, t, alpha, a, b, w)
        for got, ref, ref_c in ((low, ref_low, ref_low_c), (up, ref_up, ref_up_c)):
            # relative error of the value and of its complement (both tails keep their precision)
            scale = min(ref, ref_c)
            # a double near 1 cannot carry 1 - x to more than one ulp (2^-53) of absolute precision
            err = float(abs(mp.mpf(float(got)) - ref))
            assert err <= 1e-9 * scale + 2.0 ** -53, (k, t, got, ref)
            if scale > 0:
                worst = max(worst, float(max(err - 2.0 ** -53, 0) / scale))
    print(f"prior {prior}: largest relative error vs mpmath {worst:.2e}")


def test_log_martingale_matches_mpmath() -> None:
    for (k, t), p in [((3, 7), 0.2), ((10**6, 10**6), 0.999999), ((0, 10**6), 1e-7),
                      ((500_000, 10**6), 0.5001), ((10, 10), 0.9)]:
        for a, b, w in PRIORS:
            got = float(sq.mixture_log_martingale(p, k, t, a, b, w))
            with mp.workdps(50):
                mix = ((1 - mp.mpf(w)) * mp.beta(a + k, b + t - k) / mp.beta(a, b)
                       + (mp.mpf(w) if k == t else 0))
                ref = mp.log(mix) - k * mp.log(mp.mpf(p)) - (t - k) * mp.log(1 - mp.mpf(p))
            assert abs(got - float(ref)) <= 1e-9 * max(1.0, abs(float(ref))), (k, t, p, got, ref)


@settings(max_examples=300, deadline=None)
@given(t=st.integers(1, 10**8), frac=st.floats(0, 1), alpha=st.floats(1e-8, 0.5),
       a=st.floats(0.05, 5), b=st.floats(0.05, 5), w=st.floats(0, 0.95))
@example(t=15, frac=0.9375, alpha=1e-08, a=1.0, b=3.0, w=0.0)  # an upper end 2.5e-12 below 1
def test_mixture_ends_are_where_the_martingale_crosses(t, frac, alpha, a, b, w) -> None:
    """The root-finder against the direct formula of M_t: log M_t = log(1/alpha) at each end that
    is not 0 or 1, M_t < 1/alpha just inside, and L <= k/t <= U."""
    k = int(round(frac * t))
    low, up = sq.mixture_bounds(k, t, alpha, a, b, w)
    assert 0.0 <= low <= k / t <= up <= 1.0 and low < up
    level = math.log(1 / alpha)
    for end, inside in ((low, 0.5 * (low + k / t)), (up, 0.5 * (up + k / t))):
        if 0.0 < end < 1.0:
            got = float(sq.mixture_log_martingale(end, k, t, a, b, w))
            # the end is found to ~1e-13 relative in its logit, so log M_t there is level to
            # within its slope times that: allow 1e-6 relative to the level, and what a few ulps
            # of the end itself move log M_t (its slope (t-k)/(1-p) - k/p is ~1e12 next to 1)
            slope = abs((t - k) / (1.0 - end) - k / end)
            allowed = 1e-6 * max(1.0, level) + slope * 4 * math.ulp(end)
            assert abs(got - level) <= allowed, (k, t, end, got, level)
        if inside not in (low, up):
            assert float(sq.mixture_log_martingale(inside, k, t, a, b, w)) < level


# ---------------------------------------------------------------------------------------------
# Against the fixed-n Clopper-Pearson bound; convergence; monotonicity
# ---------------------------------------------------------------------------------------------

T_GRID = [1, 2, 5, 10, 100, 1000, 10**4, 10**5, 10**6, 10**7]


def _k_grid(t: int) -> np.ndarray:
    return np.unique(np.clip(np.round(np.array([0, 1, 0.05 * t, 0.5 * t, 0.9 * t, 0.99 * t,
                                                t - 1, t])), 0, t))


@pytest.mark.parametrize("alpha", [1e-3, 0.05])
def test_sequences_are_wider_than_fixed_n_clopper_pearson(alpha) -> None:
    """Anytime validity has a price: never a tighter bound than Clopper-Pearson at the same t."""
    for t in T_GRID:
        k = _k_grid(t)
        cp_low = np.array([_cp_lower(int(v), t, alpha) for v in k])
        cp_up = np.array([_cp_upper(int(v), t, alpha) for v in k])
        for a, b, w in PRIORS:
            low, up = sq.mixture_bounds(k, t, alpha, a, b, w)
            assert np.all(low <= cp_low * (1 + 1e-12)) and np.all(up >= cp_up * (1 - 1e-12)), t
        sched = np.array([t])
        low, up = sq.union_cp_bounds(k, t, alpha, sched)
        assert np.all(low <= cp_low * (1 + 1e-12)) and np.all(up >= cp_up * (1 - 1e-12)), t


@pytest.mark.parametrize("alpha", [1e-3, 0.05])
@pytest.mark.parametrize("w", [0.0, 0.5])
def test_mixture_width_within_documented_factor(alpha, w) -> None:
    """p_hat - L <= sqrt((log(1/alpha) + log(t)/2 + 2 - log(1-w)) / (z^2/2)) (p_hat - L_CP).

    The factor documented in mixture_bounds (100 <= t <= 1e7, 0.05 <= p_hat <= 0.99); it comes
    from the width sqrt(2 p (1-p) c / t) of a KL ball of radius c / t against z sqrt(p (1-p) / t).
    """
    z = stats.norm.isf(alpha)
    for t in [100, 1000, 10**4, 10**5, 10**6, 10**7]:
        k = np.round(np.array([0.05, 0.2, 0.5, 0.8, 0.95, 0.99]) * t)
        low, _ = sq.mixture_bounds(k, t, alpha, 0.5, 0.5, w)
        cp = np.array([_cp_lower(int(v), t, alpha) for v in k])
        c = math.log(1 / alpha) + 0.5 * math.log(t) + 2 - math.log1p(-w)
        factor = math.sqrt(c / (z * z / 2))
        ratio = (k / t - low) / (k / t - cp)
        assert np.all(ratio >= 1.0) and np.all(ratio <= factor), (t, ratio, factor)


def test_mixture_converges_to_p() -> None:
    rng = np.random.default_rng(11)
    p, alpha = 0.7, 1e-3
    widths = []
    for t in [10**3, 10**4, 10**5, 10**6, 10**7]:
        k = rng.binomial(t, p)
        low, up = sq.mixture_bounds(k, t, alpha)
        assert low < p < up
        widths.append(up - low)
    assert all(x > y for x, y in zip(widths, widths[1:]))
    assert widths[-1] < 2e-3


@pytest.mark.parametrize("method", sq.METHODS)
def test_bounds_monotone_in_votes_and_along_all_a_continuations(method) -> None:
    """L and U grow with k at fixed t; with all further votes for A the lower bound keeps growing
    along the checkpoints (the reason the SHORT verdict only needs the final checkpoint)."""
    rule = sq.FixedRadiusRule(alpha=1e-3, n_max=100_000, radius=0.25, method=method)
    sched = rule.schedule
    for j in [0, 3, 10, sched.size - 1]:
        t = int(sched[j])
        k = np.arange(t + 1) if t <= 5000 else np.unique(np.linspace(0, t, 5001).round())
        low, up = rule.bounds_at(k, np.full(k.size, j))
        assert np.all(np.diff(low) >= 0) and np.all(np.diff(up) >= 0), t
    for k0, j0 in [(0, 0), (10, 3), (40, 5)]:
        js = np.arange(j0, sched.size)
        k = k0 + sched[js] - sched[j0]
        low, _ = rule.bounds_at(k, js)
        assert np.all(np.diff(low) >= 0), (k0, j0)


# ---------------------------------------------------------------------------------------------
# Stopping rules under optional stopping: wrong certificates in simulation
# ---------------------------------------------------------------------------------------------

STREAMS = 20_000
ALPHA = 0.1


def _counts(p: float, schedule: np.ndarray, seed: int) -> np.ndarray:
    """Votes for A at each checkpoint of STREAMS independent Bernoulli(p) streams: (STREAMS, J)."""
    rng = np.random.default_rng(seed)
    rows = np.diff(schedule, prepend=0)
    return rng.binomial(rows, p, size=(STREAMS, rows.size)).cumsum(axis=1)


def _run(rule, counts: np.ndarray, sigma: float):
    """The rule's final state when every stream is read at each checkpoint until decided."""
    state = rule.start(np.full(counts.shape[0], sigma))
    for j, t in enumerate(rule.schedule):
        if state.decided.all():
            break
        assert np.all(rule.next_samples(state)[~state.decided] == t - state.t[~state.decided])
        state = rule.update(state, counts[:, j], np.full(counts.shape[0], t))
    assert state.decided.all()
    return state


def _ever_crossed(lower_at, counts: np.ndarray, schedule: np.ndarray, p: float) -> np.ndarray:
    """Adversarial stopping: stop the first time the lower bound reaches p (a wrong certificate)."""
    hit = np.zeros(counts.shape[0], dtype=bool)
    for j, t in enumerate(schedule):
        hit |= np.asarray(lower_at(counts[:, j], int(t))) >= p
    return hit


def _rate_ok(wrong: int, name: str) -> None:
    """The observed rate may exceed alpha by chance; its (1 - 1e-6) lower confidence bound may not."""
    print(f"{name}: {wrong}/{STREAMS} = {wrong / STREAMS:.4f} wrong (alpha = {ALPHA})")
    assert _cp_lower(wrong, STREAMS, 1e-6) <= ALPHA, (name, wrong)


@pytest.mark.parametrize("method", sq.METHODS)
def test_wrong_certificates_at_the_boundary_stay_below_alpha(method) -> None:
    """p exactly at a decision boundary: Phi(R / sigma) for R = 0.25, 1/2, and the sound p of
    input-dependent sigma. Certifying R at p = p_R is the limit of wrong certificates for p < p_R
    (the rule's event does not depend on p), so its rate bounds theirs. Then the same streams
    with a fresh fixed-n Clopper-Pearson bound after every block ("peeking"): the test tells."""
    growth = 1.25 if method == "mixture" else 2.0
    common = dict(alpha=ALPHA, n_max=4096, method=method, first=16, growth=growth)
    sigma, radius = 0.25, 0.25
    p_r = float(stats.norm.cdf(radius / sigma))
    fixed = sq.FixedRadiusRule(radius=radius, **common)
    sched = fixed.schedule
    counts = _counts(p_r, sched, seed=1)
    assert np.isclose(fixed.start([sigma]).target[0], p_r, rtol=1e-15)

    if method == "mixture":
        def lower(k, t):
            return sq.mixture_bounds(k, t, ALPHA, *fixed.prior)[0]
    else:
        def lower(k, t):
            return sq.union_cp_bounds(k, t, ALPHA, sched)[0]

    state = _run(fixed, counts, sigma)
    _rate_ok(int(state.certified.sum()), f"{method} fixed radius R=0.25 at p=Phi(1)")
    assert np.all(state.radius[state.certified] >= radius)
    adversarial = _ever_crossed(lower, counts, sched, p_r)
    _rate_ok(int(adversarial.sum()), f"{method} stop at first crossing of p=Phi(1)")
    assert not np.any(state.certified & ~adversarial)  # the rule certifies only where L crossed

    # radius mode with a cap and a stall tolerance: reported radius above the true radius
    capped = sq.RadiusRule(max_radius=0.3, tolerance=0.01, **common)
    state = _run(capped, counts, sigma)
    true_radius = sigma * stats.norm.ppf(p_r)
    _rate_ok(int(np.sum(state.radius > true_radius)), f"{method} radius mode at p=Phi(1)")
    assert np.any(state.reason == sq.Reason.RADIUS_CAP)
    assert np.any(state.reason == sq.Reason.STALLED)

    # p = 1/2: any certificate at all is wrong
    half = _counts(0.5, sched, seed=2)
    state = _run(sq.RadiusRule(**common), half, sigma)
    _rate_ok(int(state.certified.sum()), f"{method} radius mode at p=1/2")
    _rate_ok(int(_ever_crossed(lower, half, sched, 0.5).sum()), f"{method} first crossing of 1/2")

    # input-dependent sigma: p exactly at the sound threshold (inverted input_dependent_radius)
    r, dim, rad = 0.5, 64, 0.1
    p_in = float(sq.certify_threshold(rad, sigma, r, dim))
    assert p_in > stats.norm.cdf(rad / sigma) + 0.05  # Cohen's formula would ask for far less
    rule = sq.FixedRadiusRule(radius=rad, r=r, dim=dim, **common)
    state = _run(rule, _counts(p_in, sched, seed=3), sigma)
    _rate_ok(int(state.certified.sum()), f"{method} fixed radius, input-dependent sigma, p=p_R")
    assert np.all(bounds.input_dependent_radius(state.lower[state.certified], sigma, r, dim) >= rad)

    # the broken rule on the same streams: a fresh level-alpha bound after every block
    def fresh(k, t):
        return bounds.clopper_pearson_lower(k, t, ALPHA)

    peeking = int(_ever_crossed(fresh, counts, sched, p_r).sum())
    once = int(np.sum(np.asarray(fresh(counts[:, -1], int(sched[-1]))) >= p_r))
    print(f"peeking CP ({sched.size} looks): {peeking}/{STREAMS}; read once at n_max: {once}/{STREAMS}")
    assert _cp_lower(peeking, STREAMS, 1e-6) > ALPHA  # significantly above alpha: the test tells
    # one look at a fixed n is (nearly) exact: the simulation measures rates near alpha
    assert _cp_lower(once, STREAMS, 1e-6) <= ALPHA and once / STREAMS > ALPHA / 2


# ---------------------------------------------------------------------------------------------
# Rules: exact outcomes for deterministic streams, savings, the engine's plan, bad input
# ---------------------------------------------------------------------------------------------


def _all_a_lower(t: np.ndarray, alpha: float, a: float, b: float, w: float) -> np.ndarray:
    """Closed form at k = t: M_t(p) = (w + (1-w) B(a+t, b)/B(a, b)) p^-t = 1/alpha."""
    mix = w + (1 - w) * np.exp(special.betaln(a + t, b) - special.betaln(a, b))
    return np.exp(-(math.log(1 / alpha) - np.log(mix)) / t)


def test_all_a_and_no_a_streams_stop_where_the_closed_form_says() -> None:
    alpha, sigma, radius = 1e-3, 0.25, 0.5
    rule = sq.FixedRadiusRule(alpha=alpha, n_max=100_000, radius=radius)
    p_r = stats.norm.cdf(radius / sigma)
    sched = rule.schedule.astype(float)
    first_ok = sched[np.argmax(_all_a_lower(sched, alpha, *rule.prior) >= p_r)]
    samples, certified = sq.expected_samples(rule, 1.0, sigma, streams=3)
    assert samples == first_ok and certified == 1.0
    assert bounds.clopper_pearson_lower(first_ok, first_ok, alpha) >= p_r  # no free lunch
    # no vote for A: U_t = 1 - exp(-c/t) with c = log(1/alpha) + log(B(a, b) / B(a, b + t)) - log(1-w)
    a, b, w = rule.prior
    c = math.log(1 / alpha) + special.betaln(a, b) - special.betaln(a, b + sched) - math.log1p(-w)
    first_below = sched[np.argmax(-np.expm1(-c / sched) < p_r)]
    samples, certified = sq.expected_samples(rule, 0.0, sigma, streams=3)
    assert samples == first_below and certified == 0.0


def test_radius_mode_stalls_after_a_doubling_without_gain() -> None:
    """All votes for A: the radius is first positive at the first checkpoint t_0 where the
    closed-form lower bound exceeds 1/2; with a tolerance no doubling can meet, the rule stops
    at the first checkpoint >= 2 t_0; with a tiny one it runs to the budget."""
    alpha, n_max = 1e-3, 20_000
    lazy = sq.RadiusRule(alpha=alpha, n_max=n_max, tolerance=10.0)
    sched = lazy.schedule.astype(float)
    t0 = sched[np.argmax(_all_a_lower(sched, alpha, *lazy.prior) > 0.5)]
    samples, certified = sq.expected_samples(lazy, 1.0, 0.25, streams=2)
    assert samples == sched[np.argmax(sched >= 2 * t0)] and certified == 1.0
    eager = sq.RadiusRule(alpha=alpha, n_max=n_max, tolerance=1e-9)
    samples, _ = sq.expected_samples(eager, 1.0, 0.25, streams=2)
    assert samples == n_max


def test_fixed_radius_saves_samples_for_confident_points() -> None:
    """A digits-like point (p_A = 0.999) at R = 0.25, sigma = 0.25: decided in < 1 % of n_max."""
    n_max = 100_000
    for method in sq.METHODS:
        rule = sq.FixedRadiusRule(alpha=1e-3, n_max=n_max, radius=0.25, method=method)
        samples, certified = sq.expected_samples(rule, 0.999, 0.25, streams=400, seed=5)
        assert certified > 0.99 and samples < 0.01 * n_max, (method, samples, certified)


def test_radius_beyond_the_budget_is_short_at_once() -> None:
    rule = sq.FixedRadiusRule(alpha=1e-3, n_max=1000, radius=1.0)  # needs p_A > Phi(4)
    state = rule.start([0.25, 0.25])
    assert np.all(state.reason == sq.Reason.SHORT) and np.all(rule.next_samples(state) == 0)
    reachable = sq.FixedRadiusRule(alpha=1e-3, n_max=10**6, radius=1.0).start([0.25])
    assert reachable.reason[0] == sq.Reason.UNDECIDED


def test_radius_mode_reports_the_sound_radius() -> None:
    rng = np.random.default_rng(4)
    for r, dim in [(0.0, None), (0.3, 64)]:
        rule = sq.RadiusRule(alpha=1e-3, n_max=20_000, r=r, dim=dim)
        sched = rule.schedule
        k = rng.binomial(np.diff(sched, prepend=0), 0.95, size=(20, sched.size)).cumsum(axis=1)
        state = _run(rule, k, 0.3)
        assert np.all(state.reason == sq.Reason.BUDGET) and np.all(state.t == 20_000)
        low, _ = sq.mixture_bounds(k, sched, 1e-3, *rule.prior)
        assert np.array_equal(state.lower, low.max(axis=1))
        want = (0.3 * stats.norm.ppf(state.lower) if r == 0
                else bounds.input_dependent_radius(state.lower, 0.3, r, dim))
        np.testing.assert_allclose(state.radius, want, rtol=1e-12)


def test_certify_threshold_inverts_the_sound_radius() -> None:
    sigma = np.array([0.12, 0.25, 0.5])
    for r, dim in [(0.1, 64), (0.02, 784)]:
        p = sq.certify_threshold(0.3, sigma, r, dim)
        at = bounds.input_dependent_radius(p, sigma, r, dim)
        below = bounds.input_dependent_radius(p - 1e-9 * (1 - p), sigma, r, dim)
        assert np.all((p > stats.norm.cdf(0.3 / sigma)) & (at >= 0.3) & (below < 0.3)), (r, p)
    np.testing.assert_allclose(sq.certify_threshold(0.3, sigma), stats.norm.cdf(0.3 / sigma),
                               rtol=1e-15)
    assert sq.certify_threshold(0.0, 0.25, 0.1, 64) == 0.5
    assert sq.certify_threshold(50.0, 0.25, 0.1, 64) == 1.0  # beyond any p_A < 1


def test_schedule_and_draw_plan_fit_the_engine_noise_blocks() -> None:
    noise = pytest.importorskip("smoothviz.noise", reason="smoothviz.noise needs torch")
    assert noise.NOISE_BLOCK == sq.NOISE_BLOCK
    for n_max, first, growth in [(100_000, 16, 1.25), (100_000, 64, 2.0), (5000, 7, 1.7),
                                 (3, 16, 2.0)]:
        sched = sq.checkpoint_schedule(n_max, first, growth)
        assert sched[-1] == n_max and np.all(np.diff(sched) > 0)
        big = sched[:-1][sched[:-1] >= sq.NOISE_BLOCK]
        assert np.all(big % sq.NOISE_BLOCK == 0)
        rows, first_block = sq.draw_plan(sched)
        assert rows.sum() == n_max
        numbers = [first_block[i] + b for i, r in enumerate(rows)
                   for b in range(len(noise.block_sizes(r)))]
        assert numbers == list(range(len(numbers)))  # every block number once: fresh noise per draw
    # a rule hands each undecided point its next draw from that plan
    rule = sq.FixedRadiusRule(alpha=0.01, n_max=5000, radius=0.25)
    rows, first_block = sq.draw_plan(rule.schedule)
    state = rule.start([0.25, 0.25])
    state = rule.update(state, [rule.schedule[0], 0], [rule.schedule[0]] * 2)
    assert list(state.reason) == [sq.Reason.UNDECIDED, sq.Reason.BELOW_TARGET]
    need, block = rule.next_draw(state)
    assert list(need) == [rows[1], 0] and block[0] == first_block[1]


def test_checkpoint_alpha_spends_at_most_alpha() -> None:
    j = np.arange(1, 10**6 + 1)
    spent = sq.checkpoint_alpha(j, 0.05)
    assert spent[0] == pytest.approx(0.05 * 6 / math.pi ** 2) and spent.sum() < 0.05
    assert spent.sum() > 0.05 * (1 - 1e-5)


def test_update_refuses_counts_off_the_schedule() -> None:
    rule = sq.RadiusRule(alpha=0.01, n_max=1000)
    state = rule.start([0.25, 0.25])
    t = rule.schedule[0]
    with pytest.raises(InvalidArgument, match="next checkpoint"):
        rule.update(state, [1, 1], [t + 1, t])
    with pytest.raises(InvalidArgument, match="running count"):
        rule.update(state, [t + 1, 0], [t, t])
    with pytest.raises(InvalidArgument, match="one count per point"):
        rule.update(state, [1], [t])
    new = rule.update(state, [t, 0], [t, t])
    assert np.all(state.t == 0) and np.all(new.t == t)  # the old state is left as it was
    with pytest.raises(InvalidArgument, match="running count"):
        rule.update(new, [0, 0], [rule.schedule[1]] * 2)


@pytest.mark.parametrize("call", [
    lambda: sq.mixture_bounds(3, 2, 0.1),
    lambda: sq.mixture_bounds(1.5, 2, 0.1),
    lambda: sq.mixture_bounds(1, 2, 1.0),
    lambda: sq.mixture_bounds(1, 2, 0.1, a=0.0),
    lambda: sq.mixture_bounds(1, 2, 0.1, mass_at_one=1.0),
    lambda: sq.mixture_log_martingale(1.5, 1, 2),
    lambda: sq.union_cp_bounds(1, 3, 0.1, [2, 4]),
    lambda: sq.union_cp_bounds(1, 2, 0.1, [4, 2]),
    lambda: sq.checkpoint_schedule(0),
    lambda: sq.checkpoint_schedule(100, growth=1.001),
    lambda: sq.checkpoint_alpha(0, 0.1),
    lambda: sq.certify_threshold(-1.0, 0.25),
    lambda: sq.certify_threshold(0.5, 0.25, r=0.1),
    lambda: sq.sound_radius(0.9, 0.25, r=-1.0),
    lambda: sq.RadiusRule(alpha=0.1, n_max=100, method="cp"),
    lambda: sq.RadiusRule(alpha=0.1, n_max=100, tolerance=-1.0),
    lambda: sq.RadiusRule(alpha=0.1, n_max=100, max_radius=0.0),
    lambda: sq.FixedRadiusRule(alpha=0.1, n_max=100, radius=math.inf),
    lambda: sq.FixedRadiusRule(alpha=0.1, n_max=100, radius=0.5).start([0.0]),
    lambda: sq.expected_samples(sq.RadiusRule(alpha=0.1, n_max=100), 1.2),
    lambda: sq.draw_plan([3, 3]),
])
def test_bad_input_raises_invalid_argument(call) -> None:
    with pytest.raises(InvalidArgument) as err:
        call()
    assert "\n" not in str(err.value)
