"""Compare runs: certified-accuracy curves, radius distributions, fairness, tables, CSV, log import."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from pages._ui import (
    PAGES, get_store, load_dataset, query_ints, run_label, set_query, setup_page, short_spec, show_error,
    stop_on_error,
)
from smoothviz import analysis, data, plots
from smoothviz.errors import SmoothvizError
from smoothviz.store import export_csv, import_cohen_log

setup_page("Compare runs", "📊")


@st.cache_data(max_entries=64, show_spinner=False)
def run_and_results(db: str, run_id: int, stamp: tuple) -> tuple[dict, pd.DataFrame]:
    """A run's record and per-point results, cached until the run changes (``stamp``)."""
    store = get_store()
    return store.run(run_id), store.results(run_id)


@st.cache_data(max_entries=8, show_spinner=False)
def class_names(dataset: str) -> list[str] | None:
    try:
        return list(load_dataset(dataset).class_names)
    except SmoothvizError:
        return None


def import_section(expanded: bool) -> None:
    """Upload a tab-separated log of the reference smoothing code and store it as a run."""
    with st.expander("Import a certification log (reference code's tab-separated format)", expanded=expanded):
        st.caption("Header `idx label predict radius correct time`, one line per point (time in seconds or h:mm:ss).")
        up = st.file_uploader("log file", type=["tsv", "txt", "log", "out"], key="upload")
        c1, c2, c3 = st.columns(3)
        name = c1.text_input("run name", value=Path(up.name).stem if up else "imported",
                             key=f"import_name@{up.name if up else ''}")
        names = data.dataset_names()
        dataset = c2.selectbox("dataset", names, index=names.index(data.DEFAULT_DATASET), key="import_dataset")
        sigma = c3.text_input("σ (number or spec, optional)", value="", key="import_sigma")
        d1, d2 = st.columns(2)
        n = d1.number_input("n used (optional, for the ceiling)", 0, 10**9, 0, key="import_n")
        alpha = d2.number_input("α used (optional)", 0.0, 0.5, 0.0, format="%.6f", key="import_alpha")
        if st.button("Import", disabled=up is None, key="import_button"):
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / Path(up.name).name
                path.write_bytes(up.getvalue())
                try:
                    run_id = import_cohen_log(get_store(), path, name, dataset, sigma.strip() or None,
                                              n=int(n) or None, alpha=float(alpha) or None)
                except SmoothvizError as exc:
                    show_error(exc)
                    return
            st.success(f"Imported as run #{run_id}.")
            set_query(runs=",".join(str(i) for i in [*query_ints("runs"), run_id]))
            st.rerun()


st.title("Compare runs")
store = get_store()
with stop_on_error():
    runs = store.runs()
if runs.empty:
    st.info("The store has no runs yet. Certify some points on the **Certify** page "
            "(or `python -m smoothviz certify ...` in a shell), or import a log below.")
    st.page_link(PAGES["certify"], label="Go to Certify →")
    import_section(expanded=True)
    st.stop()

rows = {int(r["id"]): r for r in runs.to_dict("records")}
wanted = [i for i in query_ints("runs") if i in rows] or list(rows)[:2]
chosen = st.multiselect(
    "Runs", list(rows), default=wanted, key="runs_pick",
    format_func=lambda i: f"{run_label(rows[i])} · {rows[i]['dataset']} · {short_spec(rows[i]['sigma_spec'])} · "
                          f"{rows[i]['status']} ({rows[i]['done']}/{rows[i]['total']})",
)
set_query(runs=",".join(map(str, chosen)) or None)
if not chosen:
    st.info("Pick one or more runs.")
    import_section(expanded=False)
    st.stop()

db = str(store.path)
data_by_label: dict[str, tuple[dict, pd.DataFrame]] = {}
for run_id in chosen:
    row = rows[run_id]
    run, results = run_and_results(db, run_id, (row["done"], row["status"], row["updated"]))
    data_by_label[run_label(run)] = (run, results)
empty = [label for label, (_, res) in data_by_label.items() if res.empty]
if empty:
    st.warning(f"No results yet in {', '.join(empty)}.")
data_by_label = {k: v for k, v in data_by_label.items() if not v[1].empty}
if not data_by_label:
    st.stop()

tabs = st.tabs(["Certified accuracy", "Radius distribution", "Sound vs naive", "Per class", "σ(x) vs radius",
                "Table & downloads"])

