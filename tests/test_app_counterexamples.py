"""The Counterexamples page in AppTest: with its defaults a witness breaks the naive certificate and the
verdict says so, the figures hold the witness's numbers (shell radii, f*'s regions, the formula's
probabilities), sampling confirms it, "the worst for r" finds the sound radius as the smallest breaking
distance, every hostile link value is applied exactly or named, typed values out of range are refused in
one line with nothing computed, and the real-data mode searches the shipped example runs."""

from __future__ import annotations

import math

import numpy as np
import pytest

import apptest_support as support
from apptest_support import HOSTILE_QUERY_VALUES, number
from apptest_support import fresh_app_state  # noqa: F401  (autouse: a temporary store, no shared caches)
from smoothviz import bounds, witness
from smoothviz.examples import load_examples
from smoothviz.store import Store

PAGE = "pages/7_Counterexamples.py"
RANGES = {"dim": (1, 150528), "sigma0": (0.01, 1.0), "pa": (0.5, 0.999999), "ratio": (0.5, 2.0),
          "d": (0.0, 10.0), "r": (0.0, 1000.0)}


def open_page(**query: str):
    at = support.open_page(PAGE, **query)
    assert not at.exception, [e.message for e in at.exception]
    return at


def notes(at) -> list[str]:
    return [w.value for w in at.warning]


def errors(at) -> list[str]:
    return [e.value for e in at.error]


def metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def figure(at, title: str) -> dict:
    return next(f for f in support.plotly_figures(at) if f["layout"]["title"]["text"].startswith(title))


def test_defaults_break_the_naive_certificate_and_the_figures_hold_the_witness() -> None:
    at = open_page()
    dim, s0, p, ratio, d = 3072, 0.25, 0.999, 1.04, 0.386
    w = witness.build_witness(dim, s0, p, d, s0 * ratio)
    assert w.broken  # the defaults are a counterexample
    m = metrics(at)
    assert m["Naive radius σ₀Φ⁻¹(p_A)"] == f"{bounds.naive_radius(p, s0):.4f}"
    assert m["P(A) at x₁ under f*"] == f"{w.p_x1:.4f}"
    verdict = [e for e in errors(at) if e.startswith("The naive certificate claims robustness up to")]
    expected = (f"The naive certificate claims robustness up to R = {w.naive_radius:.4f}; this classifier "
                f"changes its answer at distance d = {d:.4f} < R: P(A) at x₁ is {w.p_x1:.4f} < 1/2.")
    assert verdict == [expected]
    sl = figure(at, "Slice through x₀, x₁ and c")
    shells = [t for t in sl["data"] if t.get("name", "").startswith("noise shell")]
    assert [max(t["x"]) for t in shells] == pytest.approx([s0 * math.sqrt(dim), d + s0 * ratio * math.sqrt(dim)],
                                                           rel=1e-6)
    # the class map is f* itself: its statistic evaluated at the heatmap's points in the plane
    heat = next(t for t in sl["data"] if t["type"] == "heatmap")
    xs, ys, z = np.asarray(heat["x"]), np.asarray(heat["y"]), np.asarray(heat["z"])
    j, i = len(ys) // 3, len(xs) // 4
    point = w.x0.clone()
    point[0] += xs[i]
    point[1] += ys[j]
    assert bool(z[j, i]) == (int(w.classifier.labels(point[None])[0]) == witness.CLASS_A)
    prob = figure(at, "Probability of class A")
    assert prob["data"][0]["y"] == pytest.approx([p, w.p_x1], abs=1e-12)


def test_sampling_confirms_the_default_witness() -> None:
    at = open_page()
    at.button(key="cx_sample").click().run()
    assert not at.exception
    assert any(s.value.startswith("Sampling confirms it") for s in at.success)
    prob = figure(at, "Probability of class A")
    sampled = prob["data"][1]
    w = witness.build_witness(3072, 0.25, 0.999, 0.386, 0.26)
    lows = np.asarray(sampled["y"]) - np.asarray(sampled["error_y"]["arrayminus"])
    highs = np.asarray(sampled["y"]) + np.asarray(sampled["error_y"]["array"])
    assert lows[1] <= w.p_x1 <= highs[1] and highs[1] < 0.5  # x1: interval around the formula, below 1/2
    assert lows[0] <= 0.999 <= highs[0]


