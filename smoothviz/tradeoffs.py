"""Trade-offs between certification runs, each number with its uncertainty.

Certified accuracy at a radius is an estimate from a few hundred test points, so every figure
here comes with an interval: exact Clopper-Pearson or a seeded percentile bootstrap over the test
points, the reference code's high-probability correction for wrong certificates, paired
intervals for two runs on the same points, envelopes and Pareto fronts across runs, sweep grids
and per-class gaps.

A point counts as certified at radius R when it is correct and its radius is >= R (Cohen et al.
2019, section 4; a missing radius counts as 0), as in smoothviz.analysis. Functions take the
per-point results frames of ``Store.results`` (columns ``idx``, ``label``, ``correct``,
``radius``, ``naive_radius``), or plain arrays, and return pandas frames or numpy arrays. Levels
are written beta: an interval has (nominal) coverage 1 - beta. Only numpy, scipy and pandas.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy import special, stats

from smoothviz.analysis import DEFAULT_RADII, run_ceiling
from smoothviz.errors import InvalidArgument

__all__ = [
    "EnvelopeTable",
    "GridView",
    "accuracy_intervals",
    "bootstrap_interval",
    "class_gap_interval",
    "clopper_pearson_interval",
    "envelope",
    "envelope_counts",
    "envelope_table",
    "fairness_interval",
    "grid_view",
    "high_probability_accuracy",
    "high_probability_bound",
    "interval_columns",
    "interval_table",
    "paired_counts",
    "paired_difference",
    "paired_difference_interval",
    "pareto_front",
    "pareto_mask",
    "per_class_intervals",
    "versus_constant",
    "waterfall_position",
]

Array = NDArray[np.float64]
Seed = int | np.random.Generator

# Bootstrap resamples are drawn in blocks of about this many indices (32 MiB of int64).
_BOOT_BLOCK = 1 << 22


# ---------------------------------------------------------------------------------------------
# Argument checks and the certified-at-R matrix
# ---------------------------------------------------------------------------------------------


def _level(name: str, value: float) -> float:
    """A probability strictly inside (0, 1), else InvalidArgument naming it."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise InvalidArgument(f"{name} {value!r}: expected a probability strictly between 0 and 1") from None
    if not 0.0 < value < 1.0:
        raise InvalidArgument(f"{name} {value!r}: expected a probability strictly between 0 and 1")
    return value


def _n_boot(n_boot: int) -> int:
    if not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise InvalidArgument(f"n_boot {n_boot!r}: expected a positive whole number of resamples")
    return int(n_boot)


def _radii(radii: Sequence[float] | ArrayLike) -> Array:
    """Radii as a 1-D float array, in the order given; finite and >= 0."""
    out = np.atleast_1d(np.asarray(radii, dtype=float))
    if out.ndim != 1 or out.size == 0 or not np.all(np.isfinite(out)) or np.any(out < 0):
        raise InvalidArgument(f"radii {radii!r}: expected one or more finite radii >= 0")
    return out


def _radius(r: float) -> float:
    return float(_radii([r])[0])


def _radius_column(use: str) -> str:
    if use in ("naive", "naive_radius"):
        return "naive_radius"
    if use in ("radius", "sound"):
        return "radius"
    raise InvalidArgument(f"use {use!r}: expected 'radius' (sound) or 'naive_radius'")


def _columns(results: pd.DataFrame, name: str, *columns: str) -> None:
    if not isinstance(results, pd.DataFrame):
        raise InvalidArgument(f"{name}: expected a per-point results DataFrame, got {type(results).__name__}")
    missing = [c for c in columns if c not in results.columns]
    if missing:
        raise InvalidArgument(f"{name}: results lack the column(s) {', '.join(missing)}")


def _certified(results: pd.DataFrame, radii: Array, use: str, name: str = "results") -> NDArray[np.bool_]:
    """Boolean matrix (points, radii): point certified at each radius (correct and radius >= R)."""
    column = _radius_column(use)
    _columns(results, name, "correct", column)
    radius = results[column].to_numpy(dtype=float)
    radius = np.where(np.isnan(radius), 0.0, radius)
    correct = results["correct"].to_numpy(dtype=bool)
    return correct[:, None] & (radius[:, None] >= radii[None, :])


def _runs(runs: Mapping[str, pd.DataFrame]) -> tuple[list[str], list[pd.DataFrame]]:
    if not isinstance(runs, Mapping) or len(runs) == 0:
        raise InvalidArgument("runs: expected a non-empty mapping of run name to results DataFrame")
    return [str(k) for k in runs], list(runs.values())


def _rng(seed: Seed) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


# ---------------------------------------------------------------------------------------------
# Intervals for one proportion
# ---------------------------------------------------------------------------------------------


def clopper_pearson_interval(k: ArrayLike, n: ArrayLike, beta: float = 0.05) -> tuple[Array, Array]:
    """Two-sided exact (Clopper-Pearson 1934) interval of a binomial proportion at level 1 - beta.

    Lower end Beta(beta/2; k, n-k+1) (0 at k = 0), upper end Beta(1-beta/2; k+1, n-k) (1 at
    k = n), each tail at most beta/2, so the coverage is >= 1 - beta for every true p. The
    upper end uses the inverse survival function, accurate for small beta. NaN where n = 0.
    Broadcasts k and n; scalars in give numpy scalars out.
    """
    beta = _level("beta", beta)
    k, n = np.broadcast_arrays(np.asarray(k, dtype=float), np.asarray(n, dtype=float))
    if np.any(~np.isfinite(k) | ~np.isfinite(n) | (k < 0) | (k > n)
              | (k != np.round(k)) | (n != np.round(n))):
        raise InvalidArgument("k, n: expected whole counts with 0 <= k <= n")
    with np.errstate(invalid="ignore", divide="ignore"):
        low = np.where(k <= 0, 0.0, stats.beta.ppf(beta / 2, k, n - k + 1.0))
        high = np.where(k >= n, 1.0, stats.beta.isf(beta / 2, k + 1.0, n - k))
    empty = n == 0
    low, high = np.where(empty, np.nan, low), np.where(empty, np.nan, high)
    return (low[()], high[()]) if low.ndim == 0 else (low, high)


