"""Benchmark of the input-dependent radius: vectorised smoothviz.bounds vs a per-point scipy loop.

Run: .venv/bin/python benchmarks/bench_bounds.py [--batch 10000] [--subset 20] [--r 0.1 0.001 ...]
Prints a table (wall-clock and CPU seconds) and the largest disagreement between the two.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import scipy
from scipy import optimize, stats

from smoothviz import bounds

DIM = 3072


def _scipy_worst(s0: float, s1: float, d: float, p_a: float, dim: int) -> float:
    """The textbook formula with scipy.stats.ncx2 (Sukenik et al. 2022, Theorem 2)."""
    if s1 == s0:
        return float(stats.norm.cdf(stats.norm.ppf(p_a) - d / s0))
    lam0 = d**2 * s0**2 / (s1**2 - s0**2) ** 2
    lam1 = d**2 * s1**2 / (s1**2 - s0**2) ** 2
    if s1 > s0:
        q = stats.ncx2.ppf(p_a, dim, lam0)
        return float(stats.ncx2.cdf(s0**2 / s1**2 * q, dim, lam1))
    q = stats.ncx2.ppf(1 - p_a, dim, lam0)
    return float(stats.ncx2.sf(s0**2 / s1**2 * q, dim, lam1))


def scipy_radius(p_a: float, s0: float, r: float, dim: int) -> float:
    """The straightforward way: brentq over R on the two band ends, one point at a time."""
    def margin(radius: float) -> float:
        if radius == 0.0:
            return p_a - 0.5
        return min(_scipy_worst(s0, s0 * np.exp(-r * radius), radius, p_a, dim),
                   _scipy_worst(s0, s0 * np.exp(r * radius), radius, p_a, dim)) - 0.5

    hi = s0 * stats.norm.ppf(p_a)
    return optimize.brentq(margin, 0.0, hi, xtol=1e-12 * hi, rtol=1e-13)


def _timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def _scipy_loop(p: np.ndarray, s0: np.ndarray, r: float) -> tuple[list[float], int]:
    out, failed = [], 0
    for a, b in zip(p, s0):
        try:
            out.append(scipy_radius(a, b, r, DIM))
        except (ValueError, RuntimeError):  # NaN from ncx2 at huge non-centrality
            out.append(float("nan"))
            failed += 1
    return out, failed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=10_000, help="points in the batch")
    ap.add_argument("--subset", type=int, default=20, help="points for the per-point loops")
    ap.add_argument("--r", type=float, nargs="+", default=[0.1, 1e-3, 1e-6],
                    help="semi-elasticities (one table row group each)")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    p = rng.uniform(0.5, 0.99999, args.batch)
    s0 = rng.uniform(0.12, 1.0, args.batch)
    n = args.subset
    sub = slice(0, n)
    bounds.input_dependent_radius(0.9, 0.25, 0.1, DIM)  # warm the quadrature-node cache
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}, numpy {np.__version__}, scipy {scipy.__version__}, "
          f"dim={DIM}, p_a ~ U(0.5, 0.99999), sigma0 ~ U(0.12, 1)")
    print(f"{'r':>8}  {'task':<40}{'wall s':>9}{'cpu s':>9}{'ms/point':>10}  note")
    for r in args.r:
        single, w1, c1 = _timed(lambda: np.array([float(bounds.input_dependent_radius(
            a, b, r, DIM)) for a, b in zip(p[sub], s0[sub])]))
        (naive, failed), w2, c2 = _timed(lambda: _scipy_loop(p[sub], s0[sub], r))
        batch, w3, c3 = _timed(lambda: bounds.input_dependent_radius(p, s0, r, DIM))
        naive = np.array(naive)
        ok = np.isfinite(naive)
        rel = np.max(np.abs(single[ok] - naive[ok]) / naive[ok]) if ok.any() else float("nan")
        same = np.max(np.abs(batch[sub] - single) / single)
        print(f"{r:>8g}  {'smoothviz, one point at a time (%d)' % n:<40}{w1:>9.3f}{c1:>9.3f}"
              f"{1e3 * w1 / n:>10.2f}")
        print(f"{r:>8g}  {'scipy ncx2 + brentq loop (%d)' % n:<40}{w2:>9.3f}{c2:>9.3f}"
              f"{1e3 * w2 / n:>10.2f}  {failed} failed; max rel. diff {rel:.1e}; "
              f"ratio {w2 / w1:.1f}x")
        print(f"{r:>8g}  {'smoothviz, batch of %d' % args.batch:<40}{w3:>9.3f}{c3:>9.3f}"
              f"{1e3 * w3 / args.batch:>10.3f}  batch = single to {same:.0e}; "
              f"{(w2 / n) / (w3 / args.batch):.0f}x vs scipy loop per point")


if __name__ == "__main__":
    main()
