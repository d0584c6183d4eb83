"""Plotly figure builders for the sample explorer, the 2-D playground and the training page.

Data in, ``go.Figure`` out; no Streamlit. Colours are mid-tone and every plot area is filled
(images, opaque pastel regions), so figures read the same in light and dark themes. No WebGL.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

# Plotly's qualitative palette: distinct mid-tone colours, legible on white and on near-black.
CLASS_COLORS = (
    "#636EFA", "#EF553B", "#00CC96", "#AB63FA", "#FFA15A",
    "#19D3F3", "#FF6692", "#B6E880", "#FF97FF", "#FECB52",
)
ABSTAIN_COLOR = "#9E9E9E"
HIGHLIGHT_COLOR = "#636EFA"
SOUND_COLOR = "#111111"
HALO_COLOR = "#FFFFFF"


def class_color(c: int) -> str:
    """The colour of class ``c`` (cycled), shared by points, bars and regions."""
    return CLASS_COLORS[c % len(CLASS_COLORS)]


def class_label(name: object) -> str:
    """``class NAME`` for legends, without doubling a name that already says ``class``."""
    text = str(name)
    return text if text.lower().startswith("class") else f"class {text}"


def _pastel(hex_color: str, amount: float = 0.55) -> str:
    """``hex_color`` mixed with white, for region fills under full-colour markers."""
    rgb = [int(hex_color[i : i + 2], 16) for i in (1, 3, 5)]
    mixed = [round(v + (255 - v) * amount) for v in rgb]
    return "#" + "".join(f"{v:02x}" for v in mixed)


def _to_rgb_uint8(img: np.ndarray) -> np.ndarray:
    """[C,H,W] or [H,W] float image in [0,1] (values outside are clipped) -> [H,W,3] uint8."""
    a = np.asarray(img, dtype=np.float64)
    if a.ndim == 3:
        a = np.moveaxis(a, 0, -1)
        if a.shape[-1] == 1:
            a = np.repeat(a, 3, axis=-1)
    elif a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    else:
        raise ValueError(f"image must be [C,H,W] or [H,W], got shape {a.shape}")
    return np.round(np.clip(a, 0.0, 1.0) * 255).astype(np.uint8)


def image_grid(
    images: np.ndarray,
    titles: Sequence[str] | None = None,
    cols: int = 8,
    title: str = "",
    cell_px: int = 110,
) -> go.Figure:
    """A grid of images ([B,C,H,W] or [B,H,W], values in [0,1]; noisy ones are clipped for display)."""
    images = np.asarray(images)
    b = images.shape[0]
    if b == 0:
        raise ValueError("image_grid needs at least one image")
    cols = max(1, min(cols, b))
    rows = math.ceil(b / cols)
    lines = max((str(t).count("<br>") + 1 for t in titles), default=0) if titles is not None else 0
    title_px = 14 * lines + 6 if lines else 4  # room above each row for its subplot titles
    plot_px = rows * (cell_px + title_px)
    fig = make_subplots(
        rows=rows,
        cols=cols,
        subplot_titles=list(titles) if titles is not None else None,
        horizontal_spacing=0.02,
        vertical_spacing=title_px / plot_px if rows > 1 else 0.0,
    )
    for i in range(b):
        fig.add_trace(
            go.Image(z=_to_rgb_uint8(images[i]), hovertemplate="row %{y}, col %{x}<br>value %{z[0]}<extra></extra>"),
            row=i // cols + 1,
            col=i % cols + 1,
        )
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_annotations(font_size=11)
    top = title_px + (40 if title else 4)
    fig.update_layout(
        title=title or None,
        height=plot_px + top + 10,
        margin=dict(l=10, r=10, t=top, b=10),
    )
    return fig


def vote_histogram(
    counts: Sequence[int],
    class_names: Sequence[str],
    predicted: int,
    label: int | None = None,
) -> go.Figure:
    """Votes of the base classifier over the noisy samples, predicted class highlighted."""
    counts = np.asarray(counts, dtype=np.int64)
    n = int(counts.sum())
    names = [str(c) for c in class_names]
    colors = [HIGHLIGHT_COLOR if c == predicted else ABSTAIN_COLOR for c in range(len(counts))]
    hover = [
        f"{names[c]}: {int(counts[c])} of {n} votes ({counts[c] / max(n, 1):.1%})"
        + (" · true label" if c == label else "")
        for c in range(len(counts))
    ]
    fig = go.Figure(
        go.Bar(
            x=names,
            y=counts,
            marker_color=colors,
            hovertext=hover,
            hoverinfo="text",
            name="votes",
        )
    )
    if label is not None and 0 <= label < len(counts):
        fig.add_annotation(
            x=names[label], y=int(counts[label]), text="true label", showarrow=True, arrowhead=2, ay=-30
        )
    fig.update_layout(
        title=f"Votes of the base classifier on n = {n:,} noisy cop{'y' if n == 1 else 'ies'}",
        xaxis_title="class",
        yaxis_title=f"votes (count of {n:,} samples)",
        xaxis_type="category",
        height=340,
        margin=dict(l=10, r=10, t=50, b=10),
        showlegend=False,
    )
    return fig


def radius_bars(radius: float, naive_radius: float) -> go.Figure:
    """Sound certified radius next to the naive one (hatched: not a guarantee)."""
    labels = ["sound (certified)", "naive σ(x)·Φ⁻¹(p_A) — not a guarantee"]
    fig = go.Figure(
        go.Bar(
            y=labels,
            x=[radius, naive_radius],
            orientation="h",
            marker=dict(color=["#00A06B", "#E0663F"], pattern_shape=["", "/"]),
            text=[f"{radius:.4f}", f"{naive_radius:.4f}"],
            textposition="outside",
            cliponaxis=False,
            hovertemplate="%{y}: %{x:.4f}<extra></extra>",
        )
    )
    fig.update_layout(
        title="Certified L2 radius",
        xaxis_title="L2 radius (input space, pixels in [0, 1])",
        yaxis_title="certificate",
        yaxis_autorange="reversed",
        xaxis_range=[0, 1.3 * max(radius, naive_radius, 1e-3)],  # room for the value labels
        height=220,
        margin=dict(l=10, r=10, t=50, b=10),
        showlegend=False,
    )
    return fig


def _discrete_colorscale(colors: Sequence[str]) -> list[list]:
    """Stepped colourscale with one equal-width bin per colour (values 0..K-1 with zmin=-0.5)."""
    k = len(colors)
    scale: list[list] = []
    for j, c in enumerate(colors):
        scale.append([j / k, c])
        scale.append([(j + 1) / k, c])
    return scale


def region_map(
    xs: np.ndarray,
    ys: np.ndarray,
    pred: np.ndarray,
    class_names: Sequence[str],
    title: str,
    points: np.ndarray | None = None,
    point_labels: np.ndarray | None = None,
    point_ids: np.ndarray | None = None,
    circles: Sequence[Mapping[str, float]] = (),
    hover_values: np.ndarray | None = None,
    hover_name: str = "",
) -> go.Figure:
    """Decision regions on a grid (``pred[i, j]`` at ``(xs[j], ys[i])``, -1 = abstain) with points and circles.

    ``circles``: mappings with ``x``, ``y``, ``radius`` and optionally ``naive_radius``; the sound radius
    is drawn solid, the naive one dashed. Points carry their dataset index in ``customdata`` so a
    plotly selection maps back to rows.
    """
    pred = np.asarray(pred)
    num_classes = len(class_names)
    colors = [ABSTAIN_COLOR] + [_pastel(class_color(c)) for c in range(num_classes)]
    names = ["abstain"] + [str(c) for c in class_names]
    z = pred.astype(np.int64) + 1
    text = np.asarray(names, dtype=object)[z]
    hovertemplate = "x₁=%{x:.2f}, x₂=%{y:.2f}<br>%{text}"
    customdata = None
    if hover_values is not None:
        customdata = np.asarray(hover_values, dtype=np.float64)
        hovertemplate += f"<br>{hover_name}=%{{customdata:.3f}}"
    fig = go.Figure(
        go.Heatmap(
            x=xs,
            y=ys,
            z=z,
            zmin=-0.5,
            zmax=num_classes + 0.5,
            colorscale=_discrete_colorscale(colors),
            text=text,
            customdata=customdata,
            hovertemplate=hovertemplate + "<extra></extra>",
            colorbar=dict(title="region", tickvals=list(range(num_classes + 1)), ticktext=names),
            name="regions",
        )
    )
    if points is not None:
        points = np.asarray(points)
        labels = np.zeros(len(points), dtype=np.int64) if point_labels is None else np.asarray(point_labels)
        ids = np.arange(len(points)) if point_ids is None else np.asarray(point_ids)
        for c in range(num_classes):
            m = labels == c
            if not m.any():
                continue
            fig.add_trace(
                go.Scatter(
                    x=points[m, 0],
                    y=points[m, 1],
                    mode="markers",
                    marker=dict(color=class_color(c), size=6, line=dict(color="#222222", width=0.7)),
                    customdata=ids[m],
                    hovertemplate="point #%{customdata}<br>x₁=%{x:.2f}, x₂=%{y:.2f}"
                    f"<extra>{class_names[c]}</extra>",
                    name=class_label(class_names[c]),
                )
            )
    _add_circles(fig, circles)
    return _plane_layout(fig, xs, ys, title, legend=dict(orientation="h", yanchor="top", y=-0.15))


def _plane_layout(fig: go.Figure, xs: np.ndarray, ys: np.ndarray, title: str, **layout) -> go.Figure:
    """The layout every map of the plane shares: x₁/x₂ axes over the grid at equal scale, so circles stay round."""
    fig.update_layout(
        title=title,
        xaxis_title="x₁ (input units)",
        yaxis_title="x₂ (input units)",
        height=460,
        margin=dict(l=10, r=10, t=50, b=10),
        **layout,
    )
    fig.update_xaxes(range=[float(xs[0]), float(xs[-1])], constrain="domain")
    fig.update_yaxes(range=[float(ys[0]), float(ys[-1])], scaleanchor="x", scaleratio=1, constrain="domain")
    return fig


def _add_circles(fig: go.Figure, circles: Sequence[Mapping[str, float]]) -> None:
    """Certified balls as layout shapes: white halo + dark line, so they read on any fill."""
    centres_x, centres_y, hover = [], [], []
    for c in circles:
        cx, cy = float(c["x"]), float(c["y"])
        rings = [(float(c["radius"]), "solid")]
        if c.get("naive_radius") is not None:
            rings.append((float(c["naive_radius"]), "dash"))
        for rad, dash in rings:
            if not rad > 0:
                continue
            for color, width in ((HALO_COLOR, 4), (SOUND_COLOR, 2)):
                fig.add_shape(
                    type="circle",
                    xref="x",
                    yref="y",
                    x0=cx - rad,
                    x1=cx + rad,
                    y0=cy - rad,
                    y1=cy + rad,
                    line=dict(color=color, width=width, dash=dash),
                    name=f"{dash} r={rad:.4f}",
                )
        centres_x.append(cx)
        centres_y.append(cy)
        naive = c.get("naive_radius")
        hover.append(
            f"sound radius {float(c['radius']):.4f}"
            + (f"<br>naive radius {float(naive):.4f} (not a guarantee)" if naive is not None else "")
        )
    if centres_x:
        fig.add_trace(
            go.Scatter(
                x=centres_x,
                y=centres_y,
                mode="markers",
                marker=dict(symbol="x", size=11, color=SOUND_COLOR, line=dict(color=HALO_COLOR, width=1.5)),
                hovertext=hover,
                hoverinfo="text",
                name="certified points (solid: sound, dashed: naive)",
            )
        )


def log_ticks(lo: float, hi: float) -> list[float]:
    """Round values (1, 2, 5 times powers of ten) between ``lo`` > 0 and ``hi``, for a log colour bar.

    Both ends are included when fewer than two round values fall inside, so the bar is always labelled.
    """
    if not (lo > 0 and hi >= lo and math.isfinite(hi)):
        raise ValueError(f"log ticks need 0 < lo <= hi < inf, got {lo}, {hi}")
    ticks = [m * 10.0**e for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
             for m in (1, 2, 5)]
    inside = [t for t in ticks if lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9)]
    if len(inside) < 2:
        inside = sorted({lo, *inside, hi})
    return inside


def scalar_heatmap(
    xs: np.ndarray,
    ys: np.ndarray,
    values: np.ndarray,
    title: str,
    colorbar_title: str,
    points: np.ndarray | None = None,
    colorscale: str = "Viridis",
    log_scale: bool = False,
) -> go.Figure:
    """A scalar field on the grid (e.g. sigma(x) or p_A), with the training points as faint dots.

    ``log_scale`` colours by log10 of the (positive) values, with the colour bar labelled in the
    values themselves: a kNN sigma(x) = sigma_b*exp(r*(d - m)) grows exponentially away from the
    data, so on a linear scale everything near the data would share one colour. The hover shows
    the value itself either way.
    """
    values = np.asarray(values, dtype=np.float64)
    colorbar: dict = dict(title=colorbar_title)
    z = values
    if log_scale:
        positive = values[np.isfinite(values) & (values > 0)]
        if positive.size == 0:
            raise ValueError("a log colour scale needs positive values")
        z = np.log10(np.where(values > 0, values, np.nan))
        ticks = log_ticks(float(positive.min()), float(positive.max()))
        colorbar.update(tickvals=[math.log10(t) for t in ticks], ticktext=[f"{t:.3g}" for t in ticks],
                        title=f"{colorbar_title} (log scale)")
    fig = go.Figure(
        go.Heatmap(
            x=xs,
            y=ys,
            z=z,
            customdata=values,
            colorscale=colorscale,
            colorbar=colorbar,
            hovertemplate="x₁=%{x:.2f}, x₂=%{y:.2f}<br>" + colorbar_title + "=%{customdata:.4g}<extra></extra>",
            name=colorbar_title,
        )
    )
    if points is not None:
        points = np.asarray(points)
        fig.add_trace(
            go.Scatter(
                x=points[:, 0],
                y=points[:, 1],
                mode="markers",
                marker=dict(color="rgba(255,255,255,0.55)", size=4, line=dict(color="#222222", width=0.5)),
                hoverinfo="skip",
                name="training points",
            )
        )
    return _plane_layout(fig, xs, ys, title, showlegend=False)


def _epoch_step(span: int) -> int:
    """The tick step for ``span`` epochs: 1, 2 or 5 times a power of ten, giving at most ten ticks."""
    scale = 1
    while True:
        for m in (1, 2, 5):
            if span <= 10 * m * scale:
                return m * scale
        scale *= 10


def training_curves(history: Sequence[Mapping[str, float]], total_epochs: int | None = None) -> go.Figure:
    """Per-epoch loss (left axis) and accuracies in % (right axis) from a list of epoch records.

    Each record has ``epoch`` and any of ``loss``, ``noisy_train_accuracy``, ``clean_accuracy``
    (fractions in [0, 1]); missing keys are simply not drawn. The epoch axis has integer ticks and
    runs from epoch 1 to ``total_epochs`` (the planned count) or the last epoch recorded.
    """
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    epochs = [int(h["epoch"]) for h in history]
    if any("loss" in h for h in history):
        fig.add_trace(
            go.Scatter(
                x=epochs,
                y=[h.get("loss") for h in history],
                mode="lines+markers",
                name="training loss",
                line=dict(color=CLASS_COLORS[1]),
            ),
            secondary_y=False,
        )
    for key, label, color in (
        ("noisy_train_accuracy", "training accuracy under noise", CLASS_COLORS[2]),
        ("clean_accuracy", "clean test accuracy", CLASS_COLORS[0]),
    ):
        if any(key in h for h in history):
            fig.add_trace(
                go.Scatter(
                    x=epochs,
                    y=[None if h.get(key) is None else 100.0 * float(h[key]) for h in history],
                    mode="lines+markers",
                    name=label,
                    line=dict(color=color),
                ),
                secondary_y=True,
            )
    # epochs are whole numbers: ticks at integers only, at most about ten of them
    last = max([*epochs, int(total_epochs or 0), 1])
    fig.update_xaxes(tickmode="linear", tick0=0, dtick=_epoch_step(last), tickformat="d", range=[0.5, last + 0.5])
    fig.update_layout(
        title="Training progress",
        xaxis_title="epoch",
        height=360,
        margin=dict(l=10, r=10, t=50, b=10),
        legend=dict(orientation="h", yanchor="top", y=-0.2),
    )
    fig.update_yaxes(title_text="loss (cross-entropy)", secondary_y=False)
    fig.update_yaxes(title_text="accuracy (%)", range=[0, 100], secondary_y=True)
    return fig


_EPOCH_LINE = re.compile(
    r"epoch (?P<epoch>\d+)/(?P<epochs>\d+): loss (?P<loss>[-+0-9.eE]+|nan|inf), "
    r"noisy train accuracy (?P<acc>[-+0-9.eE]+|nan)"
)


def epoch_history(log_text: str) -> list[dict[str, float]]:
    """Per-epoch records parsed from the epoch lines that ``smoothviz train`` prints to stderr.

    A resumed run prints an epoch again; the last line for an epoch wins.
    """
    records: dict[int, dict[str, float]] = {}
    for m in _EPOCH_LINE.finditer(log_text):
        epoch = int(m["epoch"])
        records[epoch] = {
            "epoch": epoch,
            "loss": float(m["loss"]),
            "noisy_train_accuracy": float(m["acc"]),
        }
    return [records[e] for e in sorted(records)]
