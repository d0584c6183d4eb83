"""Certified-accuracy analysis of per-point results (curves, tables at radii, fairness).

A point counts as certified at radius r when it is correct and its certified radius is >= r
(Cohen et al. 2019, section 4); abstentions (predict = -1) are never correct, so they count as
wrong at every radius.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from smoothviz.bounds import waterfall_ceiling
from smoothviz.errors import InvalidArgument

DEFAULT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0)
RADIUS_COLUMNS = ("radius", "naive_radius")


def _column(use: str) -> str:
    if use in ("naive", "naive_radius"):
        return "naive_radius"
    if use in ("radius", "sound"):
        return "radius"
    raise InvalidArgument(f"use {use!r}: expected 'radius' (sound) or 'naive_radius'")


def _arrays(results_df: pd.DataFrame, use: str) -> tuple[np.ndarray, np.ndarray]:
    radius = results_df[_column(use)].to_numpy(dtype=float)
    correct = results_df["correct"].to_numpy(dtype=bool)
    return np.where(np.isnan(radius), 0.0, radius), correct


def certified_accuracy(radius: Sequence[float] | np.ndarray, correct: Sequence[bool] | np.ndarray, r: float) -> float:
    """Fraction of points that are correct with certified radius >= r (NaN for no points)."""
    radius = np.asarray(radius, dtype=float)
    correct = np.asarray(correct, dtype=bool)
    if radius.shape != correct.shape:
        raise InvalidArgument(f"radius and correct differ in shape: {radius.shape} vs {correct.shape}")
    if radius.size == 0:
        return float("nan")
    return float(np.mean(correct & (radius >= r)))


def accuracy_curve(
    results_df: pd.DataFrame, radii: Sequence[float] | None = None, use: str = "radius"
) -> pd.DataFrame:
    """Certified accuracy as a function of the radius.

    With ``radii=None`` the rows are 0 and every distinct radius of a correct point: the curve is
    a non-increasing step function whose value at a row holds on (previous radius, this radius]
    and which is 0 beyond the last row.
    """
    radius, correct = _arrays(results_df, use)
    if radii is None:
        grid = np.unique(np.concatenate([[0.0], radius[correct]]))
    else:
        grid = np.asarray(sorted(float(r) for r in radii), dtype=float)
    if radius.size == 0:
        acc = np.full(grid.shape, np.nan)
    else:
        # count of certified points with radius >= r, for every r of the grid at once
        certified = np.sort(radius[correct])
        acc = (certified.size - np.searchsorted(certified, grid, side="left")) / radius.size
    return pd.DataFrame({"radius": grid, "certified_accuracy": acc})


def accuracy_table(
    results_df: pd.DataFrame, radii: Sequence[float] = DEFAULT_RADII, use: str = "radius"
) -> pd.DataFrame:
    """Certified accuracy at the given radii (one row per radius, in the order given)."""
    radius, correct = _arrays(results_df, use)
    rows = [(float(r), certified_accuracy(radius, correct, float(r))) for r in radii]
    return pd.DataFrame(rows, columns=["radius", "certified_accuracy"])


def average_certified_radius(results_df: pd.DataFrame, use: str = "radius") -> float:
    """Mean over all points of the radius, with 0 for wrong and abstained points (ACR)."""
    radius, correct = _arrays(results_df, use)
    if radius.size == 0:
        return float("nan")
    return float(np.mean(np.where(correct, radius, 0.0)))


def abstention_rate(results_df: pd.DataFrame) -> float:
    """Fraction of points where the smoothed classifier abstained (predict = -1)."""
    predict = results_df["predict"].to_numpy()
    return float(np.mean(predict == -1)) if predict.size else float("nan")


def per_class_accuracy(
    results_df: pd.DataFrame,
    r: float,
    class_names: Sequence[str] | None = None,
    use: str = "radius",
) -> pd.DataFrame:
    """Certified accuracy at radius r for each true class.

    Columns: class, name, count (points of the class), certified (of them, correct with radius
    >= r) and certified_accuracy (certified / count). With ``class_names`` every class appears, a
    class without points having count 0 and NaN accuracy (absent, unlike a class with none certified).
    """
    radius, correct = _arrays(results_df, use)
    labels = results_df["label"].to_numpy(dtype=int)
    classes = range(len(class_names)) if class_names is not None else sorted(set(labels.tolist()))
    rows = []
    for c in classes:
        mask = labels == c
        name = class_names[c] if class_names is not None else str(c)
        certified = int(np.sum(correct[mask] & (radius[mask] >= r)))
        rows.append((int(c), name, int(mask.sum()), certified, certified_accuracy(radius[mask], correct[mask], r)))
    return pd.DataFrame(rows, columns=["class", "name", "count", "certified", "certified_accuracy"])


def fairness_gaps(per_class_df: pd.DataFrame) -> dict:
    """Spread of per-class certified accuracy: max - min and the population std (ddof=0).

    Classes without points (NaN accuracy) are left out.
    """
    acc = per_class_df["certified_accuracy"].to_numpy(dtype=float)
    acc = acc[~np.isnan(acc)]
    if acc.size == 0:
        return {"max_minus_min": float("nan"), "std": float("nan")}
    return {"max_minus_min": float(acc.max() - acc.min()), "std": float(acc.std(ddof=0))}


def run_sigma_max(run: dict) -> float | None:
    """The largest sigma of a run: the stored per-point maximum, else the constant sigma."""
    value = run.get("sigma_max")
    if value is not None and np.isfinite(value):
        return float(value)
    params = run.get("sigma_params") or {}
    for key in ("sigma_max", "max", "sigma", "sigma_b"):
        if params.get(key) is not None:
            return float(params[key])
    return None


def run_ceiling(run: dict) -> float:
    """Waterfall ceiling sigma*Phi^-1(alpha^(1/n)) for the run's n, alpha and largest sigma.

    No radius of the run can exceed it (all n samples voting A); NaN when n, alpha or sigma
    are unknown (e.g. an imported log).
    """
    sigma = run_sigma_max(run)
    n, alpha = run.get("n"), run.get("alpha")
    if sigma is None or n is None or alpha is None:
        return float("nan")
    return float(waterfall_ceiling(sigma, int(n), float(alpha)))


def summary(results_df: pd.DataFrame, radii: Sequence[float] = DEFAULT_RADII, use: str = "radius") -> dict:
    """Points, clean accuracy of the smoothed classifier, abstention, ACR and the table at radii."""
    table = accuracy_table(results_df, radii, use)
    return {
        "points": int(len(results_df)),
        "accuracy": float(results_df["correct"].mean()) if len(results_df) else float("nan"),
        "abstention_rate": abstention_rate(results_df),
        "average_certified_radius": average_certified_radius(results_df, use),
        "table": dict(zip(table["radius"].tolist(), table["certified_accuracy"].tolist())),
    }


NAIVE_ONLY = "naive only (no guarantee)"


def naive_only(run: dict) -> bool:
    """Whether a run's sigma has no semi-elasticity (r recorded as NULL: data-dependent sigma), so
    that its only certificate is the naive one and its sound radius is 0."""
    r = run.get("r")
    return bool(run.get("sigma_spec")) and (r is None or (isinstance(r, float) and np.isnan(r)))


def input_dependent(run: dict) -> bool:
    """Whether the run's naive radius can differ from its sound one (r > 0, or naive only)."""
    return naive_only(run) or (run.get("r") or 0) > 0


