"""Sequential against fixed-n CERTIFY, side by side on the same model, points, seed and engine.

For one checkpoint and a set of test points: the fixed-n run (n0 + n samples per point), then
fixed-radius sequential runs at each radius R and radius-mode runs capped at the fixed run's
waterfall ceiling sigma*Phi^-1(alpha^(1/n)), each with the same engine classifier (batch size,
threads, memory format) in the same process. Reported per run: certified accuracy at each
radius, the average certified radius (ACR: the mean over points of radius * correct), mean
samples per point (selection + estimation), wall time, and how full the forward batches were;
and against the fixed run: the sample and wall-time ratios, the accuracy difference in
percentage points and the relative ACR difference.

Two oracle figures say what no method can beat by much: a method that knew each point's p_A
(taken as the fixed run's estimate) and used the fixed-t Clopper-Pearson bound at a t chosen per
point in advance (tighter than any anytime-valid bound, which must hold at every t at once).
``oracle_ratio``: in radius mode, the sample ratio at which it keeps the ACR at a fraction of
the fixed run's; ``oracle_fixed_radius_ratio``: the sample ratio at which it decides "certified
at R?" for every point as the expected counts would (capped at n).
"""

from __future__ import annotations

import os
import platform
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from smoothviz import bounds, certify
from smoothviz import sequential as sq
from smoothviz.errors import InvalidArgument
from smoothviz.sequential_engine import SequentialSettings, iter_certify_sequential

ProgressFn = Callable[[str], None]


@dataclass(frozen=True)
class Case:
    """One benchmark model: a checkpoint, its dataset and the test points to certify."""

    dataset: str
    checkpoint: str
    indices: tuple[int, ...]


class _Counting:
    """The engine classifier, counting forward passes and rows (to measure how full batches are).

    Keeps the attributes the engine reads (``thread_safe``, ``new_input``), so it is sampled
    exactly as the classifier it wraps.
    """

    def __init__(self, classify: Callable) -> None:
        self.classify = classify
        self.thread_safe = getattr(classify, "thread_safe", False)
        new_input = getattr(classify, "new_input", None)
        if new_input is not None:
            self.new_input = new_input
        self.lock = threading.Lock()
        self.calls = 0
        self.rows = 0

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with self.lock:
            self.calls += 1
            self.rows += int(batch.shape[0])
        return self.classify(batch)

    def take(self) -> tuple[int, int]:
        """(calls, rows) since the last take."""
        with self.lock:
            out = (self.calls, self.rows)
            self.calls = self.rows = 0
        return out


def _metrics(results: list, radii: Sequence[float], samples: np.ndarray, seconds: float, calls: int,
             rows: int, batch_size: int) -> dict:
    radius = np.array([r.radius for r in results])
    correct = np.array([r.correct for r in results])
    out = {
        "points": len(results),
        "certified_accuracy": {f"{rad:g}": float(np.mean(correct & (radius >= rad))) for rad in radii},
        "acr": float(np.mean(radius * correct)),
        "abstain": float(np.mean([r.predict == -1 for r in results])),
        "samples_per_point": float(samples.mean()),
        "max_samples": int(samples.max()),
        "seconds": seconds,
        "forward_passes": calls,
        "batch_fill": rows / (calls * batch_size) if calls else None,
    }
    reasons = [getattr(r, "stop_reason", None) for r in results]
    if reasons and reasons[0] is not None:
        out["stop_reasons"] = {k: reasons.count(k) for k in sorted(set(reasons))}
    return out