def _boot_sums(values: Array, n_boot: int, rng: np.random.Generator, strata: NDArray[np.int64] | None = None
               ) -> Array:
    """Column sums of values (n, m) over n_boot resamples of its rows: shape (n_boot, m).

    Without strata a resample is n draws with replacement from all rows. With strata (a
    non-decreasing stratum number per row, rows of one stratum contiguous) each row's draw is
    taken from its own stratum's rows, so every resample keeps the strata sizes. Resamples are
    drawn in blocks as counts (how often each row is drawn), then summed by one product.
    """
    n = values.shape[0]
    if strata is None:
        starts = np.zeros(1, dtype=np.int64)
    else:
        starts = np.flatnonzero(np.r_[True, strata[1:] != strata[:-1]])
    bounds = np.r_[starts, n]
    block = max(1, _BOOT_BLOCK // max(n, 1))
    sums = []
    for start in range(0, n_boot, block):
        b = min(block, n_boot - start)
        draws = np.empty((b, n), dtype=np.int64)
        for lo, hi in itertools.pairwise(bounds):
            draws[:, lo:hi] = lo + rng.integers(0, hi - lo, size=(b, hi - lo))
        draws += n * np.arange(b)[:, None]
        sums.append(np.bincount(draws.ravel(), minlength=b * n).reshape(b, n) @ values)
    return np.concatenate(sums)


def _percentile(replicates: Array, beta: float) -> tuple[Array, Array]:
    low, high = np.quantile(replicates, [beta / 2, 1 - beta / 2], axis=0)
    return low, high


def bootstrap_interval(
    values: ArrayLike, beta: float = 0.05, n_boot: int = 2000, seed: Seed = 0
) -> tuple[Array, Array]:
    """Percentile bootstrap interval (Efron 1979) of the mean of values, seeded.

    ``values`` is (n,) or (n, m): points in rows; one interval per column, all columns from the
    same resamples of the points (so a curve's band is one set of resamples). The same seed gives
    the same interval. Coverage is approximate: near nominal for moderate n and a mean away from
    0 and 1, below nominal for small n or extreme proportions (with every value 0 the interval is
    [0, 0]); use Clopper-Pearson where a guarantee is wanted. NaN for no points.
    """
    beta, n_boot = _level("beta", beta), _n_boot(n_boot)
    vals = np.asarray(values, dtype=float)
    if vals.ndim not in (1, 2) or not np.all(np.isfinite(vals)):
        raise InvalidArgument("values: expected a finite 1-D or 2-D array with points in rows")
    flat = vals.ndim == 1
    vals = vals[:, None] if flat else vals
    if vals.shape[0] == 0:
        low = high = np.full(vals.shape[1], np.nan)
    else:
        low, high = _percentile(_boot_sums(vals, n_boot, _rng(seed)) / vals.shape[0], beta)
    return (low[0], high[0]) if flat else (low, high)


def accuracy_intervals(
    results: pd.DataFrame,
    radii: Sequence[float] = DEFAULT_RADII,
    beta: float = 0.05,
    method: str = "clopper-pearson",
    n_boot: int = 2000,
    seed: Seed = 0,
    use: str = "radius",
) -> pd.DataFrame:
    """Certified accuracy at each radius with a (1 - beta) interval over the test points.

    The interval is about the population the test points were drawn from: ``clopper-pearson``
    (exact, coverage >= 1 - beta at each radius) or ``bootstrap`` (percentile, seeded,
    approximate; one set of resamples for all radii). Intervals are pointwise: each radius's
    covers with the stated probability, not all radii at once (for a simultaneous band over m
    radii pass beta / m: Bonferroni). Columns radius, points, certified (count),
    certified_accuracy, low, high; one row per radius in the order given, NaN for no points.
    """
    grid = _radii(radii)
    cert = _certified(results, grid, use)
    n = cert.shape[0]
    k = cert.sum(axis=0)
    if method == "clopper-pearson":
        low, high = clopper_pearson_interval(k, n, beta)
    elif method == "bootstrap":
        low, high = bootstrap_interval(cert.astype(float), beta, n_boot, seed)
    else:
        raise InvalidArgument(f"method {method!r}: expected 'clopper-pearson' or 'bootstrap'")
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = k / n if n else np.full(grid.shape, np.nan)
    return pd.DataFrame({"radius": grid, "points": n, "certified": k, "certified_accuracy": acc,
                         "low": low, "high": high})


# ---------------------------------------------------------------------------------------------
# The reference code's high-probability certified accuracy
# ---------------------------------------------------------------------------------------------


def high_probability_bound(
    accuracy: ArrayLike, n: ArrayLike, alpha: float, rho: float, method: str = "reference"
) -> Array:
    """Certified accuracy corrected for the chance alpha that each point's certificate is wrong.

    Each of the n points' certificate fails with probability <= alpha, independently (separate
    Monte Carlo noise per point; Cohen et al. 2019, Proposition 2), so the number of wrong
    certificates is stochastically at most Binomial(n, alpha). With probability >= 1 - rho over
    the Monte Carlo noise, the smoothed classifier's true certified accuracy on these n points is
    at least the returned value (the test points are fixed: this is not an interval over them).

    ``reference``: exactly the formula of the reference code (locuslab/smoothing, code/analyze.py,
    class HighProbAccuracy, at_radius), natural logarithms:
        accuracy - alpha - sqrt(alpha (1 - alpha) log(1/rho) / n) - log(1/rho) / (3 n).
    Kept for comparison with published numbers. It is Bernstein-shaped but its square-root term
    lacks the factor 2 of Bernstein's inequality (Boucheron, Lugosi, Massart 2013, Corollary
    2.11, which gives sqrt(2 alpha (1 - alpha) log(1/rho) / n) + log(1/rho) / (3 n) for [0, 1]
    variables), and it is not a (1 - rho) bound in general: at n = 10,000, alpha = rho = 0.001
    the binomial tail beyond its correction is 0.0016 > rho (exact; tests/test_tradeoffs.py).

    ``binomial``: accuracy - w/n with w the smallest count that Binomial(n, alpha) exceeds with
    probability <= rho (scipy's binom.isf): the exact tail, so a valid (1 - rho) bound, and
    the smallest correction of that form.

    Neither is clipped at 0 (a negative value guarantees nothing). Broadcasts accuracy and n.
    """
    alpha, rho = _level("alpha", alpha), _level("rho", rho)
    acc, n = np.broadcast_arrays(np.asarray(accuracy, dtype=float), np.asarray(n, dtype=float))
    if np.any(~(acc >= 0) | ~(acc <= 1)):
        raise InvalidArgument("accuracy: expected values in [0, 1]")
    if np.any(~np.isfinite(n) | (n < 1) | (n != np.round(n))):
        raise InvalidArgument("n: expected a positive whole number of points")
    if method == "reference":
        log_inv = -np.log(rho)
        out = acc - alpha - np.sqrt(alpha * (1.0 - alpha) * log_inv / n) - log_inv / (3.0 * n)
    elif method == "binomial":
        out = acc - stats.binom.isf(rho, n, alpha) / n
    else:
        raise InvalidArgument(f"method {method!r}: expected 'reference' or 'binomial'")
    return out[()] if out.ndim == 0 else out


def high_probability_accuracy(
    results: pd.DataFrame,
    radii: Sequence[float] = DEFAULT_RADII,
    alpha: float = 0.001,
    rho: float = 0.001,
    method: str = "reference",
    use: str = "radius",
) -> pd.DataFrame:
    """Certified accuracy and its high-probability version at each radius (high_probability_bound).

    ``alpha`` is the run's per-point failure probability (its CERTIFY alpha). Columns radius,
    points, certified_accuracy, high_probability; NaN for no points.
    """
    grid = _radii(radii)
    alpha, rho = _level("alpha", alpha), _level("rho", rho)
    cert = _certified(results, grid, use)
    n = cert.shape[0]
    if n == 0:
        acc = hp = np.full(grid.shape, np.nan)
    else:
        acc = cert.mean(axis=0)
        hp = high_probability_bound(acc, n, alpha, rho, method)
    return pd.DataFrame({"radius": grid, "points": n, "certified_accuracy": acc, "high_probability": hp})


def interval_table(
    results: pd.DataFrame,
    radii: Sequence[float] = DEFAULT_RADII,
    beta: float = 0.05,
    method: str = "clopper-pearson",
    hp: tuple[float, float] | None = None,
    n_boot: int = 2000,
    seed: Seed = 0,
    use: str = "radius",
) -> pd.DataFrame:
    """The certified-accuracy table with its error bars: ``accuracy_intervals`` (columns radius,
    points, certified, certified_accuracy, low, high) and, with ``hp`` = (alpha, rho), the
    high-probability certified accuracy by the reference code's formula (``hp_reference``, not
    a valid bound in general) and by the exact binomial tail (``hp_binomial``, valid at 1 - rho)."""
    out = accuracy_intervals(results, radii, beta, method, n_boot, seed, use)
    if hp is not None:
        alpha, rho = hp
        for name in ("reference", "binomial"):
            out[f"hp_{name}"] = high_probability_accuracy(results, radii, alpha, rho, name, use)["high_probability"]
    return out


def interval_columns(
    runs: Mapping[str, pd.DataFrame],
    radii: Sequence[float] = DEFAULT_RADII,
    beta: float = 0.05,
    method: str = "clopper-pearson",
    use: str = "radius",
) -> pd.DataFrame:
    """One row per run (indexed by its name, in order): the ends of its certified accuracy's
    (1 - beta) interval at each radius, columns ``R=<r> low`` and ``R=<r> high`` (beside the
    ``R=<r>`` columns of ``analysis.compare_table``)."""
    names, frames = _runs(runs)
    grid = _radii(radii)
    rows = []
    for frame in frames:
        table = accuracy_intervals(frame, grid, beta, method, use=use)
        row: dict[str, float] = {}
        for r, low, high in zip(grid, table["low"], table["high"]):
            row[f"R={r:g} low"], row[f"R={r:g} high"] = float(low), float(high)
        rows.append(row)
    return pd.DataFrame(rows, index=pd.Index(names, name="run"))


# ---------------------------------------------------------------------------------------------
# Two runs on the same points
# ---------------------------------------------------------------------------------------------


def _paired_certified(
    results_a: pd.DataFrame, results_b: pd.DataFrame, radii: Array, intersect: bool, use: str
) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """Certified matrices of two runs over their shared points, rows aligned by idx."""
    _columns(results_a, "results_a", "idx")
    _columns(results_b, "results_b", "idx")
    for name, df in (("results_a", results_a), ("results_b", results_b)):
        if df["idx"].duplicated().any():
            raise InvalidArgument(f"{name}: a point idx appears more than once")
    ia, ib = results_a["idx"].to_numpy(), results_b["idx"].to_numpy()
    shared = np.intersect1d(ia, ib)
    only_a, only_b = ia.size - shared.size, ib.size - shared.size
    if (only_a or only_b) and not intersect:
        raise InvalidArgument(f"results_b: the runs cover different points ({only_a} only in a, {only_b} "
                              f"only in b); pass intersect=True to compare the {shared.size} shared points")
    if shared.size == 0:
        raise InvalidArgument("results_b: the runs share no points")
    a = results_a.set_index("idx").loc[shared].reset_index()
    b = results_b.set_index("idx").loc[shared].reset_index()
    labelled = "label" in a.columns and "label" in b.columns
    if labelled and np.any(a["label"].to_numpy() != b["label"].to_numpy()):
        raise InvalidArgument("results_b: the same idx has another label in each run (different datasets?)")
    return _certified(a, radii, use, "results_a"), _certified(b, radii, use, "results_b")


def paired_counts(
    results_a: pd.DataFrame,
    results_b: pd.DataFrame,
    radii: Sequence[float] = DEFAULT_RADII,
    intersect: bool = False,
    use: str = "radius",
) -> pd.DataFrame:
    """The 2x2 table of two runs at each radius, joined on idx.

    Columns radius, points, both, only_a (certified by a, not b), only_b, neither. Runs on
    different point sets are refused unless ``intersect`` (then the shared points are used).
    """
    grid = _radii(radii)
    ca, cb = _paired_certified(results_a, results_b, grid, intersect, use)
    return pd.DataFrame({
        "radius": grid, "points": ca.shape[0], "both": (ca & cb).sum(axis=0),
        "only_a": (ca & ~cb).sum(axis=0), "only_b": (~ca & cb).sum(axis=0),
        "neither": (~ca & ~cb).sum(axis=0),
    })


def _wilson(k: Array, n: Array, z: float) -> tuple[Array, Array]:
    """Wilson (1927) score interval of k/n."""
    denom = n + z * z
    centre = (k + z * z / 2) / denom
    half = z * np.sqrt(k * (n - k) / n + z * z / 4) / denom
    return centre - half, centre + half


def paired_difference_interval(
    both: ArrayLike, only_a: ArrayLike, only_b: ArrayLike, neither: ArrayLike,
    beta: float = 0.05, method: str = "bonferroni",
) -> tuple[Array, Array]:
    """(1 - beta) interval of p_a - p_b from paired counts (p_a - p_b = p(only a) - p(only b)).

    ``bonferroni``: Clopper-Pearson at level 1 - beta/2 for the probability of each discordant
    cell (each cell count is binomial over the n points); both cover together with probability
    >= 1 - beta (Bonferroni), hence p_a - p_b lies in [low(only a) - high(only b),
    high(only a) - low(only b)] with probability >= 1 - beta for every joint distribution.
    Conservative: its width follows the discordant pairs only (what pairing gains) but is
    larger than Newcombe's.

    ``newcombe``: Newcombe's square-and-add (hybrid score) interval for paired proportions
    (Newcombe 1998, Stat. Med. 17:2635, method 10): Wilson intervals of both margins combined
    through the correlation phi of the 2x2 table, with Newcombe's correction of ad - bc (reduced
    by n/2 when above n/2, 0 between 0 and n/2, kept when negative; phi = 0 when a margin is
    empty), as in Fagerland, Lydersen, Laake, "Statistical Analysis of Contingency Tables"
    (2017), chapter 8. Coverage near nominal, not guaranteed (it can dip below 1 - beta).

    Ends are clipped to [-1, 1]; NaN where there are no points. Broadcasts the counts.
    """
    beta = _level("beta", beta)
    a, b, c, d = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (both, only_a, only_b, neither)))
    if np.any(~np.isfinite(a + b + c + d) | (np.minimum(np.minimum(a, b), np.minimum(c, d)) < 0)):
        raise InvalidArgument("both, only_a, only_b, neither: expected counts >= 0")
    n = a + b + c + d
    with np.errstate(invalid="ignore", divide="ignore"):
        if method == "bonferroni":
            low_b, high_b = clopper_pearson_interval(b, n, beta / 2)
            low_c, high_c = clopper_pearson_interval(c, n, beta / 2)
            low, high = low_b - high_c, high_b - low_c
        elif method == "newcombe":
            z = -special.ndtri(beta / 2)
            p1, p2 = (a + b) / n, (a + c) / n
            l1, u1 = _wilson(a + b, n, z)
            l2, u2 = _wilson(a + c, n, z)
            margins = (a + b) * (c + d) * (a + c) * (b + d)
            cross = a * d - b * c
            cross = np.where(cross > n / 2, cross - n / 2, np.where(cross < 0, cross, 0.0))
            phi = np.where(margins > 0, cross / np.sqrt(np.where(margins > 0, margins, 1.0)), 0.0)
            dl1, du1, dl2, du2 = p1 - l1, u1 - p1, p2 - l2, u2 - p2
            delta = np.sqrt(np.maximum(dl1 ** 2 - 2 * phi * dl1 * du2 + du2 ** 2, 0.0))
            eps = np.sqrt(np.maximum(du1 ** 2 - 2 * phi * du1 * dl2 + dl2 ** 2, 0.0))
            low, high = (p1 - p2) - delta, (p1 - p2) + eps
        else:
            raise InvalidArgument(f"method {method!r}: expected 'bonferroni' or 'newcombe'")
    low = np.where(n > 0, np.clip(low, -1.0, 1.0), np.nan)
    high = np.where(n > 0, np.clip(high, -1.0, 1.0), np.nan)
    return (low[()], high[()]) if low.ndim == 0 else (low, high)