def naive_column(radius: float) -> str:
    """The Compare table's column of the naive radius's claim at ``radius`` (not a certificate)."""
    return f"R={radius:g} naive (no guarantee)"


def compare_table(
    entries: Sequence[tuple[str, dict, pd.DataFrame]],
    radii: Sequence[float] = DEFAULT_RADII,
    spec_label: Callable[[str | None], str] | None = None,
) -> pd.DataFrame:
    """One row per run: the run, then certified accuracy at each radius, then ACR and the run's settings.

    ``entries`` are (label, run record, per-point results). For a run with an input-dependent sigma
    (r > 0, or no r at all) the naive radius sigma(x)*Phi^-1(p_A), which is no guarantee there, gets
    its own column beside each sound one; for constant sigma the two coincide and the naive column
    stays empty. ``certificate`` says "sound" or NAIVE_ONLY (no r: the sound radius is 0);
    ``audited r`` is the semi-elasticity an audit recorded for the run (smoothviz.audit), if any.
    ``spec_label`` shortens the sigma spec for the table (the full spec is the run's ``sigma_spec``).
    """
    dependent = any(input_dependent(run) for _, run, _ in entries)
    rows = []
    for label, run, results in entries:
        s = summary(results, radii)
        is_dependent = input_dependent(run)
        naive = accuracy_table(results, radii, use="naive_radius") if is_dependent else None
        row: dict = {"run": label}
        for i, r in enumerate(radii):
            row[f"R={r:g}"] = s["table"][float(r)]
            if dependent:
                row[naive_column(r)] = float(naive["certified_accuracy"].iloc[i]) if is_dependent else None
        spec = run.get("sigma_spec")
        row.update({
            "ACR": s["average_certified_radius"], "accuracy": s["accuracy"], "abstention": s["abstention_rate"],
            "points": s["points"], "σ": spec_label(spec) if spec_label else spec,
            "certificate": NAIVE_ONLY if naive_only(run) else "sound", "r": None if naive_only(run) else run.get("r"),
            "audited r": ((run.get("options") or {}).get("sigma_audit") or {}).get("audited_r"),
            "n": run.get("n"), "n0": run.get("n0"), "alpha": run.get("alpha"), "dataset": run.get("dataset"),
            "status": run.get("status"),
        })
        rows.append(row)
    return pd.DataFrame(rows)
