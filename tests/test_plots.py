"""Figure builders: traces, values and axis titles of the produced plotly figures."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from smoothviz import analysis, bounds, plots


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
    assert curve["line"]["shape"] == "hv"
    y = np.asarray(curve["y"], dtype=float)
    assert np.all(np.diff(y) <= 0), "certified accuracy must not increase with the radius"
    assert y[0] == pytest.approx(res["correct"].mean())
    assert "radius" in d["layout"]["xaxis"]["title"]["text"]
    assert "accuracy" in d["layout"]["yaxis"]["title"]["text"]


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
