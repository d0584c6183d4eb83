"""Trade-offs: sweeps over σ parameters, Pareto fronts, envelopes and honest error bars.

The runs of a sweep (``smoothviz sweep``, or the Certify page's Sweep section) or any chosen runs:
certified accuracy at a radius and ACR as heatmaps over (σ_b, r), input-dependent minus constant σ
with its paired interval, clean against certified accuracy (the Pareto front), the envelope (the
best run at each radius) as a curve and as the literature's table, where the waterfall falls
against r (sound and naive), every certified-accuracy curve and table with its interval over the
test points and the high-probability version, paired differences of two runs, and the per-class
fairness gap. The numbers come from ``smoothviz.tradeoffs``, the figures from
``smoothviz.plots_tradeoffs``.

Every value read from the link (sweep, runs, radius, level, ci, bars, a, b) is checked: one that
cannot be used is named in a note and the default is shown instead.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import streamlit as st

from pages._ui import (
    ACTIVE,
    ERROR_ICON,
    PAGES,
    class_names,
    entered_page,
    get_store,
    offer_examples,
    run_and_results,
    set_query,
    setup_page,
    short_spec,
    shown,
    stop_on_error,
)
from smoothviz import analysis, plots_tradeoffs, tradeoffs
from smoothviz.errors import SmoothvizError
from smoothviz.plots import plural
from smoothviz.sweep import on_axes, sigma_parameters

setup_page("Trade-offs", ":material/tune:")

LEVELS = (0.9, 0.95, 0.99)
METHODS = {"clopper-pearson": "Clopper–Pearson (exact)", "bootstrap": "bootstrap (approximate)"}
PAIRED = {"bonferroni": "Bonferroni (guaranteed)", "newcombe": "Newcombe (approximate)",
          "bootstrap": "bootstrap (approximate)"}
SOURCES = ("a sweep", "chosen runs")
RADIUS_MAX = 100.0
MAX_BAND_RUNS = 6
LINK_ICON = ":material/link_off:"


# ---------------------------------------------------------------- the link's values
def note(key: str, raw: object, why: str, used: str) -> None:
    st.warning(f"The link's {key}={shown(raw)} was not applied: {why}; showing {used} instead.", icon=LINK_ICON)


def link_float(key: str, default: float, low: float, high: float) -> float:
    raw = st.query_params.get(key)
    if raw is None:
        return default
    try:
        value = float(str(raw).strip())
    except ValueError:
        note(key, raw, "not a number", f"{default:g}")
        return default
    if not (math.isfinite(value) and low <= value <= high):
        note(key, raw, f"outside [{low:g}, {high:g}]", f"{default:g}")
        return default
    return value


def link_choice(key: str, options: list, default, parse=str):
    raw = st.query_params.get(key)
    if raw is None:
        return default
    try:
        value = parse(str(raw).strip())
    except ValueError:
        value = None
    if value not in options:
        note(key, raw, f"not one of {', '.join(map(str, options[:6]))}", str(default))
        return default
    return value


def link_runs(rows: dict[int, dict]) -> list[int] | None:
    raw = st.query_params.get("runs")
    if raw is None:
        return None
    ids, bad = [], []
    for item in str(raw).split(","):
        item = item.strip()
        if item.isdigit() and len(item) <= 18 and int(item) in rows:
            if int(item) not in ids:
                ids.append(int(item))
        elif item:
            bad.append(item)
    if bad:
        st.warning(f"The link's runs: {len(bad)} item{'s' if len(bad) != 1 else ''} not applied (not runs of this "
                   f"store): {', '.join(shown(b) for b in bad[:5])}.", icon=LINK_ICON)
    return ids


# ---------------------------------------------------------------- data
def params_of(run: dict) -> dict:
    """What the views need of a run: its sigma's kind and parameters, model, n and alpha."""
    try:
        params = sigma_parameters(run["sigma_spec"]) if run.get("sigma_spec") else {"kind": None}
    except SmoothvizError:
        params = {"kind": None}
    return {**params, "model": run.get("checkpoint"), "n": run.get("n"), "alpha": run.get("alpha")}


