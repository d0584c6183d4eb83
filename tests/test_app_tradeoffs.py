"""The Trade-offs page and the Certify page's Sweep section (AppTest): views of a constructed sweep
checked against smoothviz.tradeoffs, hostile link values, and a sweep started, followed and shown
through the pages."""

from __future__ import annotations

import math
import os
from pathlib import Path

import apptest_support as support
import numpy as np
import pandas as pd
import pytest
from apptest_support import (
    HOSTILE_QUERY_VALUES,
    fresh_app_state,  # noqa: F401  (autouse: a temporary store, no shared caches)
    plotly_figures,
    save_digits_checkpoint,
    wait_for,
)

from smoothviz import tradeoffs
from smoothviz.store import Store

PAGE = "pages/8_Trade_offs.py"
CERTIFY = "pages/2_Certify.py"
POINTS = 60
RADII = (0.0, 0.25, 0.5)


def _results(certified: tuple[int, int, int]) -> list[dict]:
    """POINTS points certified by exactly certified[j] at RADII[j] (non-increasing), the same points
    first in every run, so a run with larger counts certifies a superset."""
    rows = []
    for i in range(POINTS):
        if i < certified[2]:
            radius = 0.6
        elif i < certified[1]:
            radius = 0.3
        elif i < certified[0]:
            radius = 0.1
        else:
            radius = 0.0
        correct = i < certified[0]
        rows.append({"idx": i, "label": i % 3, "predict": i % 3 if correct else -1, "correct": correct,
                     "p_a_lower": 0.9, "sigma": 0.25, "radius": radius, "naive_radius": radius * 1.4,
                     "counts": [0, 0, 0], "seconds": 0.01})
    return rows


# (kind, sigma or sigma_b, r) -> certified at radii 0, 0.25, 0.5
CELLS = {
    ("constant", 0.25, 0.0): (50, 40, 20),
    ("knn", 0.25, 0.1): (50, 45, 40),  # beats constant 0.25 at 0.5: 20 more points, none fewer
    ("knn", 0.25, 0.2): (50, 30, 5),  # loses at 0.5
    ("constant", 0.5, 0.0): (45, 40, 30),
    ("knn", 0.5, 0.1): (45, 40, 30),  # identical: undecided
    ("knn", 0.5, 0.2): (44, 39, 29),
}


def constructed_sweep(db: Path, models: tuple[str, ...] = ("m.pt",)) -> dict:
    """A finished sweep over CELLS (for each of ``models``) recorded as smoothviz.sweep records one,
    with constructed results (a later model certifies one point fewer at radius 0.5)."""
    store = Store(db)
    cells = []
    for model, (kind, value, r) in ((m, c) for m in models for c in CELLS):
        spec = f"constant:{value!r}" if kind == "constant" else f"knn:{value!r},{r!r},20,m=1.5"
        params = {"kind": kind, "r": r, **({"sigma": value} if kind == "constant" else {"sigma_b": value, "k": 20})}
        run = {"name": f"sweep: {model} {spec} n=1000", "dataset": "digits", "split": "test", "checkpoint": model,
               "sigma_spec": spec, "sigma_params": {}, "r": r, "n0": 100, "n": 1000, "alpha": 0.001, "device": "cpu",
               "indices": list(range(POINTS)), "seed": 0, "batch_size": None}
        cell = {"position": len(cells), "model": model, "label": model, "sigma_spec": spec, "spec": spec, **params,
                "n": 1000, "alpha": 0.001, "trust_code": False, "run": {k: v for k, v in run.items() if k != "indices"}}
        cells.append((cell, run))
    sweep_id = store.create_sweep("constructed", {"g": 1}, {"dataset": "digits", "points": POINTS, "n0": 100,
                                                            "n": [1000], "alpha": [0.001], "seed": 0,
                                                            "models": [{"checkpoint": "m.pt"}],
                                                            "indices": list(range(POINTS))}, cells)
    ids = {}
    keys = [(m, key) for m in range(len(models)) for key in CELLS]
    for cell, (m, key) in zip(store.sweep(sweep_id)["cells"], keys):
        counts = CELLS[key]
        for row in _results((counts[0], counts[1], max(counts[2] - m, 0))):
            store.add_result(cell["run_id"], row)
        store.set_status(cell["run_id"], "done")
        ids[key if m == 0 else (m, *key)] = cell["run_id"]
    store.set_sweep_status(sweep_id, "done")
    store.close()
    return ids


