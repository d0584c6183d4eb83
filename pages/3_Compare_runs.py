"""Compare runs: certified-accuracy curves, radius distributions, fairness, tables, CSV, log import."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from pages._ui import (
    ACTIVE, ERROR_ICON, PAGES, WARNING_ICON, class_names, entered_page, get_store, offer_examples, one_line,
    run_and_results, run_label, set_query, setup_page, short_spec, shown, stop_on_error,
)
from smoothviz import analysis, data, plots, plots_tradeoffs, tradeoffs
from smoothviz.audit import audit_warning
from smoothviz.errors import SmoothvizError
from smoothviz.store import export_csv, import_cohen_log

setup_page("Compare runs", ":material/compare_arrows:")

MAX_NOTED = 5  # unknown run ids named in a note; the rest are counted


def upload_key() -> str:
    """The uploader's key; a successful import moves to a new key, which empties the uploader."""
    generation = st.session_state.get("upload_generation", 0)
    return "upload" if generation == 0 else f"upload{generation}"


def import_log(up_key: str, name_key: str) -> None:
    """Import the uploaded log (a button callback, so the new run can be selected before the picker is drawn)."""
    up = st.session_state.get(up_key)
    if up is None:
        st.session_state.import_outcome = ("error", "Choose a log file to import first.")
        return
    name = str(st.session_state.get(name_key) or "").strip() or Path(up.name).stem
    dataset = st.session_state.import_dataset
    sigma = str(st.session_state.import_sigma or "").strip() or None
    n, alpha = st.session_state.import_n, st.session_state.import_alpha
    store = get_store()
    try:  # the store checks everything (name, σ, n, α, every line; the same file twice) and names the problem
        run_id = import_cohen_log(store, up.getvalue(), name, dataset, sigma, n=None if n is None else int(n),
                                  alpha=None if alpha is None else float(alpha),
                                  num_classes=data.DATASET_INFO[dataset].num_classes, source_name=up.name)
    except SmoothvizError as exc:
        st.session_state.import_outcome = ("error", one_line(str(exc)))
        return
    points = store.run(run_id)["done"]
    st.session_state.import_outcome = (
        "success", f"Imported {up.name} as run #{run_id} “{name}” with {plots.plural(points, 'point')}; "
                   "it is selected below.")
    picked = [i for i in st.session_state.get("runs_pick", []) if i != run_id]
    st.session_state.runs_pick = [*picked, run_id]
    st.session_state.upload_generation = st.session_state.get("upload_generation", 0) + 1


def import_section(expanded: bool) -> None:
    """Upload a tab-separated log of the reference smoothing code and store it as a run (open after an import,
    so the emptied uploader and the next file are in view)."""
    expanded = expanded or "import_outcome" in st.session_state
    with st.expander("Import a certification log (reference code's tab-separated format)", expanded=expanded,
                     icon=":material/upload_file:"):
        st.caption("Header `idx label predict radius correct time`, one line per point (time in seconds or h:mm:ss).")
        key = upload_key()
        up = st.file_uploader("log file", type=["tsv", "txt", "log", "out"], key=key)
        c1, c2, c3 = st.columns(3)
        name_key = f"import_name@{key}@{up.name if up else ''}"
        c1.text_input("run name", value=Path(up.name).stem if up else "imported", key=name_key)
        names = data.dataset_names()
        c2.selectbox("dataset", names, index=names.index(data.DEFAULT_DATASET), key="import_dataset")
        c3.text_input("σ (number or spec, optional)", value="", key="import_sigma")
        d1, d2 = st.columns(2)
        # no bounds on these inputs: the browser would keep an out-of-range entry without sending it,
        # so the import checks them and says what is wrong
        d1.number_input("n used (optional, for the ceiling)", value=None, step=1, placeholder="unknown",
                        key="import_n")
        d2.number_input("α used (optional)", value=None, step=0.001, format="%.6f", placeholder="unknown",
                        key="import_alpha")
        st.button("Import", disabled=up is None, key="import_button", on_click=import_log, args=(key, name_key),
                  icon=":material/upload:")


def show_import_outcome() -> None:
    """The last import's result, kept until the next import: a success names the run and its points."""
    outcome = st.session_state.get("import_outcome")
    if outcome is None:
        return
    kind, text = outcome
    if kind == "success":
        st.success(text, icon=":material/check_circle:")
    else:
        st.error(text, icon=ERROR_ICON)


def parse_run_ids(text: str) -> tuple[list[int], list[str]]:
    """Run ids from the URL's comma-separated ``runs`` (first occurrence kept) and the items that are not ids."""
    ids: list[int] = []
    bad: list[str] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if item.isdigit() and len(item) <= 18:
            if int(item) not in ids:
                ids.append(int(item))
        else:
            bad.append(item)
    return ids, bad


def named(items: list) -> str:
    """At most MAX_NOTED items for a note (ids as #id, text quoted and cut short), the rest counted."""
    text = ", ".join(f"#{i}" if isinstance(i, int) else shown(i) for i in items[:MAX_NOTED])
    return text + (f" and {len(items) - MAX_NOTED} more" if len(items) > MAX_NOTED else "")