def cell_label(run: dict, params: dict, several_models: bool) -> str:
    text = f"#{run['id']} {short_spec(run.get('sigma_spec'))} n={run.get('n')}"
    return f"{text} {params.get('label') or ''}".strip() if several_models else text


def sweep_label(record: dict) -> str:
    return (f"#{record['id']} {record['name']} · {record['status']} · {record['runs_done']}/"
            f"{plural(len(record['cells']), 'run')}")


# ---------------------------------------------------------------- the page
st.title("Trade-offs")
st.caption("Sweeps over σ parameters, the Pareto front, the envelope and every certified accuracy with its "
           "interval over the test points: what the data can tell, and what it cannot.")
store = get_store()
with stop_on_error():
    runs = store.runs()
    sweeps = store.sweeps()
if runs.empty:
    st.info("The store has no runs yet. Start a sweep on the **Certify** page (its Sweep section) or with "
            "`python -m smoothviz sweep ...`, or load the example runs.")
    offer_examples("tradeoffs_examples")
    st.page_link(PAGES["certify"], label="Go to Certify", icon=":material/arrow_forward:")
    st.stop()
rows = {int(r["id"]): r for r in runs.to_dict("records")}
sweep_by_id = {int(s["id"]): s for s in sweeps}

if entered_page() or "to_source" not in st.session_state:
    wanted_sweep = link_choice("sweep", list(sweep_by_id), None, int) if sweep_by_id else None
    if not sweep_by_id and st.query_params.get("sweep") is not None:
        note("sweep", st.query_params.get("sweep"), "this store has no sweep", "chosen runs")
    linked_runs = link_runs(rows)
    use_sweep = bool(sweep_by_id) and (wanted_sweep is not None or linked_runs is None)
    st.session_state.to_source = SOURCES[0] if use_sweep else SOURCES[1]
    st.session_state.to_sweep = wanted_sweep if wanted_sweep is not None else (next(iter(sweep_by_id), None))
    st.session_state.to_runs = linked_runs if linked_runs else [i for i, r in rows.items() if r["done"] > 0][:4]
    st.session_state.to_radius = link_float("radius", 0.25, 0.0, RADIUS_MAX)
    st.session_state.to_level = link_choice("level", list(LEVELS), 0.95, float)
    st.session_state.to_ci = link_choice("ci", list(METHODS), "clopper-pearson")
    st.session_state.to_bars = link_choice("bars", ["1", "0"], "1") == "1"
    st.session_state["_to_pair"] = (st.query_params.get("a"), st.query_params.get("b"))
else:
    if st.session_state.get("to_sweep") not in sweep_by_id:
        st.session_state.to_sweep = next(iter(sweep_by_id), None)
    st.session_state.to_runs = [i for i in st.session_state.get("to_runs", []) if i in rows]

source = st.radio("Runs from", SOURCES, key="to_source", horizontal=True)
db = str(store.path)
items: list[tuple[dict, dict, pd.DataFrame]] = []  # (params, run, results) of every run shown
sweep_id = None
if source == SOURCES[0]:
    if not sweep_by_id:
        st.info("No sweep in this store yet: start one on the Certify page (Sweep section) or with "
                "`python -m smoothviz sweep --model MODEL --sigma-grid \"knn:{0.12,0.25},{0,0.05},20\" ...`; "
                "or look at chosen runs.")
        st.page_link(PAGES["certify"], label="Go to Certify", icon=":material/arrow_forward:")
        set_query(sweep=None)
        st.stop()
    sweep_id = st.selectbox("Sweep", list(sweep_by_id), key="to_sweep", format_func=lambda i: sweep_label(sweep_by_id[i]))
    record = sweep_by_id[sweep_id]
    set_query(sweep=sweep_id, runs=None)
    if record["status"] in ACTIVE:
        st.info(f"This sweep is {record['status']}: {record['done']} of {plural(record['total'], 'point')} stored so "
                "far; the views show the runs with results. Rerun the page for more.", icon=":material/hourglass_top:")
        st.page_link(PAGES["certify"], label="Follow its progress on the Certify page", icon=":material/grid_on:",
                     query_params={"sweep": str(sweep_id)})
    several = len(record["config"]["models"]) > 1
    for cell in record["cells"]:
        if cell["run_id"] is None or cell["done"] == 0:
            continue
        try:
            run, results = run_and_results(db, cell["run_id"], (cell["done"], cell["status"]))
        except SmoothvizError:
            continue
        params = {**cell["cell"], "kind": cell["cell"]["kind"]}
        params["label"] = cell_label(run, {**params, "label": cell["cell"]["label"]}, several)
        items.append((params, run, results))