def open_page(**query: str):
    at = support.open_page(PAGE, **query)
    assert not at.exception, [e.message for e in at.exception]
    return at


def _by_title(at, words: str) -> dict:
    found = [f for f in plotly_figures(at) if words in f["layout"]["title"]["text"]]
    assert found, [f["layout"]["title"]["text"] for f in plotly_figures(at)]
    return found[0]


def _frames(ids: dict) -> dict:
    db = Path(os.environ["SMOOTHVIZ_DB"])
    with Store(db) as store:
        return {key: store.results(run_id) for key, run_id in ids.items()}


def test_the_views_of_a_sweep_are_the_tradeoffs_numbers(tmp_path: Path) -> None:
    ids = constructed_sweep(Path(os.environ["SMOOTHVIZ_DB"]))
    frames = _frames(ids)
    at = open_page(sweep="1", radius="0.5")
    assert at.number_input(key="to_radius").value == 0.5 and at.radio(key="to_source").value == "a sweep"

    heat = _by_title(at, "Certified accuracy at R = 0.5")["data"][0]
    assert heat["y"] == ["0.25", "0.5"] and heat["x"] == ["0", "0.1", "0.2"]  # constant sits at r = 0
    expected = np.array([[20, 40, 5], [30, 30, 29]]) / POINTS
    assert np.allclose(np.array(heat["z"], dtype=float), expected)
    assert heat["text"][0][1].startswith("0.667") and "60 pts" in heat["text"][0][1]

    diff = _by_title(at, "Input-dependent minus constant")["data"][0]
    assert diff["x"] == ["0.1", "0.2"]
    assert "kNN higher" in diff["text"][0][0] and "constant higher" in diff["text"][0][1]
    assert "undecided" in diff["text"][1][0]
    assert diff["z"][0][0] == pytest.approx(20 / POINTS)
    assert any("**higher** in 1 cell, **lower** in 1 cell" in m.value for m in at.markdown)

    pareto = _by_title(at, "Clean accuracy vs certified accuracy")
    dominated = next(t for t in pareto["data"] if t["name"] == "dominated")
    front = tradeoffs.pareto_front({f"#{i}": frames[k] for k, i in ids.items()}, 0.5)
    assert sorted(t.split()[0] for t in dominated["text"]) == sorted(front.loc[~front["on_front"], "run"])
    assert dominated["marker"]["color"].startswith("rgba(136,136,136")  # greyed
    on_front = next(t for t in pareto["data"] if t["name"] == "Pareto front")
    assert len(on_front["x"]) == int(front["on_front"].sum())

    table = next(m.value for m in at.markdown if m.value.startswith("| run |"))
    best_05 = [line for line in table.splitlines()[2:] if line.split("|")[4].strip().startswith("**")]
    assert len(best_05) == 1 and "knn σ_b=0.25 r=0.1" in best_05[0]  # the best entry at R = 0.5 is bold

    waterfall = _by_title(at, "Waterfall position")
    sound = [t for t in waterfall["data"] if "sound" in t["name"]]
    assert {t["name"].split(":")[0] for t in sound} == {"σ_b = 0.25", "σ_b = 0.5"}
    assert sound[0]["x"] == [0.0, 0.1, 0.2] and sound[0]["y"] == pytest.approx([0.6, 0.6, 0.6])