def paired_difference(
    results_a: pd.DataFrame,
    results_b: pd.DataFrame,
    radii: Sequence[float] = DEFAULT_RADII,
    beta: float = 0.05,
    method: str = "bonferroni",
    intersect: bool = False,
    n_boot: int = 2000,
    seed: Seed = 0,
    use: str = "radius",
) -> pd.DataFrame:
    """Certified accuracy of run a minus run b at each radius, with a paired (1 - beta) interval.

    The runs are joined on idx (refused on different point sets unless ``intersect``; refused
    when an idx has different labels). ``method``: ``bonferroni`` (guaranteed) or ``newcombe`` (see
    paired_difference_interval) or ``bootstrap`` (percentile over the shared points, resampled
    as pairs; seeded; approximate). Columns radius, points, accuracy_a, accuracy_b, difference,
    low, high, only_a, only_b and verdict: 'a higher' where low > 0, 'b higher' where high < 0,
    else 'undecided' (the data cannot tell the runs apart at that radius).
    """
    if method not in ("bonferroni", "newcombe", "bootstrap"):
        raise InvalidArgument(f"method {method!r}: expected 'bonferroni', 'newcombe' or 'bootstrap'")
    grid = _radii(radii)
    ca, cb = _paired_certified(results_a, results_b, grid, intersect, use)
    n = ca.shape[0]
    both, only_a, only_b = (ca & cb).sum(axis=0), (ca & ~cb).sum(axis=0), (~ca & cb).sum(axis=0)
    if method == "bootstrap":
        low, high = bootstrap_interval(ca.astype(float) - cb.astype(float), beta, n_boot, seed)
    else:
        low, high = paired_difference_interval(both, only_a, only_b, n - both - only_a - only_b, beta, method)
    verdict = np.where(low > 0, "a higher", np.where(high < 0, "b higher", "undecided"))
    return pd.DataFrame({
        "radius": grid, "points": n, "accuracy_a": ca.mean(axis=0), "accuracy_b": cb.mean(axis=0),
        "difference": (only_a - only_b) / n, "low": low, "high": high,
        "only_a": only_a, "only_b": only_b, "verdict": verdict,
    })


