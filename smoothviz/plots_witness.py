"""Figures of counterexamples to the naive certificate (data in, plotly figure out; no Streamlit).

The slice: the worst-case base classifier f* of smoothviz.witness labels A on a ball around
c = (sigma0^2 x1 - sigma1^2 x0) / (sigma0^2 - sigma1^2) (sigma1 > sigma0), on the complement of one
(sigma1 < sigma0) or on a half-space (equal sigmas). x0, x1 and c lie on one line, so every plane
through that line cuts the set in a disk, the outside of a disk or a half-plane, and shows it exactly.
In N dimensions the noise N(x, sigma^2 I) concentrates on a thin shell of radius sigma sqrt(N)
around x (its norm has a spread of about sigma / sqrt(2)); the slice draws those shells as circles.
Coordinates are pixel units with x0 at the origin and x1 on the positive horizontal axis, drawn
to scale (equal axes); ``zoom`` shows the window where the shells meet the region's boundary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go

from smoothviz.plots import DISTANCE_AXIS, NEUTRAL, _layout
from smoothviz.plots_explore import image_grid
from smoothviz.witness import Witness, WorstCaseSet

CLASS_A_FILL, CLASS_B_FILL = "#a9c8e8", "#f2b8b5"
X0_COLOR, X1_COLOR, CENTRE_COLOR = "#1f77b4", "#d62728", "#2ca02c"
SLICE_PIXELS = 241  # grid of the class map along each axis


@dataclass(frozen=True)
class SliceGeometry:
    """What the slice draws, in pixel units (x0 at the origin, x1 at (distance, 0)).

    ``kind``: the region's shape ("ball", "complement", "half-space"); a ball or complement has
    its centre at (``centre``, 0) and radius ``radius``; a half-space is {x <= ``boundary``}.
    ``shell0``, ``shell1``: the noise shells' radii sigma sqrt(N); ``spread0``, ``spread1`` the
    spreads of the noise norms (sigma / sqrt(2)).
    """

    kind: str
    distance: float
    shell0: float
    shell1: float
    spread0: float
    spread1: float
    centre: float
    radius: float
    boundary: float
    dim: int


def slice_geometry(w: Witness) -> SliceGeometry:
    """The slice's numbers from the witness's worst-case set (see the module docstring).

    In units of sigma0 the set is lin*y1 + quad*(||y||^2 - N) <= t; with quad = s/(2m) (d > 0) this is
    ||y + s m e1||^2 <= m^2 + N + 2 s m t (a ball for s = +1, the outside for s = -1), and with quad = 0
    the half-space y1 <= t. (A witness at d = 0 has sigma1 = sigma0, so a ball centred at x0 never occurs.)
    """
    region: WorstCaseSet = w.region
    s0, n = w.sigma0, w.dim
    spread = 1.0 / math.sqrt(2.0)
    common = {"distance": w.distance, "shell0": s0 * math.sqrt(n), "shell1": w.sigma1 * math.sqrt(n),
              "spread0": s0 * spread, "spread1": w.sigma1 * spread, "dim": n}
    if region.quad == 0.0:
        return SliceGeometry("half-space", centre=math.nan, radius=math.nan, boundary=s0 * region.threshold,
                             **common)
    s = 1.0 if region.quad > 0 else -1.0
    m = region.centre_offset
    rho2 = m * m + n + 2.0 * s * m * region.threshold
    return SliceGeometry(region.kind, centre=-s * m * s0, radius=s0 * math.sqrt(max(rho2, 0.0)), boundary=math.nan,
                         **common)


def _window(g: SliceGeometry, zoom: bool) -> tuple[float, float, float, float]:
    """(x_lo, x_hi, y_lo, y_hi) of the view: everything to scale, or the top of the shells, where their mass lies."""
    if not zoom:
        reach = max(g.shell0, g.distance + g.shell1) * 1.15
        left = -max(g.shell0, g.shell1 - g.distance) * 1.15
        half = max(reach - left, 1e-9) / 2
        mid = (reach + left) / 2
        return mid - half, mid + half, -half, half
    spread = max(g.spread0, g.spread1)
    half = max(g.distance / 2 + 3.0 * spread, abs(g.shell1 - g.shell0) / 2 + 4.0 * spread)
    mid_x, mid_y = g.distance / 2, (g.shell0 + g.shell1) / 2
    return mid_x - half, mid_x + half, mid_y - half, mid_y + half


def class_map(w: Witness, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """f* on the plane: True (class A) where the witness's statistic is <= 0, for pixel coordinates
    (x along x1 - x0, y along any direction orthogonal to it), evaluated exactly as the classifier does."""
    r = w.region
    a = np.asarray(x, dtype=np.float64) / w.sigma0
    b = np.asarray(y, dtype=np.float64) / w.sigma0
    t = -r.threshold + r.lin * a
    if r.quad != 0.0:
        t = t + r.quad * ((a * a + b * b) - r.dim)
    return t <= 0


def _circle(x0: float, r: float, color: str, dash: str, name: str) -> go.Scatter:
    theta = np.linspace(0.0, 2.0 * math.pi, 2881)
    return go.Scatter(x=x0 + r * np.cos(theta), y=r * np.sin(theta), mode="lines", name=name,
                      line={"color": color, "dash": dash, "width": 2}, hoverinfo="name")


def _mass_arcs(x0: float, r: float, sigma: float, color: str, name: str, legend: bool) -> go.Scatter:
    """The parts of a shell where its noise mass lies: the component along x1 - x0 is N(0, sigma^2), so
    within +-2 sigma of the centre's abscissa (top and bottom arcs)."""
    half = min(2.0 * sigma, r)
    x = np.linspace(x0 - half, x0 + half, 201)
    y = np.sqrt(np.maximum(r * r - (x - x0) ** 2, 0.0))
    return go.Scatter(x=np.r_[x, np.nan, x], y=np.r_[y, np.nan, -y], mode="lines", name=name, showlegend=legend,
                      line={"color": color, "width": 7}, opacity=0.5, hoverinfo="name")