with tabs[0]:
    curves = {k: analysis.accuracy_curve(res) for k, (_, res) in data_by_label.items()}
    ceilings = {k: analysis.run_ceiling(run) for k, (run, _) in data_by_label.items()}
    st.plotly_chart(plots.waterfall_figure(curves, ceilings), key="fig_waterfall")
    st.caption("Dashed: each run's ceiling σ·Φ⁻¹(α^{1/n}) — no point can be certified beyond it, even when "
               "all n samples agree (the waterfall).")

with tabs[1]:
    certified = {k: res.loc[res["correct"], "radius"].to_numpy(float) for k, (_, res) in data_by_label.items()}
    how = st.radio("show", ["histogram", "ECDF"], horizontal=True, key="dist_kind")
    fig = plots.radius_histogram_figure(certified) if how == "histogram" else plots.radius_ecdf_figure(certified)
    st.plotly_chart(fig, key="fig_radius_dist")
    st.caption("Radii of correctly classified points (wrong and abstained points have no certificate).")

with tabs[2]:
    dependent = {k: (res["naive_radius"].to_numpy(float), res["radius"].to_numpy(float))
                 for k, (run, res) in data_by_label.items() if (run.get("r") or 0) > 0}
    if dependent:
        st.plotly_chart(plots.sound_vs_naive_scatter(dependent), key="fig_sound_naive")
        curves_n = {}
        for k, (run, res) in data_by_label.items():
            if k in dependent:
                curves_n[f"{k} (sound)"] = analysis.accuracy_curve(res)
                curves_n[f"{k} (naive, not a guarantee)"] = analysis.accuracy_curve(res, use="naive_radius")
        st.plotly_chart(plots.waterfall_figure(curves_n), key="fig_sound_naive_curves")
    else:
        st.info("None of the chosen runs uses an input-dependent σ (r > 0); for constant σ the naive and "
                "sound radii coincide.")

with tabs[3]:
    top = max((c for c in ceilings.values() if np.isfinite(c)), default=1.0)
    radius = float(st.slider("radius (L2, pixel units)", 0.0, float(max(top, 0.05)), min(0.25, float(top)), 0.01,
                             key="class_radius"))
    per_class, gaps = {}, []
    for k, (run, res) in data_by_label.items():
        pc = analysis.per_class_accuracy(res, radius, class_names(run["dataset"]) if run.get("dataset") else None)
        per_class[k] = pc
        g = analysis.fairness_gaps(pc)
        gaps.append({"run": k, "max − min": g["max_minus_min"], "std over classes": g["std"]})
    st.plotly_chart(plots.per_class_figure(per_class, radius), key="fig_per_class")
    st.dataframe(pd.DataFrame(gaps), hide_index=True,
                 column_config={c: st.column_config.NumberColumn(format="%.3f")
                                for c in ("max − min", "std over classes")})

with tabs[4]:
    with_sigma = {k: (res["sigma"].to_numpy(float), res["radius"].to_numpy(float))
                  for k, (_, res) in data_by_label.items() if res["sigma"].notna().any()}
    if with_sigma:
        st.plotly_chart(plots.sigma_vs_radius_figure(with_sigma), key="fig_sigma_radius")
    else:
        st.info("The chosen runs record no per-point σ (imported logs without σ).")

with tabs[5]:
    table_rows = []
    for k, (run, res) in data_by_label.items():
        s = analysis.summary(res)
        row = {"run": k, "dataset": run.get("dataset"), "sigma": run.get("sigma_spec"), "r": run.get("r"),
               "n": run.get("n"), "alpha": run.get("alpha"), "points": s["points"], "accuracy": s["accuracy"],
               "abstention": s["abstention_rate"], "ACR": s["average_certified_radius"]}
        row.update({f"R={r:g}": acc for r, acc in s["table"].items()})
        table_rows.append(row)
    table = pd.DataFrame(table_rows)
    st.dataframe(table, hide_index=True,
                 column_config={c: st.column_config.NumberColumn(format="%.3f") for c in table.columns
                                if c.startswith("R=") or c in ("accuracy", "abstention", "ACR")})
    st.download_button("Download table (CSV)", table.to_csv(index=False), "certified_accuracy.csv", "text/csv",
                       on_click="ignore", key="dl_table")
    pick = st.selectbox("per-point results of", chosen, format_func=lambda i: run_label(rows[i]), key="dl_run")
    buf = io.StringIO()
    export_csv(store, int(pick), buf)
    st.download_button("Download per-point results (CSV)", buf.getvalue(), f"run{int(pick)}_results.csv",
                       "text/csv", on_click="ignore", key="dl_points")

import_section(expanded=False)