def test_error_bars_high_probability_and_paired_difference(tmp_path: Path) -> None:
    ids = constructed_sweep(Path(os.environ["SMOOTHVIZ_DB"]))
    frames = _frames(ids)
    const, better = ids[("constant", 0.25, 0.0)], ids[("knn", 0.25, 0.1)]
    at = open_page(sweep="1", radius="0.5", level="0.9", a=str(better), b=str(const))
    bands = _by_title(at, "with error bars")
    highs = [t for t in bands["data"] if t.get("fill") == "tonexty"]
    assert highs, "error bands are on by default"
    label = highs[0]["name"].split(": ")[0]
    key = next(k for k, i in ids.items() if label.startswith(f"#{i} "))
    lows = next(t for t in bands["data"] if t["name"] == f"{label} low")
    ref = tradeoffs.accuracy_intervals(frames[key], lows["x"], beta=0.1)
    assert lows["y"] == pytest.approx(ref["low"].tolist()) and highs[0]["y"] == pytest.approx(ref["high"].tolist())
    df = next(d.value for d in at.dataframe if "hp_binomial" in d.value.columns)
    row = df[(df["run"] == label) & (df["radius"] == 0.5)].iloc[0]
    exact = tradeoffs.high_probability_accuracy(frames[key], [0.5], 0.001, 0.001, "binomial")
    assert row["hp_binomial"] == pytest.approx(exact["high_probability"].item())
    assert row["low"] == pytest.approx(tradeoffs.accuracy_intervals(frames[key], [0.5], beta=0.1)["low"].item())

    paired = _by_title(at, " minus #")
    diff = tradeoffs.paired_difference(frames[("knn", 0.25, 0.1)], frames[("constant", 0.25, 0.0)], [0.5], beta=0.1)
    point = next(t for t in paired["data"] if 0.5 in t["x"])
    j = point["x"].index(0.5)
    assert point["y"][j] == pytest.approx(diff["difference"].item())
    assert point["error_y"]["array"][j] == pytest.approx(diff["high"].item() - diff["difference"].item())
    assert any(f"#{better}" in m.value and "is higher" in m.value and "R = 0.5" in m.value for m in at.markdown)

    at.toggle(key="to_bars").set_value(False).run()
    assert not at.exception
    assert not [t for t in _by_title(at, "with error bars")["data"] if t.get("fill") == "tonexty"]
    assert at.query_params["bars"] == "0"


def test_per_class_gaps_and_chosen_runs(tmp_path: Path) -> None:
    ids = constructed_sweep(Path(os.environ["SMOOTHVIZ_DB"]))
    frames = _frames(ids)
    at = open_page(sweep="1", radius="0.25")
    gap = _by_title(at, "Fairness gap at radius 0.25")
    for trace in gap["data"]:
        sigma_b = float(trace["name"].split("= ")[1])
        for r, value in zip(trace["x"], trace["y"]):
            key = ("knn", sigma_b, r) if ("knn", sigma_b, r) in ids else ("constant", sigma_b, 0.0)
            g = tradeoffs.fairness_interval(frames[key], 0.25, beta=0.05)
            assert value == pytest.approx(g["gap"])
    per_class = next(d.value for d in at.dataframe if "count" in d.value.columns and "low" in d.value.columns)
    assert per_class["count"].tolist()[:3] == [20, 20, 20]  # points per class, with each class's interval
    # the same runs chosen one by one
    chosen = ",".join(str(i) for i in ids.values())
    at = open_page(runs=chosen, radius="0.5")
    assert at.radio(key="to_source").value == "chosen runs" and at.multiselect(key="to_runs").value == list(ids.values())
    heat = _by_title(at, "Certified accuracy at R = 0.5")["data"][0]
    assert np.allclose(np.array(heat["z"], dtype=float), np.array([[20, 40, 5], [30, 30, 29]]) / POINTS)


LINK_KEYS = ("sweep", "runs", "radius", "level", "ci", "bars", "a", "b")