def initial_selection(rows: dict[int, dict]) -> list[int]:
    """The selection a fresh visit starts with: the URL's runs (with a note for the ones that are not
    there), else the two newest runs that have results (an empty or pending run shows nothing)."""
    with_results = [i for i, r in rows.items() if r["done"] > 0]
    raw = st.query_params.get("runs")
    if raw is None:
        return with_results[:2]
    ids, bad = parse_run_ids(str(raw))
    if bad:
        st.warning(f"Ignored {len(bad)} item{'s' if len(bad) != 1 else ''} of the link's runs that "
                   f"{'are not run ids' if len(bad) != 1 else 'is not a run id'}: {named(bad)}.",
                   icon=WARNING_ICON)
    missing = [i for i in ids if i not in rows]
    if missing:
        st.warning(f"Not in the store (deleted, or from another store): run {named(missing)}.",
                   icon=WARNING_ICON)
    return [i for i in ids if i in rows]


st.title("Compare runs")
show_import_outcome()
store = get_store()
with stop_on_error():
    runs = store.runs()
if runs.empty:
    st.info("The store has no runs yet. Certify some points on the **Certify** page "
            "(or `python -m smoothviz certify ...` in a shell), load the example runs, or import a log below.")
    offer_examples("compare_examples")
    st.page_link(PAGES["certify"], label="Go to Certify", icon=":material/arrow_forward:")
    import_section(expanded=True)
    st.stop()

rows = {int(r["id"]): r for r in runs.to_dict("records")}
if entered_page() or "runs_pick" not in st.session_state:  # the link's runs apply on every entry
    st.session_state.runs_pick = initial_selection(rows)
else:
    gone = [i for i in st.session_state.runs_pick if i not in rows]
    if gone:
        st.warning(f"No longer in the store (deleted): run {named(gone)}.", icon=":material/delete:")
        st.session_state.runs_pick = [i for i in st.session_state.runs_pick if i in rows]
