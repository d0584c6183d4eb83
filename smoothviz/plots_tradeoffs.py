"""Figures of the trade-offs between runs: data frames of ``smoothviz.tradeoffs`` in, ``go.Figure`` out.

Heatmaps over (sigma_b, r), the kNN-minus-constant difference with its paired verdict, the Pareto
front (dominated runs grey), the envelope (best run per radius) as a curve and as the literature's
table, the waterfall position against r (ceiling, where certified accuracy falls to zero, sound and
naive), certified accuracy with its error band, paired differences with error bars, and the
per-class fairness gap. Nothing is computed here beyond arranging the numbers.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from smoothviz.plots import ACCURACY_AXIS, NEUTRAL, RADIUS_AXIS, colour, step_points
from smoothviz.tradeoffs import EnvelopeTable

R_AXIS = "semi-elasticity r of σ(x) (per unit L2 distance)"
SIGMA_B_AXIS = "σ_b (base noise level, pixel units)"
CLEAN_AXIS = "clean accuracy of the smoothed classifier (certified at radius 0)"
DOMINATED = "rgba(136,136,136,0.55)"  # NEUTRAL, faded: a run another run beats on both axes
VERDICT_COLOURS = {"kNN higher": colour(2), "constant higher": colour(3), "undecided": NEUTRAL,
                   "a higher": colour(2), "b higher": colour(3)}


def _frame(fig: go.Figure, title: str, x: str, y: str, **kwargs) -> go.Figure:
    fig.update_layout(title=title, xaxis_title=x, yaxis_title=y, hovermode="closest",
                      legend={"orientation": "h", "yanchor": "top", "y": -0.2, "x": 0},
                      margin={"l": 60, "r": 20, "t": 50, "b": 110}, **kwargs)
    return fig


def _labels(values) -> list[str]:
    return [f"{float(v):g}" for v in values]


# --------------------------------------------------------------------------- heatmaps


def heatmap_figure(
    table: pd.DataFrame,
    title: str,
    value_name: str,
    counts: pd.DataFrame | None = None,
    zmin: float = 0.0,
    zmax: float = 1.0,
    value_format: str = ".3f",
) -> go.Figure:
    """A heatmap of ``table`` (rows sigma_b, columns r, as ``tradeoffs.grid_view`` makes them).

    Rows and columns are categories (the grid's values, evenly spaced whatever they are). Each
    cell shows its value, and its number of points when ``counts`` is given; a cell without a
    run is blank and says so.
    """
    z = table.to_numpy(dtype=float)
    text = []
    for i in range(z.shape[0]):
        row = []
        for j in range(z.shape[1]):
            if np.isnan(z[i, j]):
                row.append("no run")
            else:
                cell = format(z[i, j], value_format)
                if counts is not None and not pd.isna(counts.iat[i, j]):
                    cell += f"<br>{int(counts.iat[i, j])} pts"
                row.append(cell)
        text.append(row)
    fig = go.Figure(go.Heatmap(
        z=z, x=_labels(table.columns), y=_labels(table.index), text=text, texttemplate="%{text}",
        colorscale="Viridis", zmin=zmin, zmax=zmax, colorbar={"title": {"text": value_name}},
        hovertemplate=f"{table.index.name or 'row'} %{{y}}, {table.columns.name or 'column'} %{{x}}: "
                      "%{text}<extra></extra>",
    ))
    fig.update_xaxes(type="category")
    fig.update_yaxes(type="category")
    return _frame(fig, title, R_AXIS if table.columns.name == "r" else str(table.columns.name),
                  SIGMA_B_AXIS if table.index.name == "sigma_b" else str(table.index.name))


def difference_heatmap_figure(rows: pd.DataFrame, radius: float) -> go.Figure:
    """kNN minus constant certified accuracy at ``radius`` over (sigma_b, r), from
    ``tradeoffs.versus_constant`` rows at that radius (one model, n and alpha).

    Diverging colours centred on 0; each cell shows the difference, its paired interval and the
    verdict (``kNN higher`` / ``constant higher`` only where the interval excludes 0).
    """
    sigma_b = sorted(rows["sigma_b"].unique())
    rs = sorted(rows["r"].unique())
    z = np.full((len(sigma_b), len(rs)), np.nan)
    text = [["no run"] * len(rs) for _ in sigma_b]
    for row in rows.itertuples(index=False):
        i, j = sigma_b.index(row.sigma_b), rs.index(row.r)
        z[i, j] = row.difference
        text[i][j] = f"{row.difference:+.3f}<br>[{row.low:+.3f}, {row.high:+.3f}]<br>{row.verdict}"
    span = float(np.nanmax(np.abs(z))) if np.isfinite(z).any() else 1.0
    span = span if span > 0 else 1.0
    fig = go.Figure(go.Heatmap(
        z=z, x=_labels(rs), y=_labels(sigma_b), text=text, texttemplate="%{text}", colorscale="RdBu",
        zmid=0.0, zmin=-span, zmax=span, colorbar={"title": {"text": "kNN − constant"}},
        hovertemplate="σ_b %{y}, r %{x}: %{text}<extra></extra>",
    ))
    fig.update_xaxes(type="category")
    fig.update_yaxes(type="category")
    return _frame(fig, f"Input-dependent minus constant σ at radius {radius:g} (paired, same points)", R_AXIS,
                  SIGMA_B_AXIS)


# --------------------------------------------------------------------------- Pareto front


def pareto_figure(front: pd.DataFrame, radius: float) -> go.Figure:
    """Clean accuracy (x) against certified accuracy at ``radius`` (y), one marker per run
    (``tradeoffs.pareto_front``): the front in colour and joined by a line, dominated runs grey,
    each saying which run dominates it."""
    fig = go.Figure()
    on = front[front["on_front"]].sort_values(["clean_accuracy", "certified_accuracy"])
    off = front[~front["on_front"]]
    fig.add_trace(go.Scatter(
        x=off["clean_accuracy"], y=off["certified_accuracy"], mode="markers", name="dominated",
        marker={"color": DOMINATED, "size": 9, "line": {"width": 0}}, text=off["run"],
        customdata=off["dominated_by"].fillna("").to_numpy(),
        hovertemplate="%{text}<br>clean %{x:.3f}, certified %{y:.3f}<br>dominated by %{customdata}<extra></extra>",
    ))
    fig.add_trace(go.Scatter(
        x=on["clean_accuracy"], y=on["certified_accuracy"], mode="lines+markers", name="Pareto front",
        marker={"color": colour(0), "size": 11}, line={"color": colour(0), "shape": "hv"}, text=on["run"],
        hovertemplate="%{text}<br>clean %{x:.3f}, certified %{y:.3f}<extra>on the front</extra>",
    ))
    return _frame(fig, f"Clean accuracy vs certified accuracy at radius {radius:g}", CLEAN_AXIS,
                  f"certified accuracy at radius {radius:g}")


# --------------------------------------------------------------------------- envelope


def envelope_figure(curves: Mapping[str, pd.DataFrame], env: pd.DataFrame) -> go.Figure:
    """Every run's certified-accuracy curve (thin, grey) and the envelope (``tradeoffs.envelope``
    on a grid of radii): the best certified accuracy at each radius with its interval for the
    best true accuracy among the runs (shaded), its markers coloured by the run that is best
    (named on hover; one legend entry for them all, as a sweep has many runs)."""
    fig = go.Figure()
    for label, df in curves.items():
        x, y = step_points(df["radius"].to_numpy(float), df["certified_accuracy"].to_numpy(float))
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", line_shape="vh", name=label, showlegend=False,
                                 line={"color": NEUTRAL, "width": 1}, opacity=0.6,
                                 hovertemplate=f"{label}: %{{y:.3f}} at %{{x:.3f}}<extra></extra>"))
    radius = env["radius"].to_numpy(float)
    fig.add_trace(go.Scatter(x=radius, y=env["low"].to_numpy(float), mode="lines", line={"width": 0},
                             line_shape="vh", showlegend=False, hoverinfo="skip", name="envelope low"))
    fig.add_trace(go.Scatter(x=radius, y=env["high"].to_numpy(float), mode="lines", line={"width": 0},
                             line_shape="vh", fill="tonexty", fillcolor="rgba(31,119,180,0.18)",
                             name="interval of the best run's true accuracy", hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=radius, y=env["certified_accuracy"].to_numpy(float), mode="lines", line_shape="vh",
                             line={"color": colour(0), "width": 3}, name="envelope (best run at each radius)",
                             hovertemplate="best %{y:.3f} at %{x:.3f}<extra></extra>"))
    for i, name in enumerate(dict.fromkeys(b for b in env["best"] if b is not None)):
        at = env[env["best"] == name]
        fig.add_trace(go.Scatter(x=at["radius"], y=at["certified_accuracy"], mode="markers", name=f"best: {name}",
                                 marker={"color": colour(i + 1), "size": 7}, legendgroup="best", showlegend=i == 0,
                                 legendgrouptitle={"text": "best run (colour; hover names it)"} if i == 0 else None,
                                 hovertemplate=f"{name}: %{{y:.3f}} at %{{x:.3f}}<extra>best here</extra>"))
    return _frame(fig, "Envelope: the best run at each radius", RADIUS_AXIS, ACCURACY_AXIS, yaxis_range=[0, 1.02])


def envelope_markdown(table: EnvelopeTable, value_format: str = ".3f") -> str:
    """The literature's table as markdown: a row per run, a column per radius, the best entry of
    each column in bold (every tied run; none where no run certifies anything, as every run ties
    at 0 there), a run without points shown as a dash."""
    radii = list(table.accuracy.columns)
    lines = ["| run | " + " | ".join(f"R = {float(r):g}" for r in radii) + " |",
             "|---|" + "---:|" * len(radii)]
    for run in table.accuracy.index:
        cells = []
        for r in radii:
            value = table.accuracy.at[run, r]
            text = "–" if pd.isna(value) else format(float(value), value_format)
            best = bool(table.best.at[run, r]) and float(table.accuracy[r].max()) > 0
            cells.append(f"**{text}**" if best else text)
        name = str(run).replace("|", "\\|")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- waterfall position


def waterfall_position_figure(positions: pd.DataFrame) -> go.Figure:
    """Where the certified-accuracy curve ends, against r, one colour per sigma_b: the ceiling
    σ_max·Φ⁻¹(α^{1/n}) (dashed), the last radius with certified accuracy above 0 for the sound
    certificate (solid) and for the naive one (dotted, no guarantee). ``positions`` has columns
    sigma_b, r, ceiling, zero_sound, zero_naive (``tradeoffs.waterfall_position`` per cell)."""
    fig = go.Figure()
    for i, (sigma_b, group) in enumerate(positions.sort_values("r").groupby("sigma_b", sort=True)):
        c = colour(i)
        r = group["r"].to_numpy(float)
        for column, dash, what in (("ceiling", "dash", "ceiling σ_max·Φ⁻¹(α^(1/n))"),
                                   ("zero_sound", "solid", "sound: accuracy reaches 0"),
                                   ("zero_naive", "dot", "naive: reaches 0 (no guarantee)")):
            fig.add_trace(go.Scatter(x=r, y=group[column].to_numpy(float), mode="lines+markers",
                                     name=f"σ_b = {sigma_b:g}: {what}", legendgroup=f"{sigma_b:g}",
                                     line={"color": c, "dash": dash}, marker={"color": c, "size": 6},
                                     hovertemplate=f"σ_b {sigma_b:g}, r %{{x:g}}: {what} at %{{y:.3f}}<extra></extra>"))
    return _frame(fig, "Waterfall position against r", R_AXIS, RADIUS_AXIS)


# --------------------------------------------------------------------------- error bars


def accuracy_band_figure(
    curves: Mapping[str, pd.DataFrame],
    bands: Mapping[str, pd.DataFrame],
    ceilings: Mapping[str, float] | None = None,
    band_name: str = "95% interval",
    title: str = "Certified accuracy vs radius, with error bars",
) -> go.Figure:
    """Certified accuracy vs radius with its error band, one colour per run.

    ``curves[label]``: the step curve (``analysis.accuracy_curve``); ``bands[label]``: intervals on
    a grid of radii (``tradeoffs.accuracy_intervals``: radius, low, high), drawn as a shaded
    step band (each value holds up to its radius, as the curve's do); ``ceilings[label]``: the
    run's ceiling as a dashed line.
    """
    fig = go.Figure()
    ceilings = ceilings or {}
    for i, (label, df) in enumerate(curves.items()):
        c = colour(i)
        band = bands.get(label)
        if band is not None and len(band):
            x = band["radius"].to_numpy(float)
            fig.add_trace(go.Scatter(x=x, y=band["low"].to_numpy(float), mode="lines", line={"width": 0},
                                     line_shape="vh", legendgroup=label, showlegend=False, hoverinfo="skip",
                                     name=f"{label} low"))
            fig.add_trace(go.Scatter(
                x=x, y=band["high"].to_numpy(float), mode="lines", line={"width": 0}, line_shape="vh",
                fill="tonexty", fillcolor=_fill(c), legendgroup=label, name=f"{label}: {band_name}",
                customdata=np.c_[band["low"].to_numpy(float), band["high"].to_numpy(float)],
                hovertemplate=f"{label}: [%{{customdata[0]:.3f}}, %{{customdata[1]:.3f}}] at %{{x:.3f}}<extra></extra>",
            ))
        x, y = step_points(df["radius"].to_numpy(float), df["certified_accuracy"].to_numpy(float))
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", line_shape="vh", name=label, line={"color": c},
                                 legendgroup=label))
        if label in ceilings and np.isfinite(ceilings[label]):
            top = float(ceilings[label])
            fig.add_trace(go.Scatter(x=[top, top], y=[0.0, 1.0], mode="lines", name=f"ceiling {label}",
                                     line={"color": c, "dash": "dash", "width": 1}, legendgroup=label,
                                     hovertemplate=f"ceiling σΦ⁻¹(α^(1/n)) = {top:.3f}<extra></extra>"))
    return _frame(fig, title, RADIUS_AXIS, ACCURACY_AXIS, yaxis_range=[0, 1.02])


def _fill(hex_colour: str, alpha: float = 0.18) -> str:
    h = hex_colour.lstrip("#")
    return f"rgba({int(h[0:2], 16)},{int(h[2:4], 16)},{int(h[4:6], 16)},{alpha})"


def paired_difference_figure(diff: pd.DataFrame, label_a: str, label_b: str) -> go.Figure:
    """Certified accuracy of a minus b at each radius with its paired interval as error bars
    (``tradeoffs.paired_difference``), each marker coloured by its verdict."""
    fig = go.Figure()
    for verdict, group in diff.groupby("verdict", sort=False):
        d = group["difference"].to_numpy(float)
        name = {"a higher": f"{label_a} higher", "b higher": f"{label_b} higher"}.get(
            verdict, "undecided (the data cannot tell)")
        fig.add_trace(go.Scatter(
            x=group["radius"], y=d, mode="markers", name=name, marker={"color": VERDICT_COLOURS[verdict], "size": 9},
            error_y={"type": "data", "symmetric": False, "array": group["high"].to_numpy(float) - d,
                     "arrayminus": d - group["low"].to_numpy(float)},
            hovertemplate="radius %{x:g}: %{y:+.3f}<extra></extra>",
        ))
    fig.add_hline(y=0.0, line_dash="dot", line_color=NEUTRAL)
    return _frame(fig, f"{label_a} minus {label_b} (paired, same points)", RADIUS_AXIS,
                  "difference in certified accuracy")


# --------------------------------------------------------------------------- fairness


def fairness_figure(rows: pd.DataFrame, radius: float) -> go.Figure:
    """The fairness gap (best minus worst class) at ``radius`` against r, one colour per sigma_b,
    with its interval (``tradeoffs.fairness_interval`` per cell: columns sigma_b, r, gap, gap_low,
    gap_high, worst_class, worst_accuracy, worst_low, worst_high)."""
    return _per_sigma_b(rows, "gap", "gap_low", "gap_high",
                        f"Fairness gap at radius {radius:g}: best minus worst class",
                        "certified accuracy, best class minus worst class")


def worst_class_figure(rows: pd.DataFrame, radius: float) -> go.Figure:
    """The worst class's certified accuracy at ``radius`` against r, one colour per sigma_b, with
    its interval (the rows of ``fairness_figure``); the hover names the class."""
    return _per_sigma_b(rows, "worst_accuracy", "worst_low", "worst_high",
                        f"Worst class's certified accuracy at radius {radius:g}", ACCURACY_AXIS)


def _per_sigma_b(rows: pd.DataFrame, value: str, low: str, high: str, title: str, y_axis: str) -> go.Figure:
    fig = go.Figure()
    for i, (sigma_b, group) in enumerate(rows.sort_values("r").groupby("sigma_b", sort=True)):
        v = group[value].to_numpy(float)
        fig.add_trace(go.Scatter(
            x=group["r"], y=v, mode="lines+markers", name=f"σ_b = {sigma_b:g}", line={"color": colour(i)},
            error_y={"type": "data", "symmetric": False, "array": group[high].to_numpy(float) - v,
                     "arrayminus": v - group[low].to_numpy(float)},
            customdata=group["worst_class"].astype(str).to_numpy(),
            hovertemplate="r %{x:g}: %{y:.3f} (worst class %{customdata})<extra></extra>",
        ))
    return _frame(fig, title, R_AXIS, y_axis)