@pytest.mark.parametrize("shift", range(0, len(HOSTILE_QUERY_VALUES), 3))
def test_hostile_link_values_are_named_and_replaced(tmp_path: Path, shift: int) -> None:
    constructed_sweep(Path(os.environ["SMOOTHVIZ_DB"]))
    n = len(HOSTILE_QUERY_VALUES)
    query = {key: HOSTILE_QUERY_VALUES[(shift + i) % n] for i, key in enumerate(LINK_KEYS)}
    at = open_page(**query)
    notes = [w.value for w in at.warning]
    for text in notes + [e.value for e in at.error]:
        assert "\n" not in text and len(text) < 600
    radius = at.number_input(key="to_radius").value
    raw = query["radius"]
    try:
        usable = math.isfinite(float(raw)) and 0 <= float(raw) <= 100
    except ValueError:
        usable = False
    assert radius == (float(raw) if usable else 0.25)
    if not usable:
        assert any(w.startswith("The link's radius=") for w in notes), notes
    assert at.selectbox(key="to_level").value in (0.9, 0.95, 0.99)
    assert at.selectbox(key="to_ci").value in ("clopper-pearson", "bootstrap")
    if query["level"] not in ("0.9", "0.95", "0.99"):
        assert any(w.startswith("The link's level=") for w in notes)


def test_typed_radius_out_of_range_is_refused_in_one_line(tmp_path: Path) -> None:
    constructed_sweep(Path(os.environ["SMOOTHVIZ_DB"]))
    at = open_page(sweep="1")
    at.number_input(key="to_radius").set_value(-1.0).run()
    assert not at.exception
    assert [e.value for e in at.error] == ["R = -1.0 is outside [0, 100]; nothing is computed until it is inside."]
    assert not plotly_figures(at)


def test_an_empty_store_offers_the_examples(tmp_path: Path) -> None:
    at = open_page(sweep="3")
    assert any("no runs yet" in i.value for i in at.info)
    at.button(key="tradeoffs_examples").click().run()
    assert not at.exception
    at = open_page()
    assert at.radio(key="to_source").value == "chosen runs"  # no sweep: the store's runs
    assert any("Certified accuracy vs radius" in f["layout"]["title"]["text"] for f in plotly_figures(at))


# ---------------------------------------------------------------------------------------------
# A sweep through the pages: start it on Certify, follow it, see it on Trade-offs
# ---------------------------------------------------------------------------------------------


def test_a_2x2_sweep_started_on_the_certify_page_lands_in_the_tradeoff_views(tmp_path: Path, monkeypatch) -> None:
    save_digits_checkpoint(tmp_path / "ckpt", monkeypatch, "constant:0.25", 0.0)
    at = support.open_page(CERTIFY, points="4", n="200", n0="10")
    assert not at.exception, [e.message for e in at.exception]
    at.text_input(key="sweep_sigma_b").set_value("0.2,0.3")
    at.text_input(key="sweep_r").set_value("0,0.1")
    at.number_input(key="sweep_k").set_value(10)
    at.text_input(key="sweep_constant").set_value("")
    at.run()
    assert any("2 σ functions" in c.value or "4 σ functions" in c.value for c in at.caption), \
        [c.value for c in at.caption]
    at.button(key="sweep_start").click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert at.query_params["sweep"] == "1"
    # at once: the sweep's panel with its progress over the whole grid (4 runs x 4 points) and Cancel
    assert len(at.get("progress")) == 1 and at.button(key="sweep_cancel1") is not None
    assert any(c.value.startswith("digits · 4 runs × 4 points") for c in at.caption), [c.value for c in at.caption]
    wait_for(at, lambda a: any(s.value.startswith("Done: 4 runs") for s in a.success), timeout=240)
    with Store(Path(os.environ["SMOOTHVIZ_DB"])) as store:
        record = store.sweep(1)
    assert record["status"] == "done" and record["done"] == 16 and len(record["cells"]) == 4
    runs_table = next(d.value for d in at.dataframe if "σ" in d.value.columns)
    assert runs_table["status"].tolist() == ["done"] * 4
    at = open_page(sweep="1", radius="0")
    heat = _by_title(at, "Certified accuracy at R = 0")["data"][0]
    assert heat["y"] == ["0.2", "0.3"] and heat["x"] == ["0", "0.1"]
    with Store(Path(os.environ["SMOOTHVIZ_DB"])) as store:
        acc = [[float(store.results(c["run_id"])["correct"].mean()) for c in record["cells"][i:i + 2]]
               for i in (0, 2)]
    assert np.allclose(np.array(heat["z"], dtype=float), acc)
    assert pd.notna(heat["z"][0][0])