def slice_figure(w: Witness, zoom: bool = False) -> go.Figure:
    """The 2-D slice through x0, x1 and c: f*'s classes, both noise shells, x0, x1 and c (to scale)."""
    g = slice_geometry(w)
    x_lo, x_hi, y_lo, y_hi = _window(g, zoom)
    xs = np.linspace(x_lo, x_hi, SLICE_PIXELS)
    ys = np.linspace(y_lo, y_hi, SLICE_PIXELS)
    inside = class_map(w, xs[None, :], ys[:, None]).astype(float)
    fig = go.Figure(go.Heatmap(
        x=xs, y=ys, z=inside, zmin=0, zmax=1, showscale=False, hoverinfo="skip", name="f*",
        colorscale=[[0.0, CLASS_B_FILL], [0.5, CLASS_B_FILL], [0.5, CLASS_A_FILL], [1.0, CLASS_A_FILL]],
    ))
    fig.add_trace(_circle(0.0, g.shell0, X0_COLOR, "solid", f"noise shell at x₀: radius σ₀√N = {g.shell0:.4g}"))
    fig.add_trace(_circle(g.distance, g.shell1, X1_COLOR, "dash", f"noise shell at x₁: radius σ₁√N = {g.shell1:.4g}"))
    mass = "where the noise mass lies (component along x₁ − x₀ within ±2σ)"
    fig.add_trace(_mass_arcs(0.0, g.shell0, w.sigma0, X0_COLOR, mass, True))
    fig.add_trace(_mass_arcs(g.distance, g.shell1, w.sigma1, X1_COLOR, mass, False))
    points_x, points_text, colors = [0.0, g.distance], ["x₀", "x₁"], [X0_COLOR, X1_COLOR]
    if g.kind != "half-space" and x_lo <= g.centre <= x_hi:
        points_x.append(g.centre)
        points_text.append("c")
        colors.append(CENTRE_COLOR)
    fig.add_trace(go.Scatter(x=points_x, y=[0.0] * len(points_x), mode="markers+text", text=points_text,
                             textposition=["top left", "top right", "top center"][: len(points_x)], marker={"color": colors, "size": 9}, name="x₀, x₁, c",
                             showlegend=False))
    region = {"ball": f"A on the ball around c (radius {g.radius:.4g})",
              "complement": f"A outside the ball around c (radius {g.radius:.4g})",
              "half-space": f"A on the half-plane x ≤ {g.boundary:.4g}"}[g.kind]
    where = "" if g.kind == "half-space" or x_lo <= g.centre <= x_hi else f"; c at x = {g.centre:.4g}, outside the view"
    title = (f"{'Zoom on the top of the shells, where the noise mass lies' if zoom else 'Slice through x₀, x₁ and c, to scale'}"
             f"<br><sup>{region}{where}</sup>")
    fig = _layout(fig, title, "along x₁ − x₀ (pixel units)", "orthogonal direction (pixel units)")
    fig.update_xaxes(range=[x_lo, x_hi], constrain="domain")
    fig.update_yaxes(range=[y_lo, y_hi], scaleanchor="x", scaleratio=1, constrain="domain")
    fig.update_layout(height=560, title_font_size=13)
    return fig


