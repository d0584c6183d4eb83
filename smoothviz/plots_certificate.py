"""A picture of what a certificate means, in two dimensions (data in, plotly figure out).

The base classifier is a half-plane: class A on the side of x0, class B beyond a straight
boundary. Under Gaussian noise N(x0, sigma^2 I) the probability of A is p_A = Phi(b / sigma),
with b the distance from x0 to the boundary, so Cohen's radius sigma * Phi^-1(p_A) equals b: the
certified ball touches the boundary and a point just outside it is classified B. The half-plane
is the worst case of the Neyman-Pearson argument, which is why the radius cannot be larger.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
from scipy.stats import norm

CLASS_A, CLASS_B = "#1f77b4", "#d62728"


@dataclass(frozen=True)
class CertificatePicture:
    """The numbers the figure draws (so tests and captions use the same ones)."""

    center: tuple[float, float]
    sigma: float
    p_a: float
    radius: float
    adversarial: tuple[float, float]


def certificate_picture(sigma: float = 0.5, p_a: float = 0.9, outside: float = 1.25) -> CertificatePicture:
    """x0 at the origin, the boundary x = radius, and an adversarial point ``outside`` radii away.

    ``p_a`` must lie in (1/2, 1): below 1/2 nothing is certified, at 1 the radius is infinite.
    """
    if not (0.5 < p_a < 1.0) or not sigma > 0 or not outside > 1.0:
        raise ValueError(f"need sigma > 0, 1/2 < p_A < 1 and outside > 1, got {sigma}, {p_a}, {outside}")
    radius = float(sigma * norm.ppf(p_a))
    angle = np.deg2rad(20.0)  # reach the boundary off the shortest path: any direction counts
    distance = outside * radius / np.cos(angle)
    adversarial = (float(distance * np.cos(angle)), float(distance * np.sin(angle)))
    return CertificatePicture((0.0, 0.0), float(sigma), float(p_a), radius, adversarial)


def certificate_figure(sigma: float = 0.5, p_a: float = 0.9, samples: int = 400, seed: int = 0) -> go.Figure:
    """Noise cloud around x0 coloured by the base classifier's vote, the certified ball, the
    decision boundary it touches and an adversarial point just outside it."""
    pic = certificate_picture(sigma, p_a)
    rng = np.random.default_rng(seed)
    cloud = rng.normal(0.0, sigma, size=(int(samples), 2))
    is_a = cloud[:, 0] < pic.radius
    fig = go.Figure()
    for mask, name, colour in ((is_a, "noisy copy → class A", CLASS_A), (~is_a, "noisy copy → class B", CLASS_B)):
        fig.add_trace(go.Scatter(x=cloud[mask, 0], y=cloud[mask, 1], mode="markers", name=name,
                                 marker={"size": 4, "color": colour, "opacity": 0.35}))
    t = np.linspace(0.0, 2.0 * np.pi, 181)
    fig.add_trace(go.Scatter(x=pic.radius * np.cos(t), y=pic.radius * np.sin(t), mode="lines",
                             name=f"certified ball, R = σΦ⁻¹(p_A) = {pic.radius:.2f}",
                             line={"color": "black", "width": 3}))
    span = 3.2 * sigma
    fig.add_trace(go.Scatter(x=[pic.radius, pic.radius], y=[-span, span], mode="lines",
                             name="decision boundary of the base classifier",
                             line={"color": "grey", "dash": "dash"}))
    fig.add_trace(go.Scatter(x=[pic.center[0]], y=[pic.center[1]], mode="markers+text", name="input x₀",
                             text=["x₀"], textposition="bottom left",
                             marker={"size": 12, "color": CLASS_A, "line": {"color": "black", "width": 2}}))
    adv_distance = float(np.hypot(*pic.adversarial))
    fig.add_trace(go.Scatter(x=[pic.center[0], pic.adversarial[0]], y=[pic.center[1], pic.adversarial[1]],
                             mode="lines+markers+text", name=f"adversarial point, ‖δ‖ = {adv_distance:.2f} > R",
                             text=["", "x₀ + δ"], textposition="top right",
                             line={"color": CLASS_B, "dash": "dot"},
                             marker={"size": [0, 12], "color": CLASS_B, "symbol": "x"}))
    fig.update_layout(
        title=f"What a certificate means: σ = {sigma:g}, p_A = {p_a:g} → every point of the ball keeps class A",
        xaxis={"title": "x₁", "range": [-span, span], "zeroline": False},
        yaxis={"title": "x₂", "range": [-span, span], "scaleanchor": "x", "scaleratio": 1, "zeroline": False},
        legend={"orientation": "h", "y": -0.2}, height=520, margin={"t": 60},
    )
    return fig
