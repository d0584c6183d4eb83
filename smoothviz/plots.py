"""Plotly figure builders for the dashboard: arrays and data frames in, ``go.Figure`` out.

No computation beyond arranging the data: the numbers come from ``bounds`` and ``analysis``.
Colours come from one qualitative palette that reads on light and dark backgrounds, and every
axis names its unit (radii are L2 distances in pixel units of images scaled to [0, 1]).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from smoothviz.text import (
    plural as plural,  # re-exported: the pages count with plots.plural
)

PALETTE: tuple[str, ...] = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)
NEUTRAL = "#888888"

RADIUS_AXIS = "certified L2 radius (pixel units, images in [0,1])"
DISTANCE_AXIS = "distance ‖x₁ − x₀‖₂ (L2, pixel units)"
SIGMA_AXIS = "σ(x) (noise std, pixel units)"
ACCURACY_AXIS = "certified accuracy (fraction of points)"


def colour(i: int) -> str:
    """The i-th colour of the shared palette (cycles)."""
    return PALETTE[i % len(PALETTE)]


def _layout(fig: go.Figure, title: str, x: str, y: str, **kwargs) -> go.Figure:
    fig.update_layout(
        title=title,
        xaxis_title=x,
        yaxis_title=y,
        legend={"orientation": "h", "yanchor": "top", "y": -0.2, "x": 0},
        margin={"l": 60, "r": 20, "t": 50, "b": 110},
        hovermode="closest",
        **kwargs,
    )
    return fig


# --------------------------------------------------------------------------- theory


def worst_case_figure(
    distance: np.ndarray, ratios: Sequence[float], probs: np.ndarray, p_a: float
) -> go.Figure:
    """Worst-case probability of the top class at x1 vs distance, one line per sigma1/sigma0.

    ``probs[i, j]`` is the Neyman-Pearson worst case for ``ratios[i]`` at ``distance[j]``;
    the smoothed prediction is certain only while it stays above 1/2.
    """
    probs = np.asarray(probs, dtype=float)
    fig = go.Figure()
    for i, ratio in enumerate(ratios):
        fig.add_trace(
            go.Scatter(
                x=np.asarray(distance, dtype=float), y=probs[i], mode="lines",
                name=f"σ₁/σ₀ = {ratio:g}", line={"color": colour(i)},
            )
        )
    fig.add_hline(y=0.5, line_dash="dash", line_color=NEUTRAL, annotation_text="1/2: certificate lost")
    return _layout(
        fig, f"Worst case at distance d (p_A = {p_a:g})", DISTANCE_AXIS,
        "worst-case P(f(x₁+ε) = A)", yaxis_range=[0, 1],
    )


def radius_vs_r_figure(
    r: np.ndarray,
    dims: Sequence[int],
    radii: np.ndarray,
    cohen: float,
    labels: Sequence[str] | None = None,
    current_r: float | None = None,
) -> go.Figure:
    """Sound certified radius vs semi-elasticity r, one line per input dimension.

    ``radii[i, j]`` is the radius for ``dims[i]`` at ``r[j]``; ``cohen`` (the r = 0 radius) is
    drawn as a reference line. ``current_r`` (the r the user chose) is marked by a dashed line, and
    the x axis always reaches it, so a chosen r is never off the chart.
    """
    r = np.asarray(r, dtype=float)
    radii = np.asarray(radii, dtype=float)
    fig = go.Figure()
    for i, dim in enumerate(dims):
        name = labels[i] if labels is not None else f"N = {dim:,}"
        fig.add_trace(go.Scatter(x=r, y=radii[i], mode="lines", name=name, line={"color": colour(i)}))
    fig.add_hline(y=cohen, line_dash="dot", line_color=NEUTRAL, annotation_text="Cohen (r = 0)")
    x_end = float(r.max()) if r.size else 1.0
    if current_r is not None:
        fig.add_vline(x=float(current_r), line_dash="dash", line_color=NEUTRAL,
                      annotation_text=f"r = {current_r:g}", annotation_position="top")
        x_end = max(x_end, float(current_r))
    return _layout(fig, "Sound radius vs semi-elasticity", "semi-elasticity r (per unit L2 distance)",
                   RADIUS_AXIS, xaxis_range=[0.0, x_end if x_end > 0 else 1.0])


def sigma_band_figure(dims: np.ndarray, low: np.ndarray, high: np.ndarray, current: int | None = None) -> go.Figure:
    """The admissible sigma1/sigma0 band at distance 0 vs input dimension (log x axis).

    On a log axis plotly places shapes in data units but annotations and the axis range in
    log10 units, so the range and the "N = ..." label are given as log10 values; the range
    spans the band's dimensions and the marked dimension ``current``.
    """
    dims = np.asarray(dims, dtype=float)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=dims, y=np.asarray(high, dtype=float), mode="lines", name="upper limit",
                             line={"color": colour(0)}))
    fig.add_trace(go.Scatter(x=dims, y=np.asarray(low, dtype=float), mode="lines", name="lower limit",
                             line={"color": colour(1)}, fill="tonexty", fillcolor="rgba(31,119,180,0.15)"))
    span = [float(dims.min()), float(dims.max())] if dims.size else [1.0, 10.0]
    if current is not None:
        span = [min(span[0], float(current)), max(span[1], float(current))]
        fig.add_vline(x=float(current), line_dash="dash", line_color=NEUTRAL)
        fig.add_annotation(x=math.log10(current), y=1.0, xref="x", yref="paper", text=f"N = {current:,}",
                           showarrow=False, xanchor="left", yanchor="bottom")
    fig.add_hline(y=1.0, line_dash="dot", line_color=NEUTRAL)
    pad = 0.05 * max(math.log10(span[1]) - math.log10(span[0]), 1.0)
    return _layout(fig, "Admissible σ₁/σ₀ band (still certified at distance 0)",
                   "input dimension N (log scale)", "σ₁/σ₀ (ratio, unitless)", xaxis_type="log",
                   xaxis_range=[math.log10(span[0]) - pad, math.log10(span[1]) + pad])


def sound_vs_naive_figure(p_a: np.ndarray, sound: np.ndarray, naive: np.ndarray) -> go.Figure:
    """Sound input-dependent radius and the naive sigma0*Phi^-1(p_A) over a grid of p_A."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=np.asarray(p_a, dtype=float), y=np.asarray(naive, dtype=float), mode="lines",
                             name="naive σ₀Φ⁻¹(p_A) (not a guarantee)", line={"color": colour(3), "dash": "dash"}))
    fig.add_trace(go.Scatter(x=np.asarray(p_a, dtype=float), y=np.asarray(sound, dtype=float), mode="lines",
                             name="sound (input-dependent)", line={"color": colour(0)}))
    return _layout(fig, "Sound vs naive radius", "p_A (lower bound on the top-class probability)", RADIUS_AXIS)