chosen = st.multiselect(
    "Runs", list(rows), key="runs_pick",
    format_func=lambda i: f"{run_label(rows[i])} · {rows[i]['dataset']} · {short_spec(rows[i]['sigma_spec'])} · "
                          f"{rows[i]['status']} ({rows[i]['done']}/{plots.plural(int(rows[i]['total']), 'point')})",
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
    try:
        run, results = run_and_results(db, run_id, (row["done"], row["status"], row["updated"]))
    except SmoothvizError:
        st.warning(f"Run #{run_id} was deleted while this page was open.", icon=":material/delete:")
        continue
    label = run_label(run)
    if run["done"] < run["total"]:
        label += f" ({run['status']}, {run['done']}/{run['total']})"
        if run["status"] in ACTIVE:
            st.info(f"Run {run_label(run)} is {run['status']}: {plots.plural(run['done'], 'point')} of "
                    f"{run['total']:,} so far. Its curves show these partial results; rerun the page for more.",
                    icon=":material/hourglass_top:")
        elif run["done"]:
            st.caption(f"Run {run_label(run)} stopped ({run['status']}) after {run['done']:,} of "
                       f"{plots.plural(run['total'], 'point')}: its curves are partial.")
    data_by_label[label] = (run, results)
empty = [label for label, (_, res) in data_by_label.items() if res.empty]
if empty:
    st.warning(f"No results yet in {', '.join(empty)}.", icon=":material/hourglass_empty:")
data_by_label = {k: v for k, v in data_by_label.items() if not v[1].empty}
if not data_by_label:
    import_section(expanded=False)
    st.stop()

for label, (run, _) in data_by_label.items():  # an audit above the r the certificates assume disproves them
    warning = audit_warning(run)
    if warning:
        st.warning(f"Run {label}: {warning}.", icon=WARNING_ICON)

tabs = st.tabs(["Certified accuracy", "Radius distribution", "Sound vs naive", "Per class", "σ(x) vs radius",
                "Table & downloads"])

bars = st.toggle("error bars", value=True, key="cmp_bars",
                 help="95% Clopper–Pearson interval over each run's test points, at each radius (pointwise), on the "
                      "curves and in the table; the Trade-offs page has other levels, the bootstrap and paired "
                      "differences.")

with tabs[0]:
    curves = {k: analysis.accuracy_curve(res) for k, (_, res) in data_by_label.items()}
    ceilings = {k: analysis.run_ceiling(run) for k, (run, _) in data_by_label.items()}
    if bars:
        reach = [c for c in ceilings.values() if np.isfinite(c)] + [float(df["radius"].max()) for df in curves.values()]
        grid = np.linspace(0.0, max([*reach, 0.05]), 61)
        bands = {k: tradeoffs.accuracy_intervals(res, grid) for k, (_, res) in data_by_label.items()}
        st.plotly_chart(plots_tradeoffs.accuracy_band_figure(curves, bands, ceilings, "95% Clopper–Pearson",
                                                             "Certified accuracy vs radius"), key="fig_waterfall")
    else:
        st.plotly_chart(plots.waterfall_figure(curves, ceilings), key="fig_waterfall")
    st.caption("Dashed: each run's ceiling σ·Φ⁻¹(α^{1/n}) — no point can be certified beyond it, even when "
               "all n samples agree (the waterfall)."
               + (" Shaded: a 95% Clopper–Pearson interval over the run's test points at each radius (pointwise: "
                  "each radius on its own)." if bars else ""))

with tabs[1]:
    certified = {k: res.loc[res["correct"], "radius"].to_numpy(float) for k, (_, res) in data_by_label.items()}
    how = st.radio("show", ["histogram", "ECDF"], horizontal=True, key="dist_kind")
    fig = plots.radius_histogram_figure(certified) if how == "histogram" else plots.radius_ecdf_figure(certified)
    st.plotly_chart(fig, key="fig_radius_dist")
    st.caption("Radii of correctly classified points (wrong and abstained points have no certificate).")

with tabs[2]:
    dependent = {k: (res["naive_radius"].to_numpy(float), res["radius"].to_numpy(float))
                 for k, (run, res) in data_by_label.items() if analysis.input_dependent(run)}
    if dependent:
        st.plotly_chart(plots.sound_vs_naive_scatter(dependent), key="fig_sound_naive")
        curves_n = {}
        for k, (run, res) in data_by_label.items():
            if k in dependent:
                sound = f"{k} ({analysis.NAIVE_ONLY}: sound radius 0)" if analysis.naive_only(run) else f"{k} (sound)"
                curves_n[sound] = analysis.accuracy_curve(res)
                curves_n[f"{k} (naive, not a guarantee)"] = analysis.accuracy_curve(res, use="naive_radius")
        st.plotly_chart(plots.waterfall_figure(curves_n), key="fig_sound_naive_curves")
        runs_dependent = {k: run for k, (run, _) in data_by_label.items() if k in dependent}
        picked = st.selectbox("Counterexamples for", list(runs_dependent), key="cx_compare_run",
                              help="Real inputs near each certified point that refute its naive certificate, with "
                                   "the worst-case base classifier that does it.")
        st.page_link(PAGES["counterexamples"], label=f"Counterexamples to the naive certificates of {picked}",
                     icon=":material/gpp_bad:", query_params={"run": str(int(runs_dependent[picked]["id"]))})
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
    st.caption("Above each bar: certified / points of that class. A hatched outline marks a class the run "
               "has no points of; a class with points but none certified has a zero bar labelled 0/…")
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
    entries = [(k, run, res) for k, (run, res) in data_by_label.items()]
    table = analysis.compare_table(entries, spec_label=short_spec)
    full_specs = "; ".join(f"{k}: {run.get('sigma_spec') or 'unknown'}" for k, run, _ in entries)
    number = st.column_config.NumberColumn(format="%.3f")
    config = {c: number for c in table.columns if c.startswith("R=") or c in ("accuracy", "abstention", "ACR")}
    config.update({c: st.column_config.NumberColumn(c, format="%.3f",
                                                    help="Plugs σ(x) into Cohen's formula: NOT a guarantee "
                                                         "for an input-dependent σ (shown for comparison only)")
                   for c in table.columns if c.endswith("naive (no guarantee)")})
    config["σ"] = st.column_config.TextColumn("σ", help=f"Full σ specs: {full_specs}")
    download = table.assign(**{"σ": [r.get("sigma_spec") for _, r, _ in entries]})
    if bars:
        ends = tradeoffs.interval_columns({k: res for k, _, res in entries}, analysis.DEFAULT_RADII)
        for r in reversed(analysis.DEFAULT_RADII):
            low, high = ends[f"R={r:g} low"].to_numpy(), ends[f"R={r:g} high"].to_numpy()
            table.insert(table.columns.get_loc(f"R={r:g}") + 1, f"R={r:g} 95% CI",
                         [f"[{a:.3f}, {b:.3f}]" for a, b in zip(low, high)])
            at = download.columns.get_loc(f"R={r:g}") + 1
            download.insert(at, f"R={r:g} high", high)
            download.insert(at, f"R={r:g} low", low)
    st.dataframe(table, hide_index=True, column_config=config)
    st.download_button("Download table (CSV)", download.to_csv(index=False), "certified_accuracy.csv", "text/csv",
                       on_click="ignore", key="dl_table", icon=":material/download:")
    pick = st.selectbox("per-point results of", [run["id"] for _, run, _ in entries],
                        format_func=lambda i: run_label(rows[i]), key="dl_run")
    buf = io.StringIO()
    with stop_on_error():
        export_csv(store, int(pick), buf)
    st.download_button("Download per-point results (CSV)", buf.getvalue(), f"run{int(pick)}_results.csv",
                       "text/csv", on_click="ignore", key="dl_points", icon=":material/download:")

import_section(expanded=False)