def test_the_worst_for_r_finds_the_sound_radius() -> None:
    p, s0, r, dim = 0.999, 0.25, 0.1, 3072
    band = witness.search_band(p, s0, r, dim)
    sound = float(bounds.input_dependent_radius(p, s0, r, dim))
    assert float(band.smallest_breaking_distance) == pytest.approx(sound, rel=1e-6)
    d = 0.5 * (sound + float(band.naive_radius))
    at = open_page(r=repr(r), d=repr(d))
    assert at.radio(key="cx_choose").value == "worst"
    caption = next(c.value for c in at.caption if c.value.startswith("For r = 0.1 the most damaging"))
    assert f"is {float(band.smallest_breaking_distance):.4f}, the sound radius" in caption
    low, high = s0 * math.exp(-r * d), s0 * math.exp(r * d)
    worst = min(float(bounds.worst_case_probability(s0, s, d, p, dim)) for s in (low, high))
    assert metrics(at)["P(A) at x₁ under f*"] == f"{worst:.4f}"
    assert any(e.startswith("The naive certificate claims") for e in errors(at))
    # inside the sound radius no admissible sigma1 breaks it
    inside = open_page(r=repr(r), d=repr(0.9 * sound))
    assert not errors(inside) and any(s.value.startswith("No counterexample") for s in inside.success)


def _held(at, key: str) -> float:
    """The value the page computes with (N of a preset is in the session state; no widget holds it)."""
    return at.session_state["cx_dim"] if key == "dim" else at.number_input(key=f"cx_{key}").value


@pytest.mark.parametrize("shift", range(0, len(HOSTILE_QUERY_VALUES), 3))
def test_hostile_link_values_are_applied_exactly_or_named(shift: int) -> None:
    n = len(HOSTILE_QUERY_VALUES)
    keys = ("dim", "sigma0", "pa", "ratio", "d")
    query = {k: HOSTILE_QUERY_VALUES[(shift + i) % n] for i, k in enumerate(keys)}
    at = open_page(**query)
    for text in notes(at) + errors(at):
        assert "\n" not in text and len(text) < 600
    for key, raw in query.items():
        held = _held(at, key)
        lo, hi = RANGES[key]
        assert lo <= held <= hi, (key, raw, held)
        applied = number(raw) is not None and held == number(raw)
        assert applied != any(t.startswith(f"The link's {key}=") for t in notes(at)), (key, raw, held, notes(at))


def test_a_link_pair_is_applied_exactly() -> None:
    at = open_page(dim="64", sigma0="0.29", pa="0.997", ratio="0.81", d="0.735")
    assert at.selectbox(key="cx_preset").value == "digits" and not notes(at)
    w = witness.build_witness(64, 0.29, 0.997, 0.735, 0.29 * 0.81)
    assert metrics(at)["P(A) at x₁ under f*"] == f"{w.p_x1:.4f}"
    custom = open_page(dim="100")
    assert custom.selectbox(key="cx_preset").value == "custom" and _held(custom, "dim") == 100


def test_a_distance_zero_with_another_sigma_is_one_line() -> None:
    at = open_page(d="0", ratio="1.1")
    assert errors(at) == ["distance = 0 needs sigma1 = sigma0: one input has one sigma"]
    assert not at.get("plotly_chart")


