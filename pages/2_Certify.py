"""Certify: pick data, checkpoint and sigma function; the run executes as a background job."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import streamlit as st
import torch

from pages._ui import (
    PAGES, ROOT, db_path, display_path, engine_batch_size, get_store, job_manager, list_checkpoints,
    load_dataset, load_sigma, query_int, run_label, set_query, setup_page, short_spec, show_error,
    stop_on_error,
)
from smoothviz import analysis, data, plots
from smoothviz.points import evenly_spaced, parse_indices
from smoothviz.progress import format_seconds
from smoothviz.errors import SmoothvizError
from smoothviz.jobs import RUNNING, certify_job_id
from smoothviz.sigma import canonical_spec, parse_sigma_spec

setup_page("Certify", "✅")
ACTIVE = ("pending", "running")


@st.cache_data(max_entries=16, show_spinner="Computing σ(x) on the chosen points…")
def sigma_on_points(dataset: str, spec: str, indices: tuple[int, ...]) -> np.ndarray:
    sigma_fn = load_sigma(dataset, spec)
    return sigma_fn(load_dataset(dataset).test_x[list(indices)]).detach().cpu().numpy().astype(float)


def results_figure(run: dict, results) -> object:
    label = run_label(run)
    curve = analysis.accuracy_curve(results)
    return plots.waterfall_figure({label: curve}, {label: analysis.run_ceiling(run)})


def start_job(run_id: int) -> None:
    job_manager().start_certify(run_id, db_path(), cwd=ROOT)


@st.fragment(run_every="1s")
def live_progress(run_id: int) -> None:
    """Progress, rate, ETA, partial curve and Cancel; hands over to the full page when the run ends."""
    store = get_store()
    prog = store.progress(run_id)
    job = job_manager().get(certify_job_id(run_id))
    if prog["status"] not in ACTIVE:
        st.rerun(scope="app")
    if job is not None and job.status != RUNNING:
        # The process has ended; a status still active means it died before recording one.
        if store.run(run_id)["status"] in ACTIVE:
            tail = job_manager().log_tail(job.id, 2000).strip().splitlines()
            if job.cancel_requested:
                store.set_status(run_id, "cancelled", "stopped before it started")
            else:
                store.set_status(run_id, "failed", tail[-1] if tail else f"process exited with code {job.returncode}")
        st.rerun(scope="app")
    done, total = int(prog["done"]), max(int(prog["total"]), 1)
    rate = prog.get("rate_per_s")
    text = f"{done}/{total} points · " + (f"{rate:.2f} points/s · ETA {format_seconds(prog.get('eta_s'))}"
                                          if rate else "starting…")
    st.progress(min(done / total, 1.0), text=text)
    if job is not None:
        lines = [ln.strip() for ln in re.split(r"[\r\n]+", job_manager().log_tail(job.id, 600)) if ln.strip()]
        if lines and lines[-1].startswith("["):
            st.caption(f"engine: `{lines[-1]}`")
    if job is None and prog["status"] == "pending":
        st.info("This run is recorded but no process is executing it.")
        if st.button("Start it", key=f"start{run_id}"):
            start_job(run_id)
    if st.button("Cancel", key=f"cancel{run_id}", help="Stops after the current batch; finished points stay."):
        stopped = job is not None and job_manager().cancel(job.id)
        if not stopped and prog["status"] == "pending":  # nothing executes it: cancel the record itself
            store.set_status(run_id, "cancelled", "cancelled before it started")
        elif not stopped:  # executed by a process this dashboard did not start (e.g. the CLI): ask it to stop
            store.request_cancel(run_id)
        st.toast("Cancelling…")
    results = store.results(run_id)
    if len(results):
        st.plotly_chart(results_figure(store.run(run_id), results), key=f"live{run_id}")


def run_panel(run_id: int) -> None:
    """The run named in the URL: live progress while it runs, results once it has ended."""
    store = get_store()
    try:
        run = store.run(run_id)
    except SmoothvizError as exc:
        show_error(exc)
        return
    st.subheader(f"Run {run_label(run)}")
    st.caption(f"{run['dataset']} · {run['sigma_spec']} · n0 = {run['n0']}, n = {run['n']}, "
               f"α = {run['alpha']} · checkpoint `{run['checkpoint']}`")
    status = run["status"]
    if status in ACTIVE:
        live_progress(run_id)
        return
    results = store.results(run_id)
    if status == "done":
        st.success(f"Done: {len(results)} points certified.")
    elif status == "failed":
        st.error(f"The run failed: {run.get('message') or 'see the job log'}")
    else:
        st.warning(f"The run is {status} after {len(results)} of {run['total']} points.")
    if status != "done" and st.button("Resume", key=f"resume{run_id}", help="Certifies the remaining points."):
        start_job(run_id)
        st.rerun()
    if len(results):
        summary = analysis.summary(results)
        c = st.columns(4)
        c[0].metric("points", summary["points"])
        c[1].metric("clean accuracy (smoothed)", f"{summary['accuracy']:.3f}")
        c[2].metric("average certified radius", f"{summary['average_certified_radius']:.3f}")
        c[3].metric("abstentions", f"{summary['abstention_rate']:.1%}")
        st.plotly_chart(results_figure(run, results), key=f"final{run_id}")
    st.page_link(PAGES["compare"], label="Compare this run with others →", query_params={"runs": str(run_id)})
    if job_manager().get(certify_job_id(run_id)) is not None:
        with st.expander("Job log"):
            st.code(job_manager().log_tail(certify_job_id(run_id)) or "(empty)")


st.title("Certify test points")
current_run = query_int("run")
if current_run is not None:
    run_panel(current_run)
    if st.button("New certification", key="new_run"):
        set_query(run=None)
        st.rerun()
    st.divider()

st.subheader("New certification" if current_run is not None else "Configuration")
names = data.dataset_names()
c1, c2 = st.columns(2)
dataset = c1.selectbox("Dataset", names, index=names.index(data.DEFAULT_DATASET), key="dataset",
                       bind="query-params")
if dataset in data.DATASET_INFO:
    c1.caption(data.DATASET_INFO[dataset].description)
with stop_on_error():
    ds = load_dataset(dataset)

ckpts = list_checkpoints(dataset)
if not ckpts:
    st.warning(f"No checkpoint trained on **{dataset}** under assets/ or runs/checkpoints/. Train one on the "
               f"Train page or with `python -m smoothviz train --dataset {dataset} ...`.")
    st.stop()
metas = {display_path(p): m for p, m in ckpts}
ckpt = c2.selectbox("Checkpoint", list(metas), key="ckpt", bind="query-params")
meta = metas[ckpt]
acc = meta.get("clean_accuracy")
c2.caption(f"arch {meta.get('arch')} · trained with σ = `{meta.get('sigma')}`"
           + (f" · clean accuracy {acc:.3f}" if isinstance(acc, (int, float)) else ""))

# Sigma widgets are keyed by checkpoint, so choosing another checkpoint starts from its metadata;
# a shared link (first visit) starts from the URL's spec instead.
first_visit = "_certify_seen" not in st.session_state
st.session_state["_certify_seen"] = True
default = None
for candidate in ((st.query_params.get("sigma") if first_visit else None), meta.get("sigma"), "constant:0.25"):
    try:
        default = parse_sigma_spec(candidate) if candidate else None
    except SmoothvizError:
        default = None
    if default:
        break
sk = f"@{ckpt}"
st.markdown("**σ function**")
s1, s2, s3, s4 = st.columns(4)
kind = s1.radio("kind", ["constant", "knn"], index=0 if default["kind"] == "constant" else 1, key="kind" + sk,
                horizontal=True, help="knn: σ(x) = σ_b·exp(r·(mean distance to the k nearest training points − m)).")
if kind == "constant":
    sig = s2.number_input("σ (pixel units)", 0.001, 10.0, float(default.get("sigma") or default.get("sigma_b")),
                          0.01, format="%.4f", key="sigma" + sk)
    params = {"kind": "constant", "sigma": float(sig)}
else:
    sigma_b = s2.number_input("σ_b (base σ)", 0.001, 10.0, float(default.get("sigma_b") or default.get("sigma")),
                              0.01, format="%.4f", key="sigma_b" + sk)
    r_val = s3.number_input("r (semi-elasticity)", 0.0, 100.0, float(default.get("r") or 0.0), 0.005,
                            format="%.4f", key="r" + sk)
    k_val = s4.number_input("k (neighbours)", 1, 1000, int(default.get("k") or 20), 1, key="k" + sk)
    o1, o2, o3 = st.columns(3)
    m_set = o1.checkbox("fix m", value=default.get("m") is not None, key="mset" + sk,
                        help="Off: m = mean kNN distance over the training set.")
    m_val = o1.number_input("m", -100.0, 100.0, float(default.get("m") or 0.0), 0.1, format="%.4f",
                            key="m" + sk, disabled=not m_set)
    clip = o2.checkbox("clip σ", value=default.get("sigma_min") is not None or default.get("sigma_max") is not None,
                       key="clip" + sk)
    lo = o2.number_input("min σ", 0.0001, 10.0, float(default.get("sigma_min") or 0.05), 0.01, format="%.4f",
                         key="smin" + sk, disabled=not clip)
    hi = o3.number_input("max σ", 0.0001, 10.0, float(default.get("sigma_max") or 1.0), 0.01, format="%.4f",
                         key="smax" + sk, disabled=not clip)
    params = {"kind": "knn", "sigma_b": float(sigma_b), "r": float(r_val), "k": int(k_val),
              "m": float(m_val) if m_set else None,
              "sigma_min": float(lo) if clip else None, "sigma_max": float(hi) if clip else None}
errors: list[str] = []
spec = canonical_spec(params)
try:
    parse_sigma_spec(spec)
except SmoothvizError as exc:
    errors.append(str(exc))
r_semi = float(params.get("r") or 0.0)
st.caption(f"spec `{spec}` · semi-elasticity r = {r_semi:g}"
           + (" (constant σ: Cohen's certificate)" if kind == "constant" else
              " (sound input-dependent certificate; the naive radius is stored for comparison)"))

st.markdown("**Monte Carlo and points**")
p1, p2, p3, p4 = st.columns(4)
n0 = int(p1.number_input("n0 (selection samples)", 1, 10_000_000, 100, 10, key="n0", bind="query-params"))
n = int(p2.number_input("n (estimation samples)", 1, 100_000_000, 1000, 100, key="n", bind="query-params"))
alpha = float(p3.number_input("α (failure probability)", 1e-9, 0.5, 0.001, 0.001, format="%.6f", key="alpha",
                              bind="query-params"))
seed = int(p4.number_input("seed", 0, 2**31 - 1, 0, 1, key="seed", bind="query-params"))
q1, q2, q3, q4 = st.columns(4)
n_test = int(ds.test_x.shape[0])
points = int(q1.number_input(f"points (of {n_test} test points, evenly spaced)", 1, n_test, min(20, n_test), 1,
                             key="points", bind="query-params"))
index_text = q2.text_input("or indices (e.g. 0-9,15,20)", "", key="indices", bind="query-params")
devices = ["auto", "cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
device = q3.selectbox("device", devices, key="device", bind="query-params")
engine_batch = engine_batch_size(ckpt, device)
batch_size = int(q4.number_input("batch size (noisy samples per forward pass)", 1, 1_000_000, engine_batch, 256,
                                 key=f"batch@{ckpt}|{device}", help=f"never changes the counts; the engine's default here is {engine_batch}"))
try:
    trained_with = parse_sigma_spec(meta.get("sigma") or "")
except SmoothvizError:
    trained_with = None
stem = Path(ckpt).stem
name = st.text_input("run name", stem if params == trained_with else f"{stem} {short_spec(spec)}",
                     key=f"name@{ckpt}|{spec}")

if n0 > n:
    errors.append(f"n0 = {n0} must not exceed n = {n} (n0 samples only pick the class; n estimate its probability).")
try:
    indices = parse_indices(index_text, n_test) if index_text.strip() else evenly_spaced(points, n_test)
except SmoothvizError as exc:
    errors.append(str(exc))
    indices = []
set_query(sigma=spec)

for e in errors:
    st.error(e, icon="⚠️")
if indices and not errors:
    try:
        sig_values = sigma_on_points(dataset, spec, tuple(indices))
    except SmoothvizError as exc:
        show_error(exc)
    else:
        st.plotly_chart(plots.sigma_histogram_figure(sig_values), key="sigma_hist")
        st.caption(f"{len(indices)} points · σ(x) from {sig_values.min():.4f} to {sig_values.max():.4f} · "
                   f"ceiling σ_maxΦ⁻¹(α^(1/n)) = "
                   f"{analysis.run_ceiling({'sigma_max': float(sig_values.max()), 'n': n, 'alpha': alpha}):.3f}")

busy = [j for j in job_manager().jobs("certify") if j.status == RUNNING]
if busy:
    st.caption(f"{len(busy)} certification job(s) already running "
               f"({', '.join(f'run #{j.run_id}' for j in busy)}); a new one shares the CPU/GPU with them.")
if st.button("Run certification", type="primary", disabled=bool(errors) or not indices, key="run_button"):
    try:
        run_id = get_store().create_run(
            name, dataset, "test", ckpt, spec, params, r_semi, n0, n, alpha, device, indices, seed, batch_size,
        )
        start_job(run_id)
    except SmoothvizError as exc:
        show_error(exc)
    else:
        st.query_params["run"] = str(run_id)
        st.rerun()
