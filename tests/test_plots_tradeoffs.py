"""The trade-off figures inspected: heatmap cells, the Pareto front's greying, the envelope's marks
and table, the waterfall position, error bands, paired error bars and fairness intervals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from smoothviz import analysis, plots_tradeoffs, tradeoffs
from smoothviz.plots import NEUTRAL


def _run(rng: np.random.Generator, n: int, scale: float, p: float = 0.8) -> pd.DataFrame:
    correct = rng.random(n) < p
    radius = np.where(correct, rng.exponential(scale, n), 0.0)
    return pd.DataFrame({"idx": np.arange(n), "label": np.arange(n) % 4, "correct": correct, "radius": radius,
                         "naive_radius": radius * 1.3})


def _sweep() -> list[tuple[dict, pd.DataFrame]]:
    rng = np.random.default_rng(1)
    return [({"sigma_b": b, "r": r}, _run(rng, 50, b * (1 + r))) for b in (0.25, 0.5) for r in (0.0, 0.1)
            if (b, r) != (0.5, 0.1)]


def test_heatmap_cells_are_the_grid_with_counts_and_holes() -> None:
    sweep = _sweep()
    view = tradeoffs.grid_view(sweep, 0.25)
    fig = plots_tradeoffs.heatmap_figure(view.certified_accuracy, "t", "certified accuracy", view.points)
    heat = fig.data[0]
    assert list(heat.x) == ["0", "0.1"] and list(heat.y) == ["0.25", "0.5"]
    assert np.allclose(np.asarray(heat.z, dtype=float), view.certified_accuracy.to_numpy(), equal_nan=True)
    assert heat.text[0][0] == f"{view.certified_accuracy.iat[0, 0]:.3f}<br>50 pts"
    assert heat.text[1][1] == "no run"  # the hole of the grid is blank and says so
    assert (heat.zmin, heat.zmax) == (0.0, 1.0)
    assert fig.layout.xaxis.type == "category" and "semi-elasticity" in fig.layout.xaxis.title.text
    acr = plots_tradeoffs.heatmap_figure(view.acr, "ACR", "ACR", zmax=2.0)
    assert "pts" not in acr.data[0].text[0][0] and acr.data[0].zmax == 2.0


def test_difference_heatmap_shows_the_paired_interval_and_verdict() -> None:
    rows = pd.DataFrame([
        {"sigma_b": 0.25, "r": 0.1, "difference": 0.2, "low": 0.05, "high": 0.3, "verdict": "kNN higher"},
        {"sigma_b": 0.25, "r": 0.2, "difference": -0.1, "low": -0.2, "high": 0.02, "verdict": "undecided"},
        {"sigma_b": 0.5, "r": 0.2, "difference": -0.3, "low": -0.4, "high": -0.1, "verdict": "constant higher"},
    ])
    heat = plots_tradeoffs.difference_heatmap_figure(rows, 0.5).data[0]
    assert list(heat.y) == ["0.25", "0.5"] and list(heat.x) == ["0.1", "0.2"]
    assert heat.z[0][0] == 0.2 and np.isnan(heat.z[1][0])
    assert heat.text[0][0] == "+0.200<br>[+0.050, +0.300]<br>kNN higher"
    assert heat.text[1][1].endswith("constant higher") and heat.text[1][0] == "no run"
    assert heat.zmid == 0 and heat.zmin == -0.3 and heat.zmax == 0.3  # symmetric about 0


def test_pareto_figure_greys_exactly_the_dominated_runs() -> None:
    rng = np.random.default_rng(3)
    runs = {f"run{i}": _run(rng, 80, s, p) for i, (s, p) in enumerate(
        [(0.2, 0.95), (0.5, 0.8), (0.4, 0.7), (0.8, 0.6), (0.3, 0.6)])}
    front = tradeoffs.pareto_front(runs, 0.25)
    fig = plots_tradeoffs.pareto_figure(front, 0.25)
    grey, line = fig.data
    assert grey.name == "dominated" and line.name == "Pareto front"
    assert sorted(grey.text) == sorted(front.loc[~front["on_front"], "run"])
    assert sorted(line.text) == sorted(front.loc[front["on_front"], "run"])
    assert grey.marker.color == plots_tradeoffs.DOMINATED and NEUTRAL.lstrip("#") == "888888"
    assert list(grey.customdata) == front.loc[~front["on_front"], "dominated_by"].tolist()
    assert list(line.x) == sorted(line.x)  # the front is drawn left to right


def test_envelope_figure_marks_the_best_run_and_its_table_bolds_it() -> None:
    rng = np.random.default_rng(5)
    runs = {"small": _run(rng, 60, 0.2, 0.95), "large": _run(rng, 60, 0.8, 0.7)}
    radii = np.linspace(0, 1.5, 16)
    env = tradeoffs.envelope(runs, radii)
    fig = plots_tradeoffs.envelope_figure({k: analysis.accuracy_curve(v) for k, v in runs.items()}, env)
    main = next(t for t in fig.data if t.name.startswith("envelope (best"))
    assert list(main.y) == pytest.approx(env["certified_accuracy"].tolist())
    for name in ("small", "large"):
        marks = next(t for t in fig.data if t.name == f"best: {name}")
        assert list(marks.x) == env.loc[env["best"] == name, "radius"].tolist()
    band = next(t for t in fig.data if t.fill == "tonexty")
    assert list(band.y) == pytest.approx(env["high"].tolist())
    assert sum(t.line.color == NEUTRAL for t in fig.data if t.mode == "lines") == 2  # each run's curve, grey

    table = tradeoffs.envelope_table(runs, (0.0, 0.5, 1.0, 50.0))
    text = plots_tradeoffs.envelope_markdown(table)
    lines = text.splitlines()
    assert lines[0] == "| run | R = 0 | R = 0.5 | R = 1 | R = 50 |"
    for i, run in enumerate(table.accuracy.index):
        cells = [c.strip() for c in lines[2 + i].split("|")[2:-1]]
        for j, r in enumerate(table.accuracy.columns[:3]):
            value = f"{table.accuracy.at[run, r]:.3f}"
            assert cells[j] == (f"**{value}**" if table.best.at[run, r] else value)
        assert cells[3] == "0.000"  # at R = 50 every run ties at 0: nothing is best there
    assert sum(t.showlegend is not False for t in fig.data if t.name.startswith("best: ")) == 1


def test_waterfall_position_band_paired_and_fairness_figures() -> None:
    positions = pd.DataFrame([{"sigma_b": b, "r": r, "ceiling": b * (3 + r), "zero_sound": b * (2 - r),
                               "zero_naive": b * (2 + r)} for b in (0.25, 0.5) for r in (0.1, 0.0, 0.2)])
    fig = plots_tradeoffs.waterfall_position_figure(positions)
    assert len(fig.data) == 6
    ceiling = next(t for t in fig.data if t.name == "σ_b = 0.25: ceiling σ_max·Φ⁻¹(α^(1/n))")
    assert list(ceiling.x) == [0.0, 0.1, 0.2] and list(ceiling.y) == pytest.approx([0.75, 0.775, 0.8])
    assert ceiling.line.dash == "dash"
    assert next(t for t in fig.data if t.name.startswith("σ_b = 0.5: naive")).line.dash == "dot"

    rng = np.random.default_rng(7)
    df = _run(rng, 100, 0.5)
    grid = np.linspace(0, 1, 11)
    bands = {"a": tradeoffs.accuracy_intervals(df, grid)}
    fig = plots_tradeoffs.accuracy_band_figure({"a": analysis.accuracy_curve(df)}, bands, {"a": 1.2})
    low, high = fig.data[0], fig.data[1]
    assert list(low.y) == pytest.approx(bands["a"]["low"].tolist()) and high.fill == "tonexty"
    assert list(high.y) == pytest.approx(bands["a"]["high"].tolist()) and low.line.shape == "vh"
    assert list(fig.data[-1].x) == [1.2, 1.2]  # the ceiling
    plain = plots_tradeoffs.accuracy_band_figure({"a": analysis.accuracy_curve(df)}, {})
    assert not [t for t in plain.data if t.fill == "tonexty"]

    other = df.assign(radius=np.where(df["correct"], df["radius"] * 1.5, 0.0))
    diff = tradeoffs.paired_difference(other, df, (0.0, 0.5, 1.0))
    fig = plots_tradeoffs.paired_difference_figure(diff, "A", "B")
    xs = [x for t in fig.data for x in t.x]
    assert sorted(xs) == [0.0, 0.5, 1.0]
    for trace in fig.data:
        for x, y, up, down in zip(trace.x, trace.y, trace.error_y.array, trace.error_y.arrayminus):
            row = diff[diff["radius"] == x].iloc[0]
            assert y == pytest.approx(row["difference"])
            assert (y + up, y - down) == pytest.approx((row["high"], row["low"]))

    rows = pd.DataFrame([{"sigma_b": b, "r": r, **tradeoffs.fairness_interval(_run(rng, 120, b + r), 0.25)}
                         for b in (0.25, 0.5) for r in (0.0, 0.1)])
    for figure, value, low, high in ((plots_tradeoffs.fairness_figure(rows, 0.25), "gap", "gap_low", "gap_high"),
                                     (plots_tradeoffs.worst_class_figure(rows, 0.25), "worst_accuracy", "worst_low",
                                      "worst_high")):
        assert [t.name for t in figure.data] == ["σ_b = 0.25", "σ_b = 0.5"]
        for trace, (_, group) in zip(figure.data, rows.groupby("sigma_b")):
            assert list(trace.y) == pytest.approx(group[value].tolist())
            assert list(np.asarray(trace.y) + np.asarray(trace.error_y.array)) == pytest.approx(group[high].tolist())
            assert list(np.asarray(trace.y) - np.asarray(trace.error_y.arrayminus)) == pytest.approx(
                group[low].tolist())
