"""Figure builders: traces, values and axis titles of the produced plotly figures."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from smoothviz import analysis, bounds, plots


def _step_value(trace: dict, r: float) -> float:
    """The value a plotly step trace draws at ``r`` (vertices x, y; "vh" = vertical first, "hv" = horizontal first)."""
    x, y = np.asarray(trace["x"], float), np.asarray(trace["y"], float)
    if trace["line"]["shape"] == "vh":  # the segment into vertex i is drawn at y[i]
        i = int(np.searchsorted(x, r, side="left"))
        return float(y[min(i, len(y) - 1)]) if r <= x[-1] else float("nan")
    i = int(np.searchsorted(x, r, side="right")) - 1  # "hv": the segment out of vertex i is drawn at y[i]
    return float(y[max(i, 0)])


def _fig_dict(fig):
    """Traces and layout as plain dicts/lists (``to_dict`` would base64-encode numpy arrays)."""
    def plain(v):
        return v.tolist() if isinstance(v, np.ndarray) else (list(v) if isinstance(v, tuple) else v)

    keys = ("x", "y", "name", "mode", "type", "fill")
    data = []
    for t in fig.data:
        d = {k: plain(t[k]) for k in keys if k in t}
        if "line" in t:
            d["line"] = {"shape": t.line.shape}
        data.append(d)
    layout = fig.layout.to_plotly_json()
    return {"data": data, "layout": layout}


def _results(radius, correct, label=None, sigma=0.25):
    radius = np.asarray(radius, dtype=float)
    n = radius.size
    return pd.DataFrame({
        "idx": np.arange(n), "label": np.arange(n) % 3 if label is None else label,
        "predict": np.where(correct, np.arange(n) % 3, -1), "correct": np.asarray(correct, dtype=bool),
        "p_a_lower": 0.9, "sigma": sigma, "radius": radius, "naive_radius": radius * 1.5,
        "counts": [None] * n, "seconds": 0.1,
    })


def test_waterfall_ceiling_line_sits_at_the_bound():
    sigma, n, alpha = 0.25, 1000, 0.001
    rng = np.random.default_rng(1)
    res = _results(rng.uniform(0, 0.7, 50), rng.uniform(size=50) > 0.2)
    run = {"sigma_max": sigma, "n": n, "alpha": alpha}
    fig = plots.waterfall_figure({"a": analysis.accuracy_curve(res)}, {"a": analysis.run_ceiling(run)})
    d = _fig_dict(fig)
    curve, ceiling = d["data"]
    expected = float(bounds.waterfall_ceiling(sigma, n, alpha))
    assert ceiling["x"] == pytest.approx([expected, expected])
    assert expected == pytest.approx(sigma * norm.ppf(alpha ** (1 / n)), rel=1e-9)
    assert curve["line"]["shape"] == "vh"
    y = np.asarray(curve["y"], dtype=float)
    assert np.all(np.diff(y) <= 0), "certified accuracy must not increase with the radius"
    assert y[0] == pytest.approx(res["correct"].mean())
    assert "radius" in d["layout"]["xaxis"]["title"]["text"]
    assert "accuracy" in d["layout"]["yaxis"]["title"]["text"]


def test_waterfall_draws_the_certified_accuracy_and_drops_to_zero_after_the_largest_radius():
    rng = np.random.default_rng(4)
    res = _results(np.round(rng.uniform(0, 0.8, 40), 2), rng.uniform(size=40) > 0.3)
    curve = analysis.accuracy_curve(res)
    trace = _fig_dict(plots.waterfall_figure({"a": curve}))["data"][0]
    largest = float(res.loc[res["correct"], "radius"].max())
    # the last vertex is the drop to 0 at the largest certified radius
    assert trace["x"][-1] == pytest.approx(largest) and trace["y"][-1] == 0.0
    assert trace["x"][-2] == pytest.approx(largest) and trace["y"][-2] > 0
    # between and at the radii, the drawn curve is the fraction correct with radius >= r
    for r in [*np.linspace(0, largest, 57), *curve["radius"]]:
        expected = analysis.certified_accuracy(res["radius"], res["correct"], r)
        assert _step_value(trace, r) == pytest.approx(expected), r


def test_waterfall_keeps_a_curve_that_already_ends_at_zero():
    curve = pd.DataFrame({"radius": [0.0, 0.5], "certified_accuracy": [0.5, 0.0]})
    trace = _fig_dict(plots.waterfall_figure({"a": curve}))["data"][0]
    assert trace["x"] == [0.0, 0.5] and trace["y"] == [0.5, 0.0]


def test_waterfall_skips_unknown_ceiling():
    res = _results([0.1, 0.2], [True, True])
    fig = plots.waterfall_figure({"imported": analysis.accuracy_curve(res)}, {"imported": float("nan")})
    assert len(fig.data) == 1


def test_worst_case_figure_traces_follow_the_ratios():
    distance = np.linspace(0, 1, 11)
    ratios = (0.9, 1.0, 1.1)
    probs = bounds.worst_case_probability(0.25, 0.25 * np.asarray(ratios)[:, None], distance[None, :], 0.99, 784)
    d = _fig_dict(plots.worst_case_figure(distance, ratios, probs, 0.99))
    assert [t["name"] for t in d["data"]] == ["σ₁/σ₀ = 0.9", "σ₁/σ₀ = 1", "σ₁/σ₀ = 1.1"]
    assert np.asarray(d["data"][1]["y"]) == pytest.approx(probs[1])
    # at ratio 1 the curve is Cohen's Phi(Phi^-1(p_A) - d/sigma0), starting at p_A
    assert d["data"][1]["y"][0] == pytest.approx(0.99, abs=1e-9)
    assert "L2" in d["layout"]["xaxis"]["title"]["text"]
    assert any(s.get("y0") == 0.5 for s in d["layout"]["shapes"])


def test_radius_vs_r_one_curve_per_dimension():
    r = np.linspace(0, 0.2, 5)
    dims = (64, 3072)
    radii = np.vstack([np.linspace(0.5, 0.4, 5), np.linspace(0.5, 0.1, 5)])
    d = _fig_dict(plots.radius_vs_r_figure(r, dims, radii, cohen=0.5))
    assert [t["name"] for t in d["data"]] == ["N = 64", "N = 3,072"]
    assert np.asarray(d["data"][1]["y"]) == pytest.approx(radii[1])
    assert "semi-elasticity" in d["layout"]["xaxis"]["title"]["text"]


@pytest.mark.parametrize("dim", [64, 784, 3072, 150528])
def test_sigma_band_axis_and_label_are_in_log10_units(dim):
    dims = np.unique(np.round(np.logspace(np.log10(2), np.log10(150528), 24)).astype(np.int64))
    low, high = bounds.admissible_sigma_band(0.99, dims)
    fig = plots.sigma_band_figure(dims, low, high, current=dim)
    lo, hi = fig.layout.xaxis.range
    # a log axis takes its range in log10 units: 2 .. 150528 with a small margin, never 10^65
    assert lo == pytest.approx(np.log10(2), abs=0.5) and lo < np.log10(2)
    assert hi == pytest.approx(np.log10(150528), abs=0.5) and hi > np.log10(150528)
    (label,) = [a for a in fig.layout.annotations if a.text == f"N = {dim:,}"]
    assert label.x == pytest.approx(np.log10(dim)) and lo < label.x < hi
    (line,) = [s for s in fig.layout.shapes if s.line.dash == "dash"]
    assert line.x0 == line.x1 == dim  # shapes, unlike annotations, take data units on a log axis


def test_sigma_band_axis_reaches_a_dimension_beyond_the_band():
    fig = plots.sigma_band_figure(np.array([2, 100]), np.array([0.5, 0.9]), np.array([2.0, 1.1]), current=10**6)
    assert fig.layout.xaxis.range[1] > 6 and fig.layout.annotations[0].x == pytest.approx(6.0)


def test_radius_vs_r_axis_extends_to_the_chosen_r():
    r = np.linspace(0, 0.2, 5)
    radii = np.vstack([np.linspace(0.5, 0.4, 5)])
    inside = plots.radius_vs_r_figure(r, (64,), radii, cohen=0.5, current_r=0.1)
    assert inside.layout.xaxis.range == (0.0, 0.2)
    beyond = plots.radius_vs_r_figure(r, (64,), radii, cohen=0.5, current_r=0.7)
    assert beyond.layout.xaxis.range == (0.0, 0.7)
    marks = [s for s in beyond.layout.shapes if s.line.dash == "dash"]
    assert [m.x0 for m in marks] == [0.7]
    assert any(a.text == "r = 0.7" for a in beyond.layout.annotations)


def test_sigma_band_figure_is_log_scaled_and_filled():
    dims = np.array([2, 10, 100])
    low, high = np.array([0.5, 0.8, 0.95]), np.array([2.0, 1.2, 1.05])
    d = _fig_dict(plots.sigma_band_figure(dims, low, high, current=10))
    assert d["layout"]["xaxis"]["type"] == "log"
    assert d["data"][1]["fill"] == "tonexty"
    assert np.asarray(d["data"][0]["y"]) == pytest.approx(high)


def test_ecdf_is_a_distribution_function():
    x, y = plots.ecdf(np.array([0.3, 0.1, 0.2, 0.2]))
    assert x.tolist() == [0.1, 0.2, 0.2, 0.3]
    assert y.tolist() == [0.25, 0.5, 0.75, 1.0]
    d = _fig_dict(plots.radius_ecdf_figure({"a": np.array([0.3, 0.1])}))
    assert d["data"][0]["y"][-1] == 1.0


def test_sound_vs_naive_scatter_has_diagonal_reaching_largest_radius():
    d = _fig_dict(plots.sound_vs_naive_scatter({"a": (np.array([0.2, 0.9]), np.array([0.1, 0.5]))}))
    assert d["data"][-1]["x"] == [0, 0.9]
    assert d["data"][0]["mode"] == "markers"


def test_per_class_bars_use_class_names():
    res = _results([0.5, 0.0, 0.5, 0.5], [True, False, True, True], label=[0, 0, 1, 2])
    pc = analysis.per_class_accuracy(res, 0.25, class_names=["zero", "one", "two"])
    d = _fig_dict(plots.per_class_figure({"a": pc}, 0.25))
    assert list(d["data"][0]["x"]) == ["zero", "one", "two"]
    assert np.asarray(d["data"][0]["y"]) == pytest.approx([0.5, 1.0, 1.0])
    assert d["layout"]["xaxis"]["type"] == "category"


def test_per_class_bars_count_points_and_tell_zero_from_absent():
    # class 0: two points, none certified at 0.25; class 1: one of one; class 2: no points at all
    res = _results([0.1, 0.0, 0.5], [True, False, True], label=[0, 0, 1])
    pc = analysis.per_class_accuracy(res, 0.25, class_names=["zero", "one", "two"])
    fig = plots.per_class_figure({"run": pc}, 0.25)
    bars = fig.data[0]
    assert list(bars.text) == ["0/2", "1/1", "no points"]
    assert list(bars.y) == pytest.approx([0.0, 1.0, 0.0])
    (absent,) = [t for t in fig.data if t.name == "run: class absent"]
    assert list(absent.x) == ["two"]  # only the class without points gets the hatched outline
    assert absent.marker.pattern.shape == "/" and absent.offsetgroup == bars.offsetgroup


def test_constant_sigma_histogram_is_one_narrow_bar_at_sigma():
    fig = plots.sigma_histogram_figure(np.full(20, 0.25))
    bins = fig.data[0].xbins
    assert bins.start < 0.25 < bins.end and bins.end - bins.start == pytest.approx(bins.size)
    assert bins.size <= 0.25 / 20  # narrow: not a block from 0 to 1
    assert fig.layout.xaxis.range == (0.0, 0.5)
    assert len(fig.data[0].x) == 20


def test_sigma_histogram_bins_span_the_values():
    values = np.array([0.1, 0.2, 0.2, 0.4])
    bins = plots.sigma_histogram_figure(values, nbins=6).data[0].xbins
    assert bins.start == 0.1 and bins.end == pytest.approx(0.4) and bins.end > 0.4
    assert bins.size == pytest.approx(0.05)


def test_no_webgl_traces_and_every_axis_titled():
    hist = plots.radius_histogram_figure({"a": np.array([0.1, 0.2])})
    figs = [
        hist,
        plots.sigma_histogram_figure(np.array([0.2, 0.3])),
        plots.sigma_vs_radius_figure({"a": (np.array([0.2]), np.array([0.1]))}),
        plots.sound_vs_naive_figure(np.array([0.6, 0.9]), np.array([0.05, 0.3]), np.array([0.06, 0.32])),
    ]
    for fig in figs:
        d = _fig_dict(fig)
        assert all(t["type"] != "scattergl" for t in d["data"])
        assert d["layout"]["xaxis"]["title"]["text"]
        assert d["layout"]["yaxis"]["title"]["text"]
    assert hist.layout.barmode == "overlay"


def test_radius_histograms_share_their_bins():
    fig = plots.radius_histogram_figure({"a": np.array([0.1, 0.2]), "b": np.array([0.5, 0.9])}, nbins=10)
    assert fig.data[0].xbins.to_plotly_json() == fig.data[1].xbins.to_plotly_json()
    assert fig.data[0].xbins.start == 0.0 and fig.data[0].xbins.end == pytest.approx(0.9)
    assert fig.data[0].xbins.size == pytest.approx(0.09)


def test_plots_and_jobs_import_without_streamlit():
    code = ("import sys; sys.modules['streamlit'] = None; "
            "import smoothviz.plots, smoothviz.jobs; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