# ---------------------------------------------------------------------------------------------
# Envelope across runs (the reference code's tables: best run per radius)
# ---------------------------------------------------------------------------------------------


class EnvelopeTable(NamedTuple):
    """The table the literature prints: runs in rows (listing order), radii in columns."""

    accuracy: pd.DataFrame  # certified accuracy, NaN for a run without points
    best: pd.DataFrame  # True where a run attains its column's maximum: every tied run is marked


def _run_counts(runs: Mapping[str, pd.DataFrame], grid: Array, use: str
                ) -> tuple[list[str], NDArray[np.int64], NDArray[np.int64]]:
    names, frames = _runs(runs)
    certs = [_certified(df, grid, use, f"runs[{name!r}]") for name, df in zip(names, frames)]
    k = np.array([c.sum(axis=0) for c in certs]).reshape(len(names), grid.size)
    n = np.array([c.shape[0] for c in certs])
    return names, k, n


def _accuracy(k: NDArray[np.int64], n: NDArray[np.int64]) -> Array:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n[:, None] > 0, k / n[:, None], np.nan)


def envelope_table(
    runs: Mapping[str, pd.DataFrame], radii: Sequence[float] = DEFAULT_RADII, use: str = "radius"
) -> EnvelopeTable:
    """Certified accuracy of every run at every radius, with the best entry of each radius marked.

    Accuracies are exact fractions k/n (equal fractions compare equal), so ties are exact; all
    tied runs are marked. A run without points is never best.
    """
    grid = _radii(radii)
    names, k, n = _run_counts(runs, grid, use)
    acc = _accuracy(k, n)
    best = acc == np.max(np.where(np.isnan(acc), -np.inf, acc), axis=0)
    columns = pd.Index(grid, name="radius")
    index = pd.Index(names, name="run")
    return EnvelopeTable(pd.DataFrame(acc, index=index, columns=columns),
                         pd.DataFrame(best, index=index, columns=columns))