# --------------------------------------------------------------------------- runs


def step_points(radius: np.ndarray, accuracy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The vertices of a certified-accuracy step curve, to be drawn with ``line_shape="vh"``.

    ``analysis.accuracy_curve`` gives the value at radius ``radius[i]``, which holds on
    (``radius[i-1]``, ``radius[i]``]: certified accuracy is left-continuous and drops just after
    each certified radius. Drawn "vh" (vertical first), the segment into a vertex takes that vertex's
    value, as it should. The curve is 0 beyond its last radius, so a last vertex at 0 is added there.
    """
    x = np.asarray(radius, dtype=float)
    y = np.asarray(accuracy, dtype=float)
    if x.size and np.isfinite(y[-1]) and y[-1] > 0:
        x, y = np.append(x, x[-1]), np.append(y, 0.0)
    return x, y


def waterfall_figure(curves: Mapping[str, pd.DataFrame], ceilings: Mapping[str, float] | None = None) -> go.Figure:
    """Certified accuracy vs radius, one step curve per run, with each run's ceiling as a dashed line.

    ``curves[label]`` has columns ``radius`` and ``certified_accuracy`` (``analysis.accuracy_curve``);
    ``ceilings[label]`` is sigma*Phi^-1(alpha^(1/n)), the largest radius any point of that run can get.
    """
    fig = go.Figure()
    ceilings = ceilings or {}
    for i, (label, df) in enumerate(curves.items()):
        x, y = step_points(df["radius"].to_numpy(float), df["certified_accuracy"].to_numpy(float))
        fig.add_trace(
            go.Scatter(x=x, y=y, mode="lines", line_shape="vh", name=label, line={"color": colour(i)},
                       legendgroup=label)
        )
        if label in ceilings and np.isfinite(ceilings[label]):
            c = float(ceilings[label])
            fig.add_trace(
                go.Scatter(x=[c, c], y=[0.0, 1.0], mode="lines", name=f"ceiling {label}",
                           line={"color": colour(i), "dash": "dash", "width": 1}, legendgroup=label,
                           hovertemplate=f"ceiling σΦ⁻¹(α^(1/n)) = {c:.3f}<extra></extra>")
            )
    return _layout(fig, "Certified accuracy vs radius", RADIUS_AXIS, ACCURACY_AXIS, yaxis_range=[0, 1.02])


def radius_histogram_figure(radii: Mapping[str, np.ndarray], nbins: int = 30) -> go.Figure:
    """Overlaid histograms of certified radii (abstentions and wrong predictions excluded by caller)."""
    fig = go.Figure()
    arrays = {label: np.asarray(values, dtype=float) for label, values in radii.items()}
    finite = np.concatenate([a[np.isfinite(a)] for a in arrays.values()] or [np.zeros(0)])
    top = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    # the same bins for every run, so bars compare; the end lies just past the largest radius to include it
    bins = {"start": 0.0, "end": top * (1 + 1e-6), "size": top / nbins}
    for i, (label, values) in enumerate(arrays.items()):
        fig.add_trace(go.Histogram(x=values, name=label, opacity=0.6, xbins=bins, marker_color=colour(i)))
    fig.update_layout(barmode="overlay")
    return _layout(fig, "Distribution of certified radii", RADIUS_AXIS, "number of points")


def ecdf(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted values and the fraction of values <= each (the empirical CDF)."""
    v = np.sort(np.asarray(values, dtype=float))
    return v, np.arange(1, v.size + 1) / max(v.size, 1)


def radius_ecdf_figure(radii: Mapping[str, np.ndarray]) -> go.Figure:
    """Empirical CDF of certified radii, one step curve per run."""
    fig = go.Figure()
    for i, (label, values) in enumerate(radii.items()):
        x, y = ecdf(values)
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", line_shape="hv", name=label,
                                 line={"color": colour(i)}))
    return _layout(fig, "Empirical CDF of certified radii", RADIUS_AXIS, "fraction of points with radius ≤ x",
                   yaxis_range=[0, 1.02])


