"""Figures of anytime-valid (sequential) certification: data in, plotly figure out.

A point certified live (``smoothviz.live``): its confidence sequence for p_A and its sound radius
against the number of estimation samples (log x; the bounds change only at the rule's
checkpoints, so they are drawn as steps). A running sequential run: the certified-accuracy curve
of what is certified so far (stored points with their final radius, points in flight with the
radius of their current lower bound). A finished one: samples per point and why points stopped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from smoothviz import analysis
from smoothviz.plots import (
    ACCURACY_AXIS,
    NEUTRAL,
    RADIUS_AXIS,
    colour,
    waterfall_figure,
)

SAMPLES_AXIS = "estimation samples drawn (log scale)"
# The order of the stopping reasons (sequential_engine.REASON_NAMES) in figures: certified ones first.
REASON_ORDER = ("radius-cap", "certified", "stalled", "budget", "short", "below-target", "abstain", "undecided")


def _layout(fig: go.Figure, title: str, x: str, y: str, **kwargs) -> go.Figure:
    layout = {"legend": {"orientation": "h", "yanchor": "top", "y": -0.25, "x": 0},
              "margin": {"l": 60, "r": 20, "t": 50, "b": 110}, "hovermode": "x unified", **kwargs}
    fig.update_layout(title=title, xaxis_title=x, yaxis_title=y, **layout)
    return fig


def live_bounds_figure(samples: Sequence[int] | np.ndarray, lower: Sequence[float] | np.ndarray,
                       upper: Sequence[float] | np.ndarray, alpha: float, needed: float | None = None,
                       drawn: int | None = None) -> go.Figure:
    """The confidence sequence of one point: lower and upper bound on p_A at each checkpoint read.

    ``needed``: the p_A a fixed radius R needs (dotted line), beside the 1/2 that any certificate
    needs. ``drawn``: estimation samples drawn so far, when the current draw is not complete
    (the last bounds hold until its checkpoint, so they are extended to it).
    """
    t = np.asarray(samples, dtype=float)
    lo, up = np.asarray(lower, dtype=float), np.asarray(upper, dtype=float)
    if t.size and drawn is not None and drawn > t[-1]:
        t, lo, up = np.append(t, drawn), np.append(lo, lo[-1]), np.append(up, up[-1])
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=t.tolist(), y=up.tolist(), mode="lines+markers", line_shape="hv",
                             name="upper bound on p_A", line={"color": colour(1)}, marker={"size": 4}))
    fig.add_trace(go.Scatter(x=t.tolist(), y=lo.tolist(), mode="lines+markers", line_shape="hv",
                             name="lower bound on p_A", line={"color": colour(0)}, marker={"size": 4},
                             fill="tonexty", fillcolor="rgba(31,119,180,0.12)"))
    fig.add_hline(y=0.5, line_dash="dash", line_color=NEUTRAL, annotation_text="1/2: certifies radius 0",
                  annotation_position="bottom right")
    if needed is not None:
        fig.add_hline(y=float(needed), line_dash="dot", line_color=colour(2),
                      annotation_text=f"p_A needed for R: {needed:.6g}", annotation_position="top left")
    return _layout(fig, f"Confidence sequence for p_A (valid at every sample count at once, α = {alpha:g})",
                   SAMPLES_AXIS, "p_A (probability of class A under noise)", xaxis_type="log",
                   yaxis_range=[0, 1.02])


def live_radius_figure(samples: Sequence[int] | np.ndarray, radius: Sequence[float] | np.ndarray,
                       target: float | None = None, cap: float | None = None, drawn: int | None = None) -> go.Figure:
    """The sound radius of the running lower bound at each checkpoint read (0 until it exceeds 1/2).

    ``target``: the fixed radius R asked (dotted line); ``cap``: the radius mode's maximum radius;
    ``drawn`` as for ``live_bounds_figure``.
    """
    t = np.asarray(samples, dtype=float)
    rad = np.asarray(radius, dtype=float)
    if t.size and drawn is not None and drawn > t[-1]:
        t, rad = np.append(t, drawn), np.append(rad, rad[-1])
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=t.tolist(), y=rad.tolist(), mode="lines+markers", line_shape="hv",
                             name="sound radius (a certificate at every moment)", line={"color": colour(0)},
                             marker={"size": 4}))
    for value, label in ((target, "R asked"), (cap, "maximum radius")):
        if value is not None and np.isfinite(value):
            fig.add_hline(y=float(value), line_dash="dot", line_color=colour(2), annotation_text=f"{label}: {value:g}",
                          annotation_position="top left")
    return _layout(fig, "Sound certified radius vs samples", SAMPLES_AXIS, RADIUS_AXIS, xaxis_type="log",
                   yaxis_rangemode="tozero")


def partial_curve_figure(partial: pd.DataFrame, ceiling: float | None = None) -> go.Figure:
    """Certified accuracy so far over every point of a running run (``live.partial_results``).

    Two curves, both over all the run's points: "certified so far" counts decided points with
    their final radius and points in flight with the radius of their current lower bound;
    "decided points only" counts the former alone. Each is a valid reading at this moment, and
    both only rise as the run goes on.
    """
    decided = partial.assign(correct=partial["correct"] & (partial["state"] == "decided"))
    label_all, label_decided = "certified so far (decided + in flight)", "decided points only"
    curves = {label_all: analysis.accuracy_curve(partial), label_decided: analysis.accuracy_curve(decided)}
    fig = waterfall_figure(curves, {label_all: ceiling} if ceiling is not None else None)
    states = partial["state"].value_counts()
    title = (f"Certified so far vs radius ({int(states.get('decided', 0)):,} of {len(partial):,} points decided, "
             f"{int(states.get('in flight', 0)):,} in flight)")
    fig.update_layout(title=title, yaxis_title=f"certified so far ({ACCURACY_AXIS.split(' (')[0]}, of all points)")
    return fig


def samples_figure(samples: Sequence[int] | np.ndarray, fixed_per_point: int, nbins: int = 30) -> go.Figure:
    """Histogram of the samples each point used (selection + estimation), with the fixed-n cost n0 + n."""
    values = np.asarray(samples, dtype=float)
    fig = go.Figure()
    top = max(float(values.max()) if values.size else 0.0, float(fixed_per_point))
    fig.add_trace(go.Histogram(x=values, name="points", marker_color=colour(0),
                               xbins={"start": 0.0, "end": top * (1 + 1e-6), "size": top / nbins}))
    fig.add_vline(x=float(fixed_per_point), line_dash="dash", line_color=colour(3),
                  annotation_text=f"fixed n: n0 + n = {fixed_per_point:,}", annotation_position="top left")
    mean = f"{float(values.mean()):,.0f}" if values.size else "—"
    return _layout(fig, f"Samples per point (mean {mean}, fixed n would use {fixed_per_point:,})",
                   "samples used by the point (selection + estimation)", "number of points", showlegend=False,
                   hovermode="closest")


def stop_reasons_figure(reasons: Mapping[str, int]) -> go.Figure:
    """How many points stopped for each reason (``sequential_engine.REASON_NAMES``)."""
    names = sorted(reasons, key=lambda r: (REASON_ORDER.index(r) if r in REASON_ORDER else len(REASON_ORDER), r))
    fig = go.Figure(go.Bar(x=names, y=[int(reasons[n]) for n in names], marker_color=colour(0),
                           text=[int(reasons[n]) for n in names], textposition="outside"))
    return _layout(fig, "Why points stopped", "stopping reason", "number of points", showlegend=False,
                   hovermode="closest")