def probability_figure(p_x0: float, p_x1: float, sampled: dict | None = None) -> go.Figure:
    """P(f* = A) at x0 and x1: the formula's values, and sampled estimates with their Clopper-Pearson intervals.

    ``sampled``: {"x0": (k, n, lo, hi), "x1": (k, n, lo, hi)} (votes for A, samples, interval ends).
    """
    fig = go.Figure(go.Bar(x=["x₀ (σ₀)", "x₁ (σ₁)"], y=[p_x0, p_x1], name="formula (Neyman–Pearson, exact)",
                           marker_color=[X0_COLOR, X1_COLOR], opacity=0.55,
                           hovertemplate="%{x}: %{y:.6f}<extra>formula</extra>"))
    if sampled is not None:
        est, low, high = [], [], []
        for key in ("x0", "x1"):
            k, n, lo, hi = sampled[key]
            est.append(k / n)
            low.append(k / n - lo)
            high.append(hi - k / n)
        fig.add_trace(go.Scatter(
            x=["x₀ (σ₀)", "x₁ (σ₁)"], y=est, mode="markers", name="sampled, with Clopper–Pearson interval",
            marker={"color": "#111111", "size": 10, "symbol": "diamond"},
            error_y={"type": "data", "symmetric": False, "array": high, "arrayminus": low, "thickness": 2},
        ))
    fig.add_hline(y=0.5, line_dash="dash", line_color=NEUTRAL, annotation_text="1/2")
    return _layout(fig, "Probability of class A under the noise", "", "P(f*(x + σε) = A)", yaxis_range=[0, 1.05],
                   height=380)


def breaking_figure(distance: np.ndarray, low: np.ndarray, high: np.ndarray, naive: float, sound: float,
                    chosen: float | None = None) -> go.Figure:
    """Worst case at the two ends of the admissible sigma1 band vs distance, with the naive and sound radii.

    ``low``/``high``: worst case for sigma1 = sigma0 e^{-rd} and sigma0 e^{+rd}; the smaller one first falls
    to 1/2 at the sound radius, while the naive radius claims up to its own value.
    """
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=distance, y=low, mode="lines", name="σ₁ = σ₀·exp(−r·d)", line={"color": X0_COLOR}))
    fig.add_trace(go.Scatter(x=distance, y=high, mode="lines", name="σ₁ = σ₀·exp(+r·d)", line={"color": X1_COLOR}))
    fig.add_hline(y=0.5, line_dash="dash", line_color=NEUTRAL, annotation_text="1/2")
    fig.add_vline(x=sound, line_color="#2ca02c", annotation_text="sound radius", annotation_position="bottom right")
    fig.add_vline(x=naive, line_color="#7f7f7f", line_dash="dot", annotation_text="naive radius (no guarantee)",
                  annotation_position="top left")
    if chosen is not None:
        fig.add_vline(x=chosen, line_color="#111111", line_dash="dash", annotation_text="d")
    return _layout(fig, "Worst case over the admissible σ₁ band", DISTANCE_AXIS, "worst-case P(f(x₁+σ₁ε) = A)",
                   yaxis_range=[0, 1], height=380)


def pair_figure(x0: np.ndarray, x1: np.ndarray, sigma0: float, sigma1: float, distance: float) -> go.Figure:
    """x0, x1 and their difference (scaled to [0, 1], 0.5 = no change) as images, with their sigmas."""
    diff = np.asarray(x1, dtype=np.float64) - np.asarray(x0, dtype=np.float64)
    scale = float(np.abs(diff).max()) or 1.0
    shown = 0.5 + 0.5 * diff / scale
    return image_grid(np.stack([np.asarray(x0), np.asarray(x1), shown]), titles=[
        f"x₀ · σ(x₀) = {sigma0:.4f}", f"x₁ · σ(x₁) = {sigma1:.4f}",
        f"x₁ − x₀ (‖·‖ = {distance:.3f};<br>grey 0, ±{scale:.2g} at the ends)"], cols=3, cell_px=160)
