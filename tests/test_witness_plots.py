"""Figures of counterexamples: the slice's geometry is the worst-case set's (boundary where f*'s statistic
is 0, centre c = (sigma0^2 x1 - sigma1^2 x0)/(sigma0^2 - sigma1^2), the half-space and centred cases), the
class map is f* itself, the shells are sigma sqrt(N), and the other figures carry the numbers given."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import special

from smoothviz import plots_witness as pw
from smoothviz import witness

CASES = [(3072, 0.25, 0.999, 0.386, 0.26), (3072, 0.25, 0.999, 0.3, 0.24), (64, 0.25, 0.99, 0.4, 0.3),
         (784, 0.3, 0.95, 0.2, 0.25)]


def _statistic(w: witness.Witness, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """f*'s own statistic at plane points x0 + x u + y v (u = e1, v = e2), through the torch classifier."""
    points = w.x0.repeat(len(x), 1)
    points[:, 0] += torch.as_tensor(x, dtype=torch.float64)
    points[:, 1] += torch.as_tensor(y, dtype=torch.float64)
    return w.classifier.statistic(points).numpy()


@pytest.mark.parametrize("dim,s0,p,d,s1", CASES)
def test_the_slice_geometry_is_the_worst_case_set(dim, s0, p, d, s1) -> None:
    w = witness.build_witness(dim, s0, p, d, s1)
    g = pw.slice_geometry(w)
    assert g.kind == ("ball" if s1 > s0 else "complement")
    assert g.centre == pytest.approx(s0 * s0 * d / (s0 * s0 - s1 * s1), rel=1e-9)  # c on the line through x0, x1
    assert (g.shell0, g.shell1) == pytest.approx((s0 * math.sqrt(dim), s1 * math.sqrt(dim)), rel=1e-12)
    theta = np.linspace(0, 2 * math.pi, 17)
    on = _statistic(w, g.centre + g.radius * np.cos(theta), g.radius * np.sin(theta))
    inside = _statistic(w, g.centre + 0.99 * g.radius * np.cos(theta), 0.99 * g.radius * np.sin(theta))
    assert np.abs(on).max() < 1e-6 * max(1.0, np.abs(inside).max())  # the circle is the boundary
    assert ((inside <= 0) == (g.kind == "ball")).all()  # inside the ball is A, inside the complement's ball is B


def test_the_half_space_case() -> None:
    w = witness.build_witness(100, 0.5, 0.9, 0.3, 0.5)
    g = pw.slice_geometry(w)
    assert g.kind == "half-space" and g.boundary == pytest.approx(0.5 * special.ndtri(0.9), rel=1e-12)
    assert _statistic(w, np.array([g.boundary]), np.array([7.0]))[0] == pytest.approx(0.0, abs=1e-9)
    assert _statistic(w, np.array([g.boundary - 0.01]), np.array([0.0]))[0] < 0  # A on the side of x0


@pytest.mark.parametrize("zoom", [False, True])
def test_the_class_map_is_f_star_and_the_view_holds_the_shells(zoom: bool) -> None:
    w = witness.build_witness(*CASES[0])
    fig = pw.slice_figure(w, zoom=zoom)
    heat = next(t for t in fig.data if t.type == "heatmap")
    xs, ys, z = np.asarray(heat.x), np.asarray(heat.y), np.asarray(heat.z)
    rng = np.random.default_rng(0)
    i, j = rng.integers(0, len(xs), 40), rng.integers(0, len(ys), 40)
    assert ((z[j, i] == 1) == (_statistic(w, xs[i], ys[j]) <= 0)).all()
    g = pw.slice_geometry(w)
    x_lo, x_hi = fig.layout.xaxis.range
    y_lo, y_hi = fig.layout.yaxis.range
    assert (x_hi - x_lo) == pytest.approx(y_hi - y_lo) and fig.layout.yaxis.scaleanchor == "x"  # to scale
    if zoom:
        assert y_lo < g.shell0 < y_hi and y_lo < g.shell1 < y_hi and x_lo < 0 and g.distance < x_hi
    else:
        assert x_hi > g.distance + g.shell1 and x_lo < -g.shell0
    arcs = [t for t in fig.data if t.name and t.name.startswith("where the noise mass lies")]
    assert np.nanmax(np.abs(np.asarray(arcs[0].x, dtype=float))) == pytest.approx(2 * w.sigma0)


def test_probability_band_and_pair_figures_carry_their_numbers() -> None:
    fig = pw.probability_figure(0.99, 0.3, {"x0": (985, 1000, 0.97, 0.995), "x1": (310, 1000, 0.27, 0.35)})
    assert list(fig.data[0].y) == [0.99, 0.3]
    assert list(fig.data[1].y) == [0.985, 0.31]
    assert list(fig.data[1].error_y.arrayminus) == pytest.approx([0.015, 0.04])
    assert list(fig.data[1].error_y.array) == pytest.approx([0.01, 0.04])
    d = np.linspace(0.01, 1, 10)
    band = pw.breaking_figure(d, d * 0 + 0.6, d * 0 + 0.4, naive=0.8, sound=0.3, chosen=0.5)
    assert sorted(s.x0 for s in band.layout.shapes if s.x0 == s.x1) == [0.3, 0.5, 0.8]
    pair = pw.pair_figure(np.zeros((1, 8, 8)), np.full((1, 8, 8), 0.2), 0.25, 0.3, 1.6)
    assert len(pair.data) == 3 and "σ(x₀) = 0.2500" in pair.layout.annotations[0].text