else:
    chosen = st.multiselect("Runs", list(rows), key="to_runs",
                            format_func=lambda i: f"#{i} {rows[i]['name']} · {short_spec(rows[i]['sigma_spec'])}")
    set_query(runs=",".join(map(str, chosen)) or None, sweep=None)
    for run_id in chosen:
        row = rows[run_id]
        try:
            run, results = run_and_results(db, run_id, (row["done"], row["status"], row["updated"]))
        except SmoothvizError:
            continue
        if len(results):
            items.append(({**params_of(run), "label": f"#{run_id} {run['name']}"}, run, results))
if not items:
    st.info("No results to show yet: the chosen runs have no certified points.")
    st.stop()

c1, c2, c3, c4 = st.columns(4)
radius = c1.number_input("radius R (L2, pixel units)", step=0.05, format="%.4g", key="to_radius")
level = c2.selectbox("confidence level", LEVELS, key="to_level", format_func=lambda v: f"{v:.0%}")
ci = c3.selectbox("interval over the test points", list(METHODS), key="to_ci", format_func=METHODS.get)
bars = c4.toggle("error bars", key="to_bars", help="Intervals on every certified-accuracy curve and table.")
if radius is None or not (math.isfinite(radius) and 0.0 <= radius <= RADIUS_MAX):
    st.error(f"R = {radius} is outside [0, {RADIUS_MAX:g}]; nothing is computed until it is inside.", icon=ERROR_ICON)
    st.stop()
radius = float(radius)
set_query(radius=f"{radius:g}", level=f"{level:g}", ci=ci, bars="1" if bars else "0")
beta = 1.0 - float(level)
frames = {p["label"]: res for p, _, res in items}
runs_of = {p["label"]: run for p, run, _ in items}
table_radii = sorted({*analysis.DEFAULT_RADII, radius})
top = max([tradeoffs.waterfall_position(run, res)["zero_sound"] for _, run, res in items] + [radius, 0.05])
curve_radii = np.linspace(0.0, top * 1.05, 61)
st.caption(f"{plural(len(items), 'run')} · intervals at level {level:.0%}, pointwise in the radius: each covers its "
           "own radius with that probability, not all radii at once.")

# The (sigma_b, r) plane of the heatmaps, the waterfall position and the per-class gaps holds one
# model, n and alpha at a time (the Pareto front, envelope and error bars take every run).
placed = [(p, res) for p, res in on_axes([(p, res) for p, _, res in items]) if p.get("kind") in ("knn", "constant")]
models = sorted({str(p.get("model")) for p, _ in placed})
ns = sorted({int(p["n"]) for p, _ in placed if p.get("n") is not None})
alphas = sorted({float(p["alpha"]) for p, _ in placed if p.get("alpha") is not None})
sliced: list = []
if placed:
    s1, s2, s3 = st.columns(3)
    model = s1.selectbox("model (σ_b × r views)", models, key="to_model") if len(models) > 1 else models[0]
    n_pick = s2.selectbox("n (σ_b × r views)", ns, key="to_n") if len(ns) > 1 else (ns[0] if ns else None)
    a_pick = s3.selectbox("α (σ_b × r views)", alphas, key="to_alpha") if len(alphas) > 1 else \
        (alphas[0] if alphas else None)
    sliced = [(p, res) for p, res in placed if str(p.get("model")) == model and p.get("n") == n_pick
              and p.get("alpha") == a_pick]