def test_compare_runs_shows_error_bars_on_its_curves_table_and_download(tmp_path: Path) -> None:
    ids = constructed_sweep(Path(os.environ["SMOOTHVIZ_DB"]))
    frames = _frames(ids)
    const, better = ids[("constant", 0.25, 0.0)], ids[("knn", 0.25, 0.1)]
    at = support.open_page("pages/3_Compare_runs.py", runs=f"{const},{better}")
    assert not at.exception, [e.message for e in at.exception]
    water = next(f for f in plotly_figures(at) if f["layout"]["title"]["text"] == "Certified accuracy vs radius")
    band = next(t for t in water["data"] if t.get("fill") == "tonexty" and t["name"].startswith(f"#{const} "))
    expected = tradeoffs.accuracy_intervals(frames[("constant", 0.25, 0.0)], band["x"])
    assert band["y"] == pytest.approx(expected["high"].tolist())
    table = at.dataframe[-1].value
    ci = tradeoffs.accuracy_intervals(frames[("constant", 0.25, 0.0)], [0.5])
    assert table.loc[0, "R=0.5 95% CI"] == f"[{ci['low'].item():.3f}, {ci['high'].item():.3f}]"
    download = next(d for d in at.get("download_button") if d.proto.label == "Download table (CSV)")
    assert download is not None
    at.toggle(key="cmp_bars").set_value(False).run()
    assert not at.exception
    water = next(f for f in plotly_figures(at) if f["layout"]["title"]["text"] == "Certified accuracy vs radius")
    assert not [t for t in water["data"] if t.get("fill") == "tonexty"]
    assert "R=0.5 95% CI" not in at.dataframe[-1].value.columns


def test_interval_columns_are_the_compare_tables_error_bars() -> None:
    rng = np.random.default_rng(2)
    runs = {name: pd.DataFrame({"correct": rng.random(40) < 0.8, "radius": rng.exponential(0.4, 40)})
            for name in ("a", "b")}
    out = tradeoffs.interval_columns(runs, (0.0, 0.5))
    assert list(out.index) == ["a", "b"] and list(out.columns) == ["R=0 low", "R=0 high", "R=0.5 low", "R=0.5 high"]
    for name, df in runs.items():
        ref = tradeoffs.accuracy_intervals(df, (0.0, 0.5))
        assert out.loc[name, ["R=0 low", "R=0.5 low"]].tolist() == pytest.approx(ref["low"].tolist())
        assert out.loc[name, ["R=0 high", "R=0.5 high"]].tolist() == pytest.approx(ref["high"].tolist())


def test_the_sigma_b_r_views_take_one_model_at_a_time(tmp_path: Path) -> None:
    constructed_sweep(Path(os.environ["SMOOTHVIZ_DB"]), models=("m.pt", "other.pt"))
    at = open_page(sweep="1", radius="0.5")
    assert at.selectbox(key="to_model").options == ["m.pt", "other.pt"]
    for model, shift in (("m.pt", 0), ("other.pt", 1)):
        at.selectbox(key="to_model").set_value(model).run()
        assert not at.exception
        heat = _by_title(at, "Certified accuracy at R = 0.5")["data"][0]
        expected = (np.array([[20, 40, 5], [30, 30, 29]]) - shift) / POINTS
        assert np.allclose(np.array(heat["z"], dtype=float), expected)
        for trace in _by_title(at, "Waterfall position")["data"]:
            assert len(trace["x"]) == len(set(trace["x"])) == 3  # one run per (sigma_b, r)
        gap = _by_title(at, "Fairness gap at radius 0.5")
        assert all(len(t["x"]) == 3 for t in gap["data"])
    envelope = next(m.value for m in at.markdown if m.value.startswith("| run |"))
    assert len(envelope.splitlines()) == 2 + 2 * len(CELLS)  # the envelope takes every run of both models