@pytest.mark.parametrize(("key", "value", "line"), [
    ("pa", 1.0, "p_A = 1 is outside [0.5, 0.999999]"),
    ("sigma0", 0.0, "σ₀ = 0 is outside [0.01, 1]"),
    ("ratio", 3.0, "σ₁/σ₀ = 3 is outside [0.5, 2]"),
    ("d", -1.0, "d = -1 is outside [0, 10]"),
])
def test_a_typed_value_out_of_range_is_refused_in_one_line(key: str, value: float, line: str) -> None:
    at = open_page()
    before = dict(at.query_params)
    at.number_input(key=f"cx_{key}").set_value(value).run()
    assert not at.exception
    assert errors(at) and errors(at)[0].startswith(line) and len(errors(at)) == 1, errors(at)
    assert not at.get("plotly_chart") and not at.metric
    assert dict(at.query_params) == before


def test_imagenet_sampling_is_subsampled_with_a_note() -> None:
    at = open_page(dim="150528")
    assert at.selectbox(key="cx_preset").value == "imagenet"
    assert any("sampling draws n = 200 noisy copies" in c.value for c in at.caption)


# ---------------------------------------------------------------- real data
@pytest.fixture
def examples(tmp_path):
    store = Store(tmp_path / "runs" / "test.db")
    ids = load_examples(store)
    by_key = {store.run(i)["options"]["example"]: i for i in ids}
    store.close()
    return by_key


def test_real_data_mode_searches_and_verifies_the_digits_knn_run(examples) -> None:
    run_id = examples["digits-cnn-knn-0.25"]
    at = open_page(run=str(run_id))
    assert at.radio(key="cx_mode").value == "data" and at.selectbox(key="cx_run").value == run_id
    at.button(key="cx_search").click().run()
    assert not at.exception, [e.message for e in at.exception]
    m = metrics(at)
    assert m["points in the run"] == "360" and m["naive > sound"] == m["certified"]
    refuted = int(m["refuted by a data pair"].replace(",", ""))
    assert 0 < refuted <= int(m["certified"])
    table = at.dataframe[0].value
    assert len(table) == refuted and (table["P(A) at x₁ under f*"] < 0.5).all()
    assert (table["d"] > table["sound radius"]).all() and (table["d"] < table["naive radius"]).all()
    images = [f for f in support.plotly_figures(at) if any(t["type"] == "image" for t in f["data"])]  # x0, x1, x1 - x0
    assert len(images) == 1 and len(images[0]["data"]) == 3
    at.button(key="cx_verify").click().run()
    assert not at.exception
    verified = metrics(at)["verified by sampling"]
    assert verified != "—" and 0 < int(verified) <= 12


def test_real_data_mode_names_a_link_run_it_cannot_show(examples) -> None:
    at = open_page(run="999")
    assert any(t.startswith("The link's run #999 is not in the store") for t in notes(at))
    constant = examples["digits-cnn-constant-0.25"]
    at = open_page(run=str(constant))
    assert any("has no input-dependent σ" in t for t in notes(at))
    assert at.selectbox(key="cx_run").value != constant
    bad = open_page(run="abc")
    assert any(t.startswith("The link's run='abc' is not a run id") for t in notes(bad))


def test_real_data_mode_on_an_empty_store_offers_the_examples() -> None:
    at = open_page()
    at.radio(key="cx_mode").set_value("data").run()
    assert not at.exception
    assert any("Load the example runs" == b.label for b in at.button)


# ---------------------------------------------------------------- cross-links
def test_compare_links_the_chosen_run_and_warns_about_its_audit(examples, tmp_path) -> None:
    knn = examples["digits-cnn-knn-0.25"]
    constant = examples["digits-cnn-constant-0.25"]
    store = Store(tmp_path / "runs" / "test.db")
    run = store.run(knn)
    low = store.create_run("knn with too small an r", "digits", "test", run["checkpoint"], run["sigma_spec"],
                           run["sigma_params"], 0.2, run["n0"], run["n"], run["alpha"], "cpu", [0, 1, 2], 0, 256)
    for row in store.results(knn).head(3).to_dict("records"):
        store.add_result(low, row)
    store.annotate_run(low, "sigma_audit", {"audited_r": 0.35, "declared_r": 0.2})
    store.close()
    at = support.open_page("pages/3_Compare_runs.py", runs=f"{constant},{knn},{low}")
    assert not at.exception, [e.message for e in at.exception]
    warned = [w for w in notes(at) if "the audited semi-elasticity 0.35 of its sigma exceeds the r = 0.2" in w]
    assert len(warned) == 1 and f"#{low}" in warned[0]
    assert at.selectbox(key="cx_compare_run").options == [f"#{knn} example: digits-cnn-knn-0.25",
                                                         f"#{low} knn with too small an r"]
    links = [link.proto for link in at.get("page_link") if link.proto.label.startswith("Counterexamples to the")]
    assert len(links) == 1 and links[0].page == "Counterexamples" and links[0].query_string == f"run={knn}"