tabs = st.tabs(["Heatmaps", "Pareto front", "Envelope", "Waterfall position", "Error bars", "Per class"])

with tabs[0]:
    if not sliced:
        st.info("None of these runs has a constant or kNN σ: there is no (σ_b, r) plane to draw.")
    else:
        try:
            view = tradeoffs.grid_view(sliced, radius)
        except SmoothvizError as exc:
            st.error(str(exc), icon=ERROR_ICON)
        else:
            h1, h2 = st.columns(2)
            h1.plotly_chart(plots_tradeoffs.heatmap_figure(view.certified_accuracy, f"Certified accuracy at R = {radius:g}",
                                                           "certified accuracy", view.points), key="fig_heat_acc")
            acr_top = float(np.nanmax(view.acr.to_numpy(float))) if np.isfinite(view.acr.to_numpy(float)).any() else 1.0
            h2.plotly_chart(plots_tradeoffs.heatmap_figure(view.acr, "Average certified radius (ACR)", "ACR",
                                                           view.points, zmax=max(acr_top, 1e-6)), key="fig_heat_acr")
            st.caption("Rows σ_b, columns r; a constant σ sits at r = 0 (kNN with r = 0 is the same σ). Sound "
                       "certificates only.")
        versus = tradeoffs.versus_constant(sliced, table_radii, beta, "bonferroni", intersect=True)
        if versus.empty:
            st.info("No input-dependent run here has a constant-σ run (or kNN with r = 0) with the same σ_b to be "
                    "compared with.")
        else:
            at = versus[np.isclose(versus["radius"], radius)]
            st.plotly_chart(plots_tradeoffs.difference_heatmap_figure(at, radius), key="fig_heat_diff")
            wins = at[at["verdict"] == "kNN higher"]
            losses = at[at["verdict"] == "constant higher"]
            st.markdown(f"At R = {radius:g}: input-dependent σ is **higher** in {plural(len(wins), 'cell')}, "
                        f"**lower** in {plural(len(losses), 'cell')}, and the data cannot tell in "
                        f"{plural(len(at) - len(wins) - len(losses), 'cell')} (paired {level:.0%} Bonferroni "
                        "intervals on the same points).")
            shown_cols = ["sigma_b", "r", "radius", "points", "accuracy_knn", "accuracy_constant", "difference", "low",
                          "high", "verdict", "baseline"]
            st.dataframe(versus[shown_cols], hide_index=True, column_config={
                c: st.column_config.NumberColumn(format="%.3f")
                for c in ("accuracy_knn", "accuracy_constant", "difference", "low", "high")})
            st.download_button("Download kNN vs constant (CSV)", versus.to_csv(index=False), "knn_vs_constant.csv",
                               "text/csv", on_click="ignore", key="dl_versus", icon=":material/download:")

with tabs[1]:
    front = tradeoffs.pareto_front(frames, radius)
    st.plotly_chart(plots_tradeoffs.pareto_figure(front, radius), key="fig_pareto")
    st.caption("A run is dominated (grey) when another is at least as good on both axes and better on one. The "
               "front is of point estimates: whether a dominating run is really better is the paired question "
               "of the Error bars tab.")
    st.dataframe(front, hide_index=True, column_config={
        c: st.column_config.NumberColumn(format="%.3f") for c in ("clean_accuracy", "certified_accuracy")})

with tabs[2]:
    env = tradeoffs.envelope(frames, curve_radii, beta)
    curves = {k: analysis.accuracy_curve(res) for k, res in frames.items()}
    st.plotly_chart(plots_tradeoffs.envelope_figure(curves, env), key="fig_envelope")
    st.caption("The envelope picks the largest of several noisy estimates, so it is biased upwards; the band is an "
               f"interval (Bonferroni over the runs, {level:.0%}) for the largest true certified accuracy among them.")
    st.markdown(plots_tradeoffs.envelope_markdown(tradeoffs.envelope_table(frames, table_radii)))
    st.caption("Certified accuracy of every run at each radius; the best of each column in bold (ties all bold).")