def oracle_ratio(fixed: list, n: int, alpha: float, sigma: float, fraction: float = 0.98) -> float:
    """n over the fewest mean samples with which even an oracle keeps the ACR at ``fraction``
    of the fixed run's (see the module docstring); points with p_A estimated from ``fixed``."""
    grid = np.unique(np.r_[np.geomspace(16, n, 80).astype(np.int64), n])
    p = np.array([max(r.counts) / n if r.correct else 0.0 for r in fixed])
    k = np.floor(np.outer(p, grid))
    low = np.asarray(bounds.clopper_pearson_lower(k, grid[None, :], alpha), dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        rad = np.where(low > 0.5, sq.sound_radius(np.clip(low, 0.5, 1.0), sigma), 0.0)
    rad = np.maximum.accumulate(rad, axis=1)
    need = fraction * rad[:, -1].sum()
    best = float(n)
    for lam in np.geomspace(1e-9, 1.0, 600):  # Lagrangian sweep: radius - lam * samples per point
        j = np.argmax(rad - lam * grid[None, :], axis=1)
        if rad[np.arange(p.size), j].sum() >= need:
            best = min(best, float(grid[j].mean()))
    return n / best


def oracle_fixed_radius_ratio(fixed: list, n0: int, n: int, alpha: float, sigma: float, radius: float) -> float:
    """(n0 + n) over the mean samples an oracle needs to decide "certified at ``radius``?" for every
    point: the smallest t where the Clopper-Pearson bounds of k = p t (two-sided, alpha each) leave
    Phi(radius / sigma) on one side, n where none does (see the module docstring)."""
    grid = np.unique(np.r_[np.geomspace(16, n, 200).astype(np.int64), n])
    target = float(sq.certify_threshold(radius, sigma))
    p = np.array([max(r.counts) / n for r in fixed])
    k = np.floor(np.outer(p, grid))
    low = np.asarray(bounds.clopper_pearson_lower(k, grid[None, :], alpha), dtype=float)
    up = np.asarray(1.0 - bounds.clopper_pearson_lower(grid[None, :] - k, grid[None, :], alpha), dtype=float)
    decided = (low >= target) | (up < target)
    first = np.where(decided.any(axis=1), grid[np.argmax(decided, axis=1)], n)
    return (n0 + n) / (n0 + float(first.mean()))


def compare(case: Case, n0: int, n: int, alpha: float, seed: int, radii: Sequence[float],
            methods: Sequence[str], tolerances: Sequence[float], device: str | None = None,
            batch_size: int | str | None = None, progress: ProgressFn | None = None) -> dict:
    """The fixed-n run and every sequential run of ``case`` (see the module docstring)."""
    say = progress or (lambda text: None)
    run = dict(dataset=case.dataset, split="test", checkpoint=case.checkpoint, sigma_spec=None, n0=n0, n=n,
               alpha=alpha, device=device or "auto", indices=list(case.indices), seed=seed, options={})
    from smoothviz.models import read_checkpoint

    run["sigma_spec"] = read_checkpoint(case.checkpoint)["meta"]["sigma"]
    prepared = certify.prepare_run({**run, "batch_size": batch_size})
    if prepared.sigma_fn.r != 0.0:  # None for a data-dependent sigma, which has no sound radius
        raise InvalidArgument(f"{case.checkpoint}: the benchmark compares constant-sigma models")
    ds, engine = prepared.dataset, prepared.engine
    sigma = float(prepared.sigmas.max())
    xs, ys, sigmas = prepared.inputs(prepared.indices)
    classify = _Counting(engine.classify)
    idx = prepared.indices

    def fixed_run(points: slice, samples: int) -> list:
        return list(certify.iter_certify(classify, xs[points], ys[points], idx[points], prepared.sigma_fn, n0,
                                         samples, alpha, ds.num_classes, engine.batch_size, prepared.device, seed,
                                         0.0, ds.dim, sigmas=sigmas[points]))

    fixed_run(slice(0, 2), 2048)  # warm-up: thread pool, kernels, allocator
    classify.take()
    say(f"{case.dataset}: fixed n = {n:,} on {len(idx)} points")
    t0 = time.perf_counter()
    fixed = fixed_run(slice(None), n)
    seconds = time.perf_counter() - t0
    out: dict = {
        "dataset": case.dataset, "checkpoint": case.checkpoint, "sigma": sigma, "indices": idx,
        "batch_size": engine.batch_size, "threads": engine.threads, "device": str(prepared.device),
        "ceiling": float(bounds.waterfall_ceiling(sigma, n, alpha)), "runs": {},
    }
    base = _metrics(fixed, radii, np.full(len(fixed), n0 + n), seconds, *classify.take(), engine.batch_size)
    out["runs"]["fixed"] = {"rule": f"fixed n={n}", **base}
    plans = [(f"fixed-radius R={rad:g} {m}", SequentialSettings.create("fixed-radius", cs=m, radius=rad))
             for rad in radii for m in methods]
    plans += [(f"radius max-radius=ceiling tolerance={tol:g} {m}",
               SequentialSettings.create("radius", cs=m, max_radius=out["ceiling"], tolerance=tol))
              for tol in tolerances for m in methods]
    for name, settings in plans:
        say(f"{case.dataset}: {name}")
        rule = settings.rule(alpha, n, 0.0, ds.dim)
        t0 = time.perf_counter()
        results = list(iter_certify_sequential(classify, xs, ys, idx, sigmas, n0, rule, ds.num_classes,
                                               engine.batch_size, prepared.device, seed))
        seconds = time.perf_counter() - t0
        samples = np.array([r.selection + r.samples for r in results])
        m = _metrics(results, radii, samples, seconds, *classify.take(), engine.batch_size)
        m["sample_ratio"] = base["samples_per_point"] / m["samples_per_point"]
        m["time_ratio"] = base["seconds"] / m["seconds"]
        m["accuracy_difference_points"] = {
            k: 100 * (m["certified_accuracy"][k] - base["certified_accuracy"][k]) for k in m["certified_accuracy"]}
        m["acr_relative_difference"] = m["acr"] / base["acr"] - 1 if base["acr"] else None
        out["runs"][name] = {"rule": settings.to_dict(), **m}
    out["oracle_ratio_at_98_percent_acr"] = oracle_ratio(fixed, n, alpha, sigma, 0.98)
    out["oracle_fixed_radius_ratio"] = {f"{rad:g}": oracle_fixed_radius_ratio(fixed, n0, n, alpha, sigma, rad)
                                        for rad in radii}
    return out


def machine() -> dict:
    """The machine the numbers come from."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average": list(load) if load else None}