def test_certify_page_runs_a_ddrs_sigma_as_naive_only(tmp_path, monkeypatch) -> None:
    """ddrs is a σ kind of the Certify page: the link's spec fills its widgets, the page says the certificate is
    naive only, and the run it starts records r as NULL and sound radii of 0."""
    import time

    ckpt = support.save_digits_checkpoint(tmp_path / "ckpts", monkeypatch, "constant:0.25", 0.0)
    at = support.open_page("pages/2_Certify.py", sigma="ddrs:0.12,0.5,3,n=32", points="4", n="200", n0="20")
    assert not at.exception, [e.message for e in at.exception]
    sk = f"@{ckpt}"
    assert at.radio(key="kind" + sk).value == "ddrs"
    assert (at.number_input(key="dmin" + sk).value, at.number_input(key="dmax" + sk).value) == (0.12, 0.5)
    assert (at.number_input(key="dg" + sk).value, at.number_input(key="dn" + sk).value) == (3, 32)
    assert any("naive only (no guarantee)" in c.value for c in at.caption)
    assert any("96 forward passes of the model per point" in c.value for c in at.caption)
    assert not errors(at) and not at.button(key="run_button").disabled
    at.number_input(key="dmin" + sk).set_value(0.6).run()  # above the largest: refused in one line
    assert errors(at) == ["smallest σ = 0.6 exceeds largest σ = 0.5"] and at.button(key="run_button").disabled
    at.number_input(key="dmin" + sk).set_value(0.12).run()
    at.button(key="run_button").click().run()
    store = Store(tmp_path / "runs" / "test.db")
    run_id = int(at.query_params["run"])
    end = time.monotonic() + 120
    while store.run(run_id)["status"] in ("pending", "running") and time.monotonic() < end:
        time.sleep(0.5)
    run = store.run(run_id)
    assert run["status"] == "done" and run["r"] is None and run["sigma_spec"].startswith("ddrs:0.12,0.5,3,n=32")
    assert (store.results(run_id)["radius"] == 0).all()
    store.close()


def test_the_explorer_links_this_points_witness_and_its_run(examples) -> None:
    from urllib.parse import parse_qs

    knn = examples["digits-cnn-knn-0.25"]
    at = support.open_page("pages/4_Sample_explorer.py", ckpt="assets/digits-cnn-knn-0.25.pt", idx="5", n="2000")
    assert not at.exception, [e.message for e in at.exception]
    links = {link.proto.label: link.proto for link in at.get("page_link") if link.proto.page == "Counterexamples"}
    witness_link = links["This point's witness: a classifier that breaks its naive certificate"]
    query = {k: v[0] for k, v in parse_qs(witness_link.query_string).items()}
    assert set(query) == {"dim", "sigma0", "pa", "r", "d"} and query["dim"] == "64" and float(query["r"]) == 0.4
    assert links[f"Real inputs that refute run #{knn}'s certificates"].query_string == f"run={knn}"
    page = open_page(**query)  # the explorer's numbers are applied as they are, in "the worst for r"
    assert not notes(page) and page.radio(key="cx_choose").value == "worst"
    assert page.number_input(key="cx_sigma0").value == float(query["sigma0"])
    assert any(e.startswith("The naive certificate claims robustness") for e in errors(page))