with tabs[3]:
    positions = pd.DataFrame([{**tradeoffs.waterfall_position(runs_of[p["label"]], res), "sigma_b": p["sigma_b"],
                               "r": p["r"], "run": p["label"]} for p, res in sliced])
    if positions.empty:
        st.info("None of these runs has a constant or kNN σ.")
    else:
        st.plotly_chart(plots_tradeoffs.waterfall_position_figure(positions), key="fig_waterfall_position")
        st.caption("Dashed: the ceiling σ_max·Φ⁻¹(α^{1/n}) that no radius of the run can pass (σ_max grows with r, "
                   "so input-dependent σ moves it out). Solid: where the sound certified accuracy falls to zero. "
                   "Dotted: the same for the naive radius σ(x)·Φ⁻¹(p_A), which is no guarantee; the gap between "
                   "solid and dotted is what the sound certificate costs.")
        st.dataframe(positions[["run", "sigma_b", "r", "ceiling", "zero_sound", "zero_naive"]], hide_index=True,
                     column_config={c: st.column_config.NumberColumn(format="%.3f")
                                    for c in ("ceiling", "zero_sound", "zero_naive")})

with tabs[4]:
    labels = list(frames)
    if st.session_state.get("to_band") is None or any(k not in labels for k in st.session_state["to_band"]):
        st.session_state.to_band = labels[:min(4, len(labels))]
    band_runs = st.multiselect(f"curves (at most {MAX_BAND_RUNS})", labels, key="to_band",
                               max_selections=MAX_BAND_RUNS)
    bands = {k: tradeoffs.accuracy_intervals(frames[k], curve_radii, beta, ci) for k in band_runs} if bars else {}
    st.plotly_chart(plots_tradeoffs.accuracy_band_figure(
        {k: analysis.accuracy_curve(frames[k]) for k in band_runs}, bands,
        {k: analysis.run_ceiling(runs_of[k]) for k in band_runs}, f"{level:.0%} {METHODS[ci]}"), key="fig_bands")
    rho = st.selectbox("high-probability ρ", (0.001, 0.01, 0.05), key="to_rho", format_func=lambda v: f"{v:g}",
                       help="Each point's certificate is wrong with probability ≤ the run's α; with probability "
                            "≥ 1 − ρ over the Monte Carlo noise the true certified accuracy on these points is at "
                            "least the high-probability value.")
    tables = []
    for k in band_runs:
        alpha_k = runs_of[k].get("alpha")
        hp = (float(alpha_k), float(rho)) if alpha_k is not None else None
        t = tradeoffs.interval_table(frames[k], table_radii, beta, ci, hp if bars else None)
        tables.append(t.assign(run=k))
    if tables:
        table = pd.concat(tables, ignore_index=True)
        columns = ["run", "radius", "points", "certified", "certified_accuracy"]
        columns += [c for c in ("low", "high", "hp_reference", "hp_binomial") if bars and c in table.columns]
        number = st.column_config.NumberColumn(format="%.3f")
        st.dataframe(table[columns], hide_index=True, column_config={
            "certified_accuracy": number, "low": number, "high": number,
            "hp_reference": st.column_config.NumberColumn(
                "hp (reference formula)", format="%.3f",
                help="The reference code's formula (code/analyze.py): NOT a valid 1 − ρ bound in general"),
            "hp_binomial": st.column_config.NumberColumn(
                "hp (exact binomial, valid)", format="%.3f",
                help="Exact binomial tail: a valid bound with probability ≥ 1 − ρ"),
        })
        st.download_button("Download the table with intervals (CSV)", table[columns].to_csv(index=False),
                           "certified_accuracy_intervals.csv", "text/csv", on_click="ignore", key="dl_intervals",
                           icon=":material/download:")
    st.subheader("Two runs on the same points", anchor=False)
    wanted = st.session_state.pop("_to_pair", None)
    by_id = {str(run["id"]): k for k, run in runs_of.items()}
    for key, index, raw in (("to_a", 0, wanted[0] if wanted else None), ("to_b", 1, wanted[1] if wanted else None)):
        if raw is not None and str(raw).strip() in by_id:
            st.session_state[key] = by_id[str(raw).strip()]
        elif raw is not None:
            note("a" if index == 0 else "b", raw, "not one of the runs shown", "the default")
        if st.session_state.get(key) not in labels:
            st.session_state[key] = labels[min(index, len(labels) - 1)]
    p1, p2, p3 = st.columns(3)
    label_a = p1.selectbox("run A", labels, key="to_a")
    label_b = p2.selectbox("run B", labels, key="to_b")
    paired_method = p3.selectbox("paired interval", list(PAIRED), key="to_paired", format_func=PAIRED.get)
    set_query(a=runs_of[label_a]["id"], b=runs_of[label_b]["id"])
    if label_a == label_b:
        st.info("Pick two different runs.")
    else:
        try:
            diff = tradeoffs.paired_difference(frames[label_a], frames[label_b], table_radii, beta, paired_method,
                                               intersect=True)
        except SmoothvizError as exc:
            st.error(str(exc), icon=ERROR_ICON)
        else:
            st.plotly_chart(plots_tradeoffs.paired_difference_figure(diff, label_a, label_b), key="fig_paired")
            here = diff[np.isclose(diff["radius"], radius)].iloc[0]
            verdict = {"a higher": f"**{label_a}** is higher", "b higher": f"**{label_b}** is higher"}.get(
                here["verdict"], "the data **cannot tell** them apart")
            st.markdown(f"At R = {radius:g} on {plural(int(here['points']), 'common point')}: A − B = "
                        f"{here['difference']:+.3f}, {level:.0%} paired interval [{here['low']:+.3f}, "
                        f"{here['high']:+.3f}]: {verdict}.")
            st.dataframe(diff, hide_index=True, column_config={
                c: st.column_config.NumberColumn(format="%.3f")
                for c in ("accuracy_a", "accuracy_b", "difference", "low", "high")})

