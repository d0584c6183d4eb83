"""Figures of sequential certification (smoothviz.plots_sequential): what they draw is the data given."""

from __future__ import annotations

import pandas as pd
import pytest

from smoothviz import analysis, plots_sequential


def _hline_values(fig) -> list[float]:
    return [s["y0"] for s in fig.to_dict()["layout"].get("shapes", []) if s["y0"] == s["y1"]]


def test_the_live_bounds_figure_draws_the_sequence_on_a_log_axis_and_the_levels_it_must_pass():
    t, lo, up = [16, 20, 25, 32], [0.1, 0.4, 0.55, 0.6], [1.0, 0.99, 0.97, 0.95]
    fig = plots_sequential.live_bounds_figure(t, lo, up, alpha=0.001, needed=0.7, drawn=40)
    traces = {tr.name: tr for tr in fig.data}
    lower, upper = traces["lower bound on p_A"], traces["upper bound on p_A"]
    assert list(lower.x) == [16, 20, 25, 32, 40] and list(lower.y) == [0.1, 0.4, 0.55, 0.6, 0.6]
    assert list(upper.y) == [1.0, 0.99, 0.97, 0.95, 0.95] and lower.line.shape == "hv"
    assert fig.layout.xaxis.type == "log" and "α = 0.001" in fig.layout.title.text
    assert sorted(_hline_values(fig)) == [0.5, 0.7]
    plain = plots_sequential.live_bounds_figure(t, lo, up, alpha=0.01)
    assert _hline_values(plain) == [0.5] and list(plain.data[1].x) == t  # nothing drawn past the last checkpoint


def test_the_live_radius_figure_marks_the_radius_asked():
    fig = plots_sequential.live_radius_figure([16, 32], [0.0, 0.2], target=0.25)
    assert list(fig.data[0].y) == [0.0, 0.2] and fig.layout.xaxis.type == "log"
    assert _hline_values(fig) == [0.25]
    assert _hline_values(plots_sequential.live_radius_figure([16], [0.1], cap=float("inf"))) == []
    empty = plots_sequential.live_radius_figure([], [])
    assert list(empty.data[0].x) == []


def test_the_partial_curve_counts_every_point_and_only_decided_ones_separately():
    partial = pd.DataFrame({
        "idx": [0, 1, 2, 3, 4], "label": [1, 2, 3, 4, -1], "predict": [1, 2, 0, 4, -1],
        "correct": [True, True, False, True, False], "radius": [0.5, 0.3, 0.4, 0.2, 0.0],
        "samples": [100, 50, 60, 70, 0], "state": ["decided", "in flight", "decided", "in flight", "waiting"]})
    fig = plots_sequential.partial_curve_figure(partial, ceiling=0.9)
    traces = {tr.name: tr for tr in fig.data}
    every, decided = traces["certified so far (decided + in flight)"], traces["decided points only"]
    assert every.y[0] == pytest.approx(3 / 5) and decided.y[0] == pytest.approx(1 / 5)  # of all five points
    assert max(every.x) == 0.5 and "ceiling certified so far (decided + in flight)" in traces
    assert "2 of 5 points decided, 2 in flight" in fig.layout.title.text
    want = analysis.accuracy_curve(partial)
    assert list(every.x[:len(want)]) == list(want["radius"])


def test_the_samples_figure_and_stop_reasons():
    fig = plots_sequential.samples_figure([100, 300, 300, 10_100], 10_100)
    hist = fig.data[0]
    assert list(hist.x) == [100, 300, 300, 10_100] and hist.xbins.end >= 10_100
    vline = [s for s in fig.to_dict()["layout"]["shapes"] if s["x0"] == s["x1"]]
    assert [s["x0"] for s in vline] == [10_100]
    assert "mean 2,700" in fig.layout.title.text
    bars = plots_sequential.stop_reasons_figure({"abstain": 2, "certified": 5, "budget": 1})
    assert list(bars.data[0].x) == ["certified", "budget", "abstain"] and list(bars.data[0].y) == [5, 1, 2]
    assert "mean —" in plots_sequential.samples_figure([], 100).layout.title.text