def envelope_counts(k: ArrayLike, n: ArrayLike, beta: float = 0.05) -> dict[str, NDArray]:
    """The envelope of K runs from their certified counts: k has shape (K, ...) (runs first, e.g.
    (K, radii)), n the K runs' point counts.

    Returns arrays over the trailing shape: ``best`` (index of the first listed run at the
    maximum, -1 where no run has points), ``accuracy`` (the maximum), ``ties`` (runs at the
    maximum), and ``low``/``high``: Clopper-Pearson at level 1 - beta/K' for each of the K' runs
    with points (Bonferroni), so with probability >= 1 - beta all cover at once and the largest
    true certified accuracy among the runs lies in [max of lows, max of highs].
    """
    k = np.asarray(k, dtype=float)
    n = np.asarray(n, dtype=float)
    if k.ndim < 1 or n.shape != k.shape[:1]:
        raise InvalidArgument(f"k, n: expected counts of shape (runs, ...) and (runs,), got {k.shape}, "
                              f"{n.shape}")
    n_b = n.reshape(n.shape + (1,) * (k.ndim - 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        filled = np.where(n_b > 0, k / np.where(n_b > 0, n_b, 1.0), -np.inf)
    best = np.argmax(filled, axis=0)
    top = np.take_along_axis(filled, best[None], axis=0)[0]
    has = np.isfinite(top)
    with_points = n > 0
    if with_points.any():
        low, high = clopper_pearson_interval(k[with_points], n_b[with_points], beta / with_points.sum())
        low, high = np.max(low, axis=0), np.max(high, axis=0)
    else:
        _level("beta", beta)
        low = high = np.full(top.shape, np.nan)
    return {"best": np.where(has, best, -1), "accuracy": np.where(has, top, np.nan),
            "ties": np.where(has, (filled == top[None]).sum(axis=0), 0), "low": low, "high": high}


def envelope(
    runs: Mapping[str, pd.DataFrame],
    radii: Sequence[float] = DEFAULT_RADII,
    beta: float = 0.05,
    use: str = "radius",
) -> pd.DataFrame:
    """For each radius the best run and its certified accuracy (the envelope curve).

    Ties go to the run listed first (the reference code marks ``accuracies[:, j].argmax()``,
    which is the first maximum); ``ties`` counts the runs at the maximum. The envelope picks the
    largest of several noisy estimates, so it is biased upwards; ``low``/``high`` is an interval
    for the largest *true* certified accuracy among the runs at that radius (Bonferroni over the
    runs, see envelope_counts; pointwise in the radius). Columns radius, best,
    certified_accuracy, ties, low, high; best is None when no run has points.
    """
    grid = _radii(radii)
    names, k, n = _run_counts(runs, grid, use)
    env = envelope_counts(k, n, beta)
    return pd.DataFrame({
        "radius": grid, "best": [names[i] if i >= 0 else None for i in env["best"]],
        "certified_accuracy": env["accuracy"], "ties": env["ties"], "low": env["low"], "high": env["high"],
    })


# ---------------------------------------------------------------------------------------------
# Pareto front: clean accuracy against certified accuracy at R
# ---------------------------------------------------------------------------------------------


def _dominance(x: Array, y: Array) -> NDArray[np.bool_]:
    """dominates[j, i]: point j is >= point i in both coordinates and > in one; NaN points none."""
    ok = ~(np.isnan(x) | np.isnan(y))
    ge = (x[:, None] >= x[None, :]) & (y[:, None] >= y[None, :])
    gt = (x[:, None] > x[None, :]) | (y[:, None] > y[None, :])
    return ge & gt & ok[:, None]


def pareto_mask(x: ArrayLike, y: ArrayLike) -> NDArray[np.bool_]:
    """True for points on the Pareto front of (x, y), both to be maximised.

    A point is dominated when another is >= in both coordinates and > in at least one. Exact
    duplicates do not dominate each other, so duplicates on the front are all on it. Points with
    a NaN coordinate are never on the front and dominate nothing.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.ndim != 1 or x.shape != y.shape:
        raise InvalidArgument(f"x, y: expected two 1-D arrays of one length, got shapes {x.shape}, {y.shape}")
    return ~(np.isnan(x) | np.isnan(y)) & ~_dominance(x, y).any(axis=0)


def pareto_front(
    runs: Mapping[str, pd.DataFrame], r: float, use: str = "radius"
) -> pd.DataFrame:
    """Clean accuracy of the smoothed classifier (certified accuracy at radius 0) against certified
    accuracy at r, across runs: which are on the front and which are dominated.

    Columns run, points, clean_accuracy, certified_accuracy, on_front, dominated_by (the first
    listed run that dominates it, None on the front). Duplicates and NaN as in pareto_mask. The
    front is of point estimates: whether a dominating run is really better at r is a question
    for paired_difference.
    """
    names, k, n = _run_counts(runs, np.array([0.0, _radius(r)]), use)
    acc = _accuracy(k, n)
    x, y = acc[:, 0], acc[:, 1]
    front = pareto_mask(x, y)
    dominates = _dominance(x, y)
    dominated_by = [names[int(np.argmax(dominates[:, i]))] if dominates[:, i].any() else None
                    for i in range(len(names))]
    return pd.DataFrame({"run": names, "points": n, "clean_accuracy": x, "certified_accuracy": y,
                         "on_front": front, "dominated_by": dominated_by})


# ---------------------------------------------------------------------------------------------
# Sweep grids (sigma_b, r) for heatmaps
# ---------------------------------------------------------------------------------------------


class GridView(NamedTuple):
    """Sweep results as 2-D tables: one row per value of the row parameter, one column per value
    of the column parameter (both ascending); NaN where the sweep has no run."""

    certified_accuracy: pd.DataFrame
    acr: pd.DataFrame
    points: pd.DataFrame


def _param(params: Mapping[str, Any], key: str, i: int) -> float:
    if not isinstance(params, Mapping) or key not in params:
        raise InvalidArgument(f"sweep[{i}]: the parameters lack {key!r}")
    try:
        value = float(params[key])
    except (TypeError, ValueError):
        raise InvalidArgument(f"sweep[{i}]: parameter {key!r} = {params[key]!r} is not a number") from None
    if not np.isfinite(value):
        raise InvalidArgument(f"sweep[{i}]: parameter {key!r} = {value!r} is not finite")
    return value


def grid_view(
    sweep: Sequence[tuple[Mapping[str, Any], pd.DataFrame]],
    r: float,
    rows: str = "sigma_b",
    columns: str = "r",
    use: str = "radius",
) -> GridView:
    """Certified accuracy at radius r, ACR and point counts as 2-D tables over two sweep parameters.

    ``sweep`` is a list of (params, results) with params holding ``rows`` and ``columns`` (by
    default the kNN sigma function's sigma_b and r). ACR is the mean over all points of the
    radius of correct points, 0 for the others (as smoothviz.analysis). Two runs with the same
    parameter pair are refused.
    """
    radius = _radius(r)
    column = _radius_column(use)
    cells: dict[tuple[float, float], tuple[float, float, int]] = {}
    for i, item in enumerate(sweep):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise InvalidArgument(f"sweep[{i}]: expected a (params, results) pair")
        params, results = item
        key = (_param(params, rows, i), _param(params, columns, i))
        if key in cells:
            raise InvalidArgument(f"sweep[{i}]: a second run with {rows}={key[0]:g}, {columns}={key[1]:g}")
        cert = _certified(results, np.array([0.0, radius]), use, f"sweep[{i}]")
        n = cert.shape[0]
        rad = np.nan_to_num(results[column].to_numpy(dtype=float), nan=0.0)
        acr = float(np.mean(np.where(results["correct"].to_numpy(dtype=bool), rad, 0.0))) if n else np.nan
        cells[key] = (float(cert[:, 1].mean()) if n else np.nan, acr, n)
    if not cells:
        raise InvalidArgument("sweep: expected at least one (params, results) pair")
    row_vals = sorted({k[0] for k in cells})
    col_vals = sorted({k[1] for k in cells})
    tables = np.full((3, len(row_vals), len(col_vals)), np.nan)
    for (rv, cv), values in cells.items():
        tables[:, row_vals.index(rv), col_vals.index(cv)] = values
    index, cols = pd.Index(row_vals, name=rows), pd.Index(col_vals, name=columns)
    frames = [pd.DataFrame(t, index=index, columns=cols) for t in tables]
    frames[2] = frames[2].astype("Int64")
    return GridView(*frames)


def _cell_key(params: Mapping[str, Any]) -> tuple:
    """What two cells must share to be compared: model, n and alpha."""
    return params.get("model"), params.get("n"), params.get("alpha")


def versus_constant(
    sweep: Sequence[tuple[Mapping[str, Any], pd.DataFrame]],
    radii: Sequence[float] = DEFAULT_RADII,
    beta: float = 0.05,
    method: str = "bonferroni",
    use: str = "radius",
    intersect: bool = False,
) -> pd.DataFrame:
    """Each input-dependent (kNN, r > 0) cell of a sweep against constant sigma = its sigma_b on the
    same points (same model, n and alpha), by ``paired_difference`` at each radius (``intersect``:
    over the points both runs hold, for runs still partial).

    ``sweep`` holds (params, results) with params as a sweep cell records them (``kind``,
    ``sigma_b``/``sigma``, ``r``, ``model``, ``n``, ``alpha``, optionally ``label``). The baseline
    is the constant cell with sigma = sigma_b, else the kNN cell with that sigma_b and r = 0
    (exactly the constant sigma). One row per (cell, radius): sigma_b, r, k, radius, points,
    accuracy_knn, accuracy_constant, difference (kNN minus constant), low, high, verdict ('kNN
    higher', 'constant higher' or 'undecided' at level 1 - beta, pointwise in the radius),
    baseline ('constant' or 'knn r=0'); cells without a baseline are left out.
    """
    grid = _radii(radii)
    constants: dict[tuple, pd.DataFrame] = {}
    flat: dict[tuple, pd.DataFrame] = {}
    for params, results in sweep:
        if params.get("kind") == "constant":
            constants[(*_cell_key(params), float(params["sigma"]))] = results
        elif params.get("kind") == "knn" and float(params.get("r", 0.0)) == 0.0:
            flat[(*_cell_key(params), float(params["sigma_b"]))] = results
    rows = []
    for params, results in sweep:
        if params.get("kind") != "knn" or float(params.get("r", 0.0)) == 0.0:
            continue
        key = (*_cell_key(params), float(params["sigma_b"]))
        baseline, name = (constants[key], "constant") if key in constants else (flat.get(key), "knn r=0")
        if baseline is None:
            continue
        diff = paired_difference(results, baseline, grid, beta, method, intersect=intersect, use=use)
        for row in diff.itertuples(index=False):
            verdict = {"a higher": "kNN higher", "b higher": "constant higher"}.get(row.verdict, "undecided")
            rows.append({"label": params.get("label"), "sigma_b": float(params["sigma_b"]), "r": float(params["r"]),
                         "k": params.get("k"), "model": params.get("model"), "n": params.get("n"),
                         "alpha": params.get("alpha"), "radius": row.radius, "points": row.points,
                         "accuracy_knn": row.accuracy_a, "accuracy_constant": row.accuracy_b,
                         "difference": row.difference, "low": row.low, "high": row.high, "verdict": verdict,
                         "baseline": name})
    columns = ["label", "sigma_b", "r", "k", "model", "n", "alpha", "radius", "points", "accuracy_knn",
               "accuracy_constant", "difference", "low", "high", "verdict", "baseline"]
    return pd.DataFrame(rows, columns=columns)


def waterfall_position(run: Mapping[str, Any], results: pd.DataFrame) -> dict:
    """Where a run's certified-accuracy curve ends: its ceiling sigma_max * Phi^-1(alpha^(1/n))
    (no radius of the run can exceed it; ``analysis.run_ceiling``), and the radius beyond which
    its certified accuracy is 0 (the largest sound radius of a correct point; ``zero_sound``),
    beside the same for the naive radius (``zero_naive``, no guarantee for input-dependent sigma).
    0 where no point is correct; NaN for no points."""
    _columns(results, "results", "correct", "radius", "naive_radius")
    correct = results["correct"].to_numpy(dtype=bool)
    if correct.size == 0:
        zero_sound = zero_naive = float("nan")
    else:
        sound = np.nan_to_num(results["radius"].to_numpy(dtype=float), nan=0.0)[correct]
        naive = np.nan_to_num(results["naive_radius"].to_numpy(dtype=float), nan=0.0)[correct]
        zero_sound = float(sound.max()) if sound.size else 0.0
        zero_naive = float(naive.max()) if naive.size else 0.0
    return {"ceiling": float(run_ceiling(dict(run))), "zero_sound": zero_sound, "zero_naive": zero_naive}


# ---------------------------------------------------------------------------------------------
# Per-class trade-offs and the fairness gap
# ---------------------------------------------------------------------------------------------


def per_class_intervals(
    results: pd.DataFrame,
    r: float,
    beta: float = 0.05,
    class_names: Sequence[str] | None = None,
    use: str = "radius",
) -> pd.DataFrame:
    """Per true class: points, certified count, certified accuracy at r and its Clopper-Pearson
    (1 - beta) interval (each class's own; for all classes at once see fairness_interval).

    Columns class, name, count, certified, certified_accuracy, low, high. With ``class_names``
    every class appears (a class without points has NaN accuracy and interval).
    """
    _columns(results, "results", "label")
    cert = _certified(results, np.array([_radius(r)]), use)[:, 0]
    labels = results["label"].to_numpy(dtype=int)
    classes = np.arange(len(class_names)) if class_names is not None else np.unique(labels)
    known = np.isin(labels, classes)  # classes is sorted, so searchsorted finds each label's row
    pos = np.searchsorted(classes, labels[known])
    counts = np.bincount(pos, minlength=classes.size)
    certified = np.bincount(pos, weights=cert[known], minlength=classes.size).astype(int)
    low, high = clopper_pearson_interval(certified, counts, beta)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(counts > 0, certified / np.maximum(counts, 1), np.nan)
    names = [class_names[c] if class_names is not None else str(c) for c in classes]
    return pd.DataFrame({"class": classes.astype(int), "name": names, "count": counts,
                         "certified": certified, "certified_accuracy": acc,
                         "low": np.atleast_1d(low), "high": np.atleast_1d(high)})


def class_gap_interval(
    certified: ArrayLike,
    labels: ArrayLike,
    beta: float = 0.05,
    method: str = "bonferroni",
    n_boot: int = 2000,
    seed: Seed = 0,
) -> dict:
    """Fairness gap (best minus worst class) and the worst class's accuracy, with intervals.

    ``certified`` (bool per point) and ``labels`` (class per point); classes without points do
    not count. The worst class is the one with the lowest accuracy (ties: the smallest label),
    the best likewise with the highest.

    ``bonferroni``: Clopper-Pearson at level 1 - beta/K for each of the K classes; with
    probability >= 1 - beta all cover, so the worst true class accuracy lies in [min of lows,
    min of highs] and the true gap in [max(0, max of lows - min of highs), max of highs - min of
    lows]. Guaranteed, conservative.

    ``bootstrap``: percentile intervals from resampling the points within each class (class sizes
    kept; seeded). Approximate: near nominal when one class is clearly the worst and another
    clearly the best; when classes are close the plug-in gap is biased upwards (a maximum minus a
    minimum of noisy estimates) and the intervals can miss.

    Returns classes, gap, gap_low, gap_high, worst_class, worst_accuracy, worst_low, worst_high,
    best_class, best_accuracy, method (NaN / None for no points).
    """
    beta = _level("beta", beta)
    cert = np.asarray(certified, dtype=bool)
    lab = np.asarray(labels)
    if cert.ndim != 1 or cert.shape != lab.shape:
        raise InvalidArgument(f"certified, labels: expected 1-D arrays of one length, got {cert.shape}, "
                              f"{lab.shape}")
    classes, inverse = np.unique(lab, return_inverse=True)
    n_k = np.bincount(inverse, minlength=classes.size)
    k_k = np.bincount(inverse, weights=cert, minlength=classes.size)
    out: dict = {"classes": int(classes.size), "method": method}
    if method not in ("bonferroni", "bootstrap"):
        raise InvalidArgument(f"method {method!r}: expected 'bonferroni' or 'bootstrap'")
    if classes.size == 0:
        nan = float("nan")
        out.update(gap=nan, gap_low=nan, gap_high=nan, worst_class=None, worst_accuracy=nan,
                   worst_low=nan, worst_high=nan, best_class=None, best_accuracy=nan)
        return out
    acc = k_k / n_k
    worst, best = int(np.argmin(acc)), int(np.argmax(acc))
    if method == "bonferroni":
        low, high = clopper_pearson_interval(k_k, n_k, beta / classes.size)
        low, high = np.atleast_1d(low), np.atleast_1d(high)
        worst_low, worst_high = low.min(), high.min()
        gap_low, gap_high = max(0.0, low.max() - high.min()), high.max() - low.min()
    else:
        order = np.argsort(inverse, kind="stable")
        # column j holds the certified points of class j, so the resampled sums are per class
        per_class = (inverse[order, None] == np.arange(classes.size)) & cert[order, None]
        means = _boot_sums(per_class.astype(float), _n_boot(n_boot), _rng(seed), inverse[order]) / n_k
        worst_low, worst_high = _percentile(means.min(axis=1), beta)
        gap_low, gap_high = _percentile(means.max(axis=1) - means.min(axis=1), beta)
    out.update(gap=float(acc[best] - acc[worst]), gap_low=float(gap_low), gap_high=float(gap_high),
               worst_class=classes[worst].item(), worst_accuracy=float(acc[worst]),
               worst_low=float(worst_low), worst_high=float(worst_high),
               best_class=classes[best].item(), best_accuracy=float(acc[best]))
    return out


def fairness_interval(
    results: pd.DataFrame,
    r: float,
    beta: float = 0.05,
    method: str = "bonferroni",
    n_boot: int = 2000,
    seed: Seed = 0,
    use: str = "radius",
) -> dict:
    """class_gap_interval of a results frame at radius r (classes are the true labels present)."""
    _columns(results, "results", "label")
    cert = _certified(results, np.array([_radius(r)]), use)[:, 0]
    return class_gap_interval(cert, results["label"].to_numpy(dtype=int), beta, method, n_boot, seed)