with tabs[5]:
    fair_method = "bootstrap" if ci == "bootstrap" else "bonferroni"
    fair = []
    for p, res in sliced:
        names = class_names(runs_of[p["label"]]["dataset"])
        g = tradeoffs.fairness_interval(res, radius, beta, fair_method)
        worst = g["worst_class"]
        counts = res["label"].value_counts()
        fair.append({"run": p["label"], "sigma_b": p["sigma_b"], "r": p["r"], **g,
                     "worst_class": names[worst] if names and worst is not None and worst < len(names) else worst,
                     "worst_points": int(counts.get(worst, 0)) if worst is not None else 0})
    if fair:
        fair_frame = pd.DataFrame(fair)
        f1, f2 = st.columns(2)
        f1.plotly_chart(plots_tradeoffs.fairness_figure(fair_frame, radius), key="fig_fair_gap")
        f2.plotly_chart(plots_tradeoffs.worst_class_figure(fair_frame, radius), key="fig_fair_worst")
        st.caption(f"Intervals: {'Clopper–Pearson per class with Bonferroni over the classes (guaranteed)' if fair_method == 'bonferroni' else 'bootstrap within each class (approximate)'}"
                   f", level {level:.0%}. A class with few points has a wide interval: the gap is only as sure as "
                   "its worst class.")
        st.dataframe(fair_frame[["run", "sigma_b", "r", "gap", "gap_low", "gap_high", "worst_class", "worst_points",
                                 "worst_accuracy", "worst_low", "worst_high"]], hide_index=True,
                     column_config={c: st.column_config.NumberColumn(format="%.3f")
                                    for c in ("gap", "gap_low", "gap_high", "worst_accuracy", "worst_low",
                                              "worst_high")})
    pick = st.selectbox("classes of", list(frames), key="to_class_run")
    names = class_names(runs_of[pick]["dataset"])
    per_class = tradeoffs.per_class_intervals(frames[pick], radius, beta, names)
    st.dataframe(per_class, hide_index=True, column_config={
        c: st.column_config.NumberColumn(format="%.3f") for c in ("certified_accuracy", "low", "high")})
    st.caption(f"Per class at R = {radius:g}: its points, those certified, and each class's own "
               f"{level:.0%} Clopper–Pearson interval.")