def sound_vs_naive_scatter(points: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> go.Figure:
    """Per point: naive radius (x) vs sound radius (y); the diagonal shows what the naive one overclaims."""
    fig = go.Figure()
    top = 0.0
    for i, (label, (naive, sound)) in enumerate(points.items()):
        naive = np.asarray(naive, dtype=float)
        sound = np.asarray(sound, dtype=float)
        if naive.size:
            top = max(top, float(np.nanmax(naive)), float(np.nanmax(sound)))
        fig.add_trace(go.Scatter(x=naive, y=sound, mode="markers", name=label,
                                 marker={"color": colour(i), "size": 6, "opacity": 0.7}))
    fig.add_trace(go.Scatter(x=[0, top], y=[0, top], mode="lines", name="sound = naive",
                             line={"color": NEUTRAL, "dash": "dot"}))
    return _layout(fig, "Sound vs naive radius per point", "naive radius σ(x)Φ⁻¹(p_A) (L2, pixel units)",
                   "sound radius (L2, pixel units)")


def per_class_figure(per_class: Mapping[str, pd.DataFrame], radius: float) -> go.Figure:
    """Grouped bars: certified accuracy per class at one radius, one colour per run.

    ``per_class[label]`` comes from ``analysis.per_class_accuracy``: columns ``class`` (or ``name``),
    ``certified_accuracy`` and, when present, ``count`` (points of the class) and ``certified``.
    Each bar is labelled "certified/count"; a class the run has no points of is drawn as an empty
    outlined bar labelled "no points", so it cannot be mistaken for a class with none certified
    (a zero-height bar labelled "0/count").
    """
    fig = go.Figure()
    for i, (label, df) in enumerate(per_class.items()):
        names = (df["name"] if "name" in df.columns else df["class"]).astype(str).tolist()
        acc = df["certified_accuracy"].to_numpy(float)
        counts = df["count"].to_numpy(int) if "count" in df.columns else None
        certified = (df["certified"].to_numpy(int) if "certified" in df.columns
                     else None if counts is None else np.rint(np.nan_to_num(acc) * counts).astype(int))
        missing = np.isnan(acc) if counts is None else (counts == 0)
        if counts is None:
            text = ["no points" if m else "" for m in missing]
        else:
            text = ["no points" if m else f"{k}/{n}" for m, k, n in zip(missing, certified, counts)]
        fig.add_trace(go.Bar(
            x=names, y=np.where(missing, 0.0, acc), name=label, marker_color=colour(i),
            text=text, textposition="outside", cliponaxis=False, legendgroup=label, offsetgroup=label,
            hovertemplate="%{x}: %{y:.3f} (%{text})<extra>" + label + "</extra>",
        ))
        if missing.any():
            fig.add_trace(go.Bar(
                x=[n for n, m in zip(names, missing) if m], y=[1.0] * int(missing.sum()),
                name=f"{label}: class absent", legendgroup=label, offsetgroup=label, showlegend=False,
                marker={"color": "rgba(0,0,0,0)", "line": {"color": colour(i), "width": 1},
                        "pattern": {"shape": "/", "fgcolor": colour(i), "fgopacity": 0.35}},
                hovertemplate="%{x}: no points of this class in " + label + "<extra></extra>",
            ))
    fig.update_layout(barmode="group", xaxis_type="category")  # digit names must not become a number axis
    return _layout(fig, f"Certified accuracy per class at radius {radius:g}", "class", ACCURACY_AXIS,
                   yaxis_range=[0, 1.12])


def sigma_vs_radius_figure(points: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> go.Figure:
    """Per point: sigma(x) (x) vs sound certified radius (y), one colour per run."""
    fig = go.Figure()
    for i, (label, (sigma, radius)) in enumerate(points.items()):
        fig.add_trace(go.Scatter(x=np.asarray(sigma, dtype=float), y=np.asarray(radius, dtype=float),
                                 mode="markers", name=label, marker={"color": colour(i), "size": 6, "opacity": 0.7}))
    return _layout(fig, "σ(x) vs certified radius", SIGMA_AXIS, RADIUS_AXIS)


def sigma_histogram_figure(sigma: np.ndarray, nbins: int = 30) -> go.Figure:
    """Histogram of sigma(x) over the chosen points (before certifying).

    The bins are explicit: ``nbins`` equal bins from the smallest to the largest sigma. A constant
    sigma (every value equal, to rounding) is one narrow bar at that sigma on an axis from 0 to
    twice it, rather than plotly's automatic unit-wide bin.
    """
    values = np.asarray(sigma, dtype=float)
    finite = values[np.isfinite(values)]
    fig = go.Figure(go.Histogram(x=values, marker_color=colour(0), name="σ(x)"))
    if finite.size:
        lo, hi = float(finite.min()), float(finite.max())
        if hi - lo <= 1e-9 * max(abs(hi), 1e-12):
            width = max(abs(hi), 1e-12) / 50
            fig.update_traces(xbins={"start": lo - width / 2, "end": hi + width / 2, "size": width})
            fig.update_layout(xaxis_range=[0.0, 2 * hi] if hi > 0 else [hi - 1, hi + 1])
        else:
            end = hi + (hi - lo) * 1e-6  # just past the largest value, so it falls inside the last bin
            fig.update_traces(xbins={"start": lo, "end": end, "size": (end - lo) / max(int(nbins), 1)})
    return _layout(fig, "σ(x) on the chosen test points", SIGMA_AXIS, "number of points")
