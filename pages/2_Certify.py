"""Certify: pick data, model and sigma function; the run executes as a background job.

The model is a smoothviz checkpoint from the checkpoint folders, or a model file (a checkpoint of
the reference code of Cohen et al., SmoothAdv or MACER, or torchvision:NAME with a weights file),
typed as a path or uploaded, loaded weights-only; the data a registered dataset or the user's
files (imagefolder:PATH, npz:FILE). The page runs no code from any file: TorchScript and export
archives and the user's own model code are certified with the command line.

Every value the page reads from the link (or a checkpoint's σ) is checked against the ranges the
library accepts before it reaches a widget: a value outside them is named in one error line, the
widget shows what is used instead, and Run stays disabled until that value is changed (or the
shown values are accepted). The numeric widgets have no range of their own, so a typed value
never bounces silently back: it is checked here and refused in one line.
"""

from __future__ import annotations

import math
import uuid
from pathlib import Path

import numpy as np
import streamlit as st
import torch

from pages._ui import (
    ACTIVE, ERROR_ICON, PAGES, ROOT, WARNING_ICON, absolute, db_path, display_path, engine_batch_size, entered_page,
    executing_runs, foreign_batch_size, foreign_model, foreign_rate, get_store, job_manager, list_checkpoints,
    load_dataset, load_reference, load_sigma, model_misfit, one_line, run_label, save_upload, set_query, setup_page,
    short_spec, show_error, shown, stop_on_error, unusable_checkpoints,
)
from pages._ui.numbers import check_number
from pages._ui.sequential_section import (
    alpha_text, default_processes, done_sequential, estimate_text, live_sequential, processes_input,
    processes_limit, reach_warning, rule_text, sequential_inputs, world_text,
)
from pages._ui.sweep_section import sweep_form, sweep_panel
from smoothviz import analysis, cost, data, plots
from smoothviz.errors import SmoothvizError
from smoothviz.jobs import RUNNING, certify_job_id, live_progress
from smoothviz.plots import plural
from smoothviz.points import evenly_spaced, parse_indices
from smoothviz.ddrs import MAX_NUM_SIGMAS, MAX_SAMPLES
from smoothviz.sigma import (
    M_MAX, R_MAX, SIGMA_MAX, SIGMA_MIN, canonical_spec, check_sigma_values, parse_sigma_spec, semi_elasticity,
    span_warning,
)
from smoothviz.store import check_run_name

setup_page("Certify", ":material/verified:")
INT_MAX = 2**53 - 1  # the largest integer a browser's number field holds exactly
DATA_MODES = ("a registered dataset", "your files")
MODEL_MODES = ("a smoothviz checkpoint", "a model file")
FALLBACK_SPEC = "constant:0.25"
LINK_ERRORS = "_certify_link_errors"  # key -> [message, the value shown instead (None until drawn)]


# ---------------------------------------------------------------- values from the link
def link_int(key: str, low: int, high: int) -> int | None:
    """The link's integer ``key`` when it is one in [low, high]; otherwise None, with the refusal
    recorded (absent keys are not an error)."""
    raw = st.query_params.get(key)
    if raw is None:
        return None
    try:
        value = int(str(raw).strip())
    except ValueError:
        refuse(key, f"the link's {key} = {shown(raw)} was not applied: not an integer")
        return None
    if not low <= value <= high:
        refuse(key, f"the link's {key} = {value} was not applied: outside [{low:,}, {high:,}]")
        return None
    return value


def link_float(key: str, low: float, high: float, open_ends: bool = False) -> float | None:
    """The link's number ``key`` when finite and in [low, high] (or (low, high)); else None, refused."""
    raw = st.query_params.get(key)
    if raw is None:
        return None
    try:
        value = float(str(raw).strip())
    except ValueError:
        refuse(key, f"the link's {key} = {shown(raw)} was not applied: not a number")
        return None
    inside = (low < value < high) if open_ends else (low <= value <= high)
    if not math.isfinite(value) or not inside:
        where = f"({low:g}, {high:g})" if open_ends else f"[{low:g}, {high:g}]"
        refuse(key, f"the link's {key} = {shown(raw)} was not applied: outside {where}")
        return None
    return value


def link_choice(key: str, options: list[str]) -> str | None:
    """The link's ``key`` when it is one of ``options`` (never a path outside them); else None, refused."""
    raw = st.query_params.get(key)
    if raw is None:
        return None
    if raw in options:
        return raw
    refuse(key, f"the link's {key} = {shown(raw)} was not applied: not one of the {len(options)} choices here")
    return None


def refuse(key: str, message: str) -> None:
    st.session_state.setdefault(LINK_ERRORS, {})[key] = [one_line(message), None]


def reason(exc: SmoothvizError) -> str:
    """A library message without its leading ``sigma spec '...':`` (the caller names the spec)."""
    text = str(exc)
    return text.split("': ", 1)[1] if text.startswith("sigma spec '") and "': " in text else text


def checked_spec(spec: str | None, n_train: int) -> tuple[dict | None, str | None]:
    """(parsed spec, None) when the library accepts ``spec`` and k fits the training set, else (None, why)."""
    if not spec:
        return None, "no σ spec"
    try:
        params = parse_sigma_spec(spec)
    except SmoothvizError as exc:
        return None, reason(exc)
    if params["kind"] == "knn" and params["k"] > n_train:
        return None, f"k = {params['k']} exceeds the {n_train:,} training points"
    return params, None


# ---------------------------------------------------------------- checks of the widgets' values
def sigma_errors(params: dict, n_train: int) -> list[str]:
    """What is wrong with the σ widgets' values, one line each (empty when the library accepts them)."""
    errors: list[str] = []
    sigma_range = (SIGMA_MIN, SIGMA_MAX)
    if params["kind"] == "constant":
        check_number(errors, "σ", params["sigma"], *sigma_range)
    elif params["kind"] == "ddrs":
        check_number(errors, "smallest σ", params["sigma_min"], *sigma_range)
        check_number(errors, "largest σ", params["sigma_max"], *sigma_range)
        check_number(errors, "G", params["num_sigmas"], 1, MAX_NUM_SIGMAS)
        check_number(errors, "samples per σ", params["n"], 1, MAX_SAMPLES)
        if not errors and params["sigma_min"] > params["sigma_max"]:
            errors.append(f"smallest σ = {params['sigma_min']:g} exceeds largest σ = {params['sigma_max']:g}")
    else:
        check_number(errors, "σ_b", params["sigma_b"], *sigma_range)
        check_number(errors, "r", params["r"], 0.0, R_MAX)
        check_number(errors, "k", params["k"], 1, n_train)
        if params["m"] is not None:
            check_number(errors, "m", params["m"], -M_MAX, M_MAX)
        for key, label in (("sigma_min", "min σ"), ("sigma_max", "max σ")):
            if params[key] is not None:
                check_number(errors, label, params[key], *sigma_range)
        if not errors and None not in (params["sigma_min"], params["sigma_max"]) \
                and params["sigma_min"] > params["sigma_max"]:
            errors.append(f"min σ = {params['sigma_min']:g} exceeds max σ = {params['sigma_max']:g}")
    if not errors:
        try:
            parse_sigma_spec(canonical_spec(params))
        except SmoothvizError as exc:
            errors.append(one_line(str(exc)))
    return errors


# ---------------------------------------------------------------- jobs
@st.cache_data(max_entries=16, show_spinner="Computing σ(x) on the chosen points…")
def sigma_on_points(dataset: str, spec: str, indices: tuple[int, ...], reference: str | None = None) -> np.ndarray:
    sigma_fn = load_sigma(dataset, spec, reference)
    return sigma_fn(load_dataset(dataset).test_x[list(indices)]).detach().cpu().numpy().astype(float)


def take_upload() -> None:
    """Uploader callback: keep the uploaded file under uploads/ and put its path in the model field."""
    upload = st.session_state.get("model_upload")
    if upload is not None:
        try:
            st.session_state["model_path"] = str(save_upload(upload.name, upload.getvalue()))
        except SmoothvizError as exc:
            st.session_state["_certify_upload_error"] = one_line(str(exc))


@st.cache_data(max_entries=32, ttl=600, show_spinner="Measuring the sampling rate…")
def _sampling_rate(path: str, mtime: float, device: str, batch_size: int, rates: str) -> cost.Rate:
    return cost.sample_rate(path, device, batch_size, {}, cache=rates)


def sampling_rate(checkpoint: str, device: str, batch_size: int) -> cost.Rate:
    """Noisy samples per second for this checkpoint, device and batch (recorded, else measured; cached)."""
    path = Path(checkpoint) if Path(checkpoint).is_absolute() else ROOT / checkpoint
    mtime = path.stat().st_mtime if path.exists() else 0.0
    return _sampling_rate(str(path), mtime, device, batch_size, str(cost.rates_file(db_path())))


def results_figure(run: dict, results) -> object:
    label = run_label(run)
    curve = analysis.accuracy_curve(results)
    return plots.waterfall_figure({label: curve}, {label: analysis.run_ceiling(run)})


def start_job(run_id: int, processes: int = 1) -> None:
    """Execute (or resume) the run in a background process (``processes`` > 1: that many ranks
    under torchrun); the run is pending from here on."""
    job_manager().start_certify(run_id, db_path(), cwd=ROOT, processes=processes)


def resumed_processes(run_id: int) -> int:
    """Processes for resuming a run: as many as its last execution spanned, where this machine has them."""
    run = get_store().run(run_id)
    return max(1, min(int(run.get("world_size") or 1), processes_limit(str(run.get("device") or "auto"))))


def resume(run_id: int) -> None:
    """Resume button callback: runs before the page is drawn, so the page already shows the new job."""
    try:
        start_job(run_id, resumed_processes(run_id))
    except SmoothvizError as exc:
        st.session_state["_certify_start_error"] = one_line(str(exc))


def start_run(token: str, config: dict, processes: int = 1) -> None:
    """Run button callback, idempotent: a click on an already used button, or a click while an
    identical run is pending or running, opens that run instead of creating another. ``processes``:
    the ranks that execute it (not part of the run: any number gives the same results)."""
    used = st.session_state.setdefault("_certify_used_tokens", set())
    if token in used or config is None:
        return
    used.add(token)
    st.session_state["_certify_token"] = uuid.uuid4().hex
    store = get_store()
    try:
        run_id = store.find_run(**config)
        status = store.run(run_id)["status"] if run_id is not None else None
        if status not in ACTIVE:
            run_id = store.create_run(**config)
            start_job(run_id, processes)
        elif status == "pending":  # recorded, perhaps not started yet: starting is idempotent
            start_job(run_id, processes)
    except SmoothvizError as exc:
        st.session_state["_certify_start_error"] = one_line(str(exc))
        return
    st.query_params["run"] = str(run_id)


@st.fragment(run_every="1s")
def live_panel(run_id: int) -> None:
    """One progress line (points stored plus the samples of the points in flight), the partial
    curve and Cancel; hands over to the full page when the run ends."""
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
    run = store.run(run_id)
    engine = job_manager().engine_progress(job.id) if job is not None else None
    view = live_progress(int(prog["total"]), int(prog["done"]), int(run["n0"] or 0) + int(run["n"] or 0), engine,
                         prog.get("rate_per_s"), prog.get("eta_s"), starting=job is not None,
                         samples_in_flight=run.get("sequential") is None)
    st.progress(view.fraction, text=view.text())
    if job is None and prog["status"] == "pending":
        st.info("This run is recorded but no process is executing it.")
        if run["kind"] == "certify" and st.button("Start it", key=f"start{run_id}"):
            start_job(run_id, resumed_processes(run_id))
    if st.button("Cancel", key=f"cancel{run_id}", help="Stops after the current batch; finished points stay."):
        stopped = job is not None and job_manager().cancel(job.id)
        if not stopped and prog["status"] == "pending":  # nothing executes it: cancel the record itself
            store.set_status(run_id, "cancelled", "cancelled before it started")
        elif not stopped:  # executed by a process this dashboard did not start (e.g. the CLI): ask it to stop
            store.request_cancel(run_id)
        st.toast("Cancelling…")
    results = store.results(run_id)
    if run.get("sequential") is not None:
        live_sequential(store, run, results, key=f"live{run_id}")
    elif len(results):
        st.plotly_chart(results_figure(run, results), key=f"live{run_id}")


def resumable(run: dict) -> str | None:
    """Why the run cannot be resumed from here, or None when it can."""
    if run["kind"] != "certify":
        return f"a run of kind {run['kind']} has nothing to execute"
    checkpoint = run.get("checkpoint")
    if not checkpoint:
        return "it records no checkpoint"
    path = Path(checkpoint) if Path(checkpoint).is_absolute() else ROOT / checkpoint
    if not path.is_file():
        return f"its checkpoint {display_path(path)} is missing"
    return None


def run_panel(run_id: int) -> None:
    """The run named in the URL: live progress while it runs, results once it has ended."""
    store = get_store()
    try:
        run = store.run(run_id)
    except SmoothvizError:
        st.error(f"the link's run = {run_id} was not applied: there is no run #{run_id} in the results store",
                 icon=ERROR_ICON)
        return
    st.subheader(f"Run {run_label(run)}")
    described = (run.get("options") or {}).get("model") or {}
    world = world_text(run, job_manager().get(certify_job_id(run_id)))
    st.caption(f"{one_line(run['dataset'])} · {run['sigma_spec']} · {rule_text(run)}, α = {alpha_text(run)}{world} · "
               f"checkpoint `{display_path(Path(run['checkpoint'])) if run['checkpoint'] else '—'}`"
               + (f" · {described['description']}" if described.get("description") else ""))
    failed_start = st.session_state.pop("_certify_start_error", None)
    if failed_start:
        st.error(failed_start, icon=ERROR_ICON)
    status = run["status"]
    if status in ACTIVE:
        live_panel(run_id)
        return
    results = store.results(run_id)
    if status == "done":
        st.success(f"Done: {plural(len(results), 'point')} certified.")
    elif status == "failed":
        st.error(f"The run failed: {one_line(run.get('message') or 'see the job log')}", icon=ERROR_ICON)
    else:
        st.warning(f"The run is {status} after {len(results):,} of {plural(int(run['total']), 'point')}.",
                   icon=WARNING_ICON)
    if status != "done":
        why_not = resumable(run)
        if why_not is None:
            st.button("Resume", key=f"resume{run_id}", help="Certifies the remaining points.",
                      on_click=resume, args=(run_id,))
        else:
            st.caption(f"It cannot be resumed: {why_not}.")
    if len(results):
        summary = analysis.summary(results)
        c = st.columns(4)
        c[0].metric("points", summary["points"])
        c[1].metric("clean accuracy (smoothed)", f"{summary['accuracy']:.3f}")
        c[2].metric("average certified radius", f"{summary['average_certified_radius']:.3f}")
        c[3].metric("abstentions", f"{summary['abstention_rate']:.1%}")
        st.plotly_chart(results_figure(run, results), key=f"final{run_id}")
    if run.get("sequential") is not None:
        done_sequential(store, run, results, key=f"final{run_id}")
    st.page_link(PAGES["compare"], label="Compare this run with others →", query_params={"runs": str(run_id)})
    if job_manager().get(certify_job_id(run_id)) is not None:
        with st.expander("Job log"):
            st.code(job_manager().log_tail(certify_job_id(run_id)) or "(empty)")


# ---------------------------------------------------------------- the page
st.title("Certify test points")
# Entering the page (from another page, a link or a reload) applies the link; later reruns keep
# what the widgets hold. A run that stopped before drawing every widget (no model file given yet,
# say) leaves Streamlit without their values: the next run seeds them again from the link, which
# that run did not rewrite (``restore``).
entering = entered_page() or "data_mode" not in st.session_state
restore = entering or not st.session_state.pop("_certify_drawn", False)
if entering:
    st.session_state[LINK_ERRORS] = {}
current_run = None
if "run" in st.query_params:
    raw_run = st.query_params.get("run")
    try:
        current_run = int(str(raw_run).strip())
        if not 1 <= current_run <= INT_MAX:
            raise ValueError
    except ValueError:
        st.error(f"the link's run = {shown(raw_run)} was not applied: not a run id", icon=ERROR_ICON)
        current_run = None
        set_query(run=None)
if current_run is not None:
    run_panel(current_run)
    if st.button("New certification", key="new_run"):
        set_query(run=None)
        st.rerun()
    st.divider()
if "sweep" in st.query_params:
    raw_sweep = st.query_params.get("sweep")
    try:
        current_sweep = int(str(raw_sweep).strip())
        if not 1 <= current_sweep <= INT_MAX:
            raise ValueError
    except ValueError:
        st.error(f"the link's sweep = {shown(raw_sweep)} was not applied: not a sweep id", icon=ERROR_ICON)
        set_query(sweep=None)
    else:
        sweep_panel(current_sweep)
        st.divider()

st.subheader("New certification" if current_run is not None else "Configuration")
names = data.dataset_names()
if restore:
    st.session_state["dataset"] = link_choice("dataset", names) or data.DEFAULT_DATASET
c1, c2 = st.columns(2)
data_mode = c1.radio("Data", DATA_MODES, key="data_mode", horizontal=True)
model_mode = c2.radio("Model", MODEL_MODES, key="model_mode", horizontal=True)
reference_text = ""
if data_mode == DATA_MODES[0]:
    dataset = c1.selectbox("Dataset", names, key="dataset")
    if dataset in data.DATASET_INFO:
        c1.caption(data.DATASET_INFO[dataset].description)
else:
    source_text = c1.text_input(
        "Your data (imagefolder:PATH or npz:FILE)", key="data_source",
        help="imagefolder:PATH — class folders of images (torchvision ImageFolder layout, e.g. an ImageNet "
             "validation set); npz:FILE — arrays x (channels first, values in [0, 1]) and y. Resize and centre "
             "crop follow the model's preprocessing unless written as imagefolder(resize=256,crop=224):PATH. "
             "Images are decoded only when a point is used.").strip()
    reference_text = c1.text_input(
        "kNN reference points (for a knn σ; imagefolder:PATH or npz:FILE)", key="sigma_reference",
        help="The training points the kNN σ(x) measures distances to, decoded like the data; their statistic m "
             "is cached by their content.").strip()

meta: dict = {}
record = None  # what a run records of a foreign model (options["model"])
if model_mode == MODEL_MODES[0]:
    if data_mode != DATA_MODES[0]:
        st.warning("A smoothviz checkpoint certifies the dataset it was trained on; choose **a model file** for "
                   "your own data.", icon=WARNING_ICON)
        st.stop()
    with stop_on_error():
        ds = load_dataset(dataset)
    ckpts = list_checkpoints(dataset)
    if not ckpts:
        set_query(dataset=dataset)
        st.warning(f"No usable checkpoint trained on **{dataset}** under assets/ or runs/checkpoints/. Train one on "
                   f"the Train page or with `python -m smoothviz train --dataset {dataset} ...`, or choose "
                   "**a model file**.", icon=WARNING_ICON)
        for path, why in unusable_checkpoints():
            st.caption(f"`{display_path(Path(path))}` cannot be used: {one_line(why)}")
        st.stop()
    metas = {display_path(p): m for p, m in ckpts}
    if restore or "ckpt" not in st.session_state or st.session_state["ckpt"] not in metas:
        st.session_state["ckpt"] = (link_choice("ckpt", list(metas)) if restore else None) or next(iter(metas))
    ckpt = c2.selectbox("Checkpoint", list(metas), key="ckpt")
    meta = metas[ckpt]
    checkpoint = ckpt
    acc = meta.get("clean_accuracy")
    c2.caption(f"arch {meta.get('arch')} · trained with σ = `{meta.get('sigma')}`"
               + (f" · clean accuracy {acc:.3f}" if isinstance(acc, (int, float)) else ""))
    unusable = unusable_checkpoints()
    if unusable:
        with c2.expander(f"{plural(len(unusable), 'checkpoint')} in the checkpoint folders cannot be used",
                         icon=WARNING_ICON):
            for path, why in unusable:
                st.markdown(f"- `{display_path(Path(path))}`: {one_line(why)}")
else:
    c2.file_uploader("Upload a model file", key="model_upload", on_change=take_upload,
                     help="Kept under uploads/ next to the results store, named by its content.")
    upload_error = st.session_state.pop("_certify_upload_error", None)
    if upload_error:
        c2.error(upload_error, icon=ERROR_ICON)
    model_text = c2.text_input(
        "Model file, or torchvision:NAME", key="model_path",
        help="A checkpoint of the reference code of Cohen et al. 2019, SmoothAdv or MACER (its architecture is "
             "rebuilt, its normalisation implied), or torchvision:NAME with a weights file. Loaded weights-only: "
             "nothing in the file runs. TorchScript/export archives and your own model code run code, so they are "
             "certified with the command line (--trust-archive, --model-code).").strip()
    weights_text = c2.text_input("Weights file (state dict, for torchvision:NAME)", key="model_weights").strip() \
        if model_text.startswith("torchvision:") else ""
    trained_sigma = c2.number_input("σ the model was trained with (optional; the default σ)", value=None,
                                    step=0.05, format="%.6g", key="model_sigma")
    if not model_text:
        st.info("Give a model file (or upload one), or torchvision:NAME with its weights.", icon=":material/info:")
        st.stop()
    model_path = model_text if model_text.startswith("torchvision:") else absolute(model_text)
    weights_path = absolute(weights_text) if weights_text else None
    if trained_sigma is not None and not (math.isfinite(trained_sigma) and SIGMA_MIN <= trained_sigma <= SIGMA_MAX):
        st.error(f"trained σ = {trained_sigma:g} is outside [{SIGMA_MIN:g}, {SIGMA_MAX:g}]", icon=ERROR_ICON)
        st.stop()
    with stop_on_error():
        loaded = foreign_model(model_path, weights_path, trained_sigma)
    info = loaded.info
    c2.caption(f"{info.source} · takes {list(info.input_shape)}, {info.num_classes} classes · "
               f"normalisation: {info.normalisation}")
    if data_mode == DATA_MODES[0]:
        dataset = st.session_state["dataset"]
    else:
        if not source_text:
            st.info("Name your data as imagefolder:PATH or npz:FILE.", icon=":material/info:")
            st.stop()
        with stop_on_error():
            from smoothviz.data_sources import parse_source

            channels = info.input_shape[0] if len(info.input_shape) == 3 else None
            dataset = parse_source(source_text).with_defaults(info.preprocess, channels).name
    with stop_on_error():
        ds = load_dataset(dataset)
    misfit = model_misfit(model_path, weights_path, Path(model_path).stat().st_mtime
                          if Path(model_path).exists() else 0.0, dataset)
    if misfit:
        st.error(misfit, icon=ERROR_ICON)
        st.stop()
    from smoothviz.model_sources import ModelRequest, run_checkpoint, run_record

    request = ModelRequest(model=model_path, weights=weights_path, trained_sigma=trained_sigma)
    record = run_record(request, info, dataset)
    checkpoint = run_checkpoint(request)
    ckpt = display_path(Path(checkpoint))
    meta = {"sigma": None if info.trained_sigma is None else f"constant:{info.trained_sigma!r}", "arch": info.arch}
    if data_mode != DATA_MODES[0]:
        c1.caption(f"`{one_line(dataset)}` · {plural(len(ds.test_y), 'point')} · {len(ds.class_names)} classes · "
                   f"inputs {list(ds.input_shape)}")
reference_record = None
if reference_text:
    with stop_on_error():
        reference = load_reference(reference_text, dataset)
    reference_record = {"source": reference.name, "sha256": reference.sha256}
    n_train = int(reference.x.shape[0])
else:
    n_train = int(ds.train_x.shape[0])
n_test = int(ds.test_x.shape[0])

# σ widgets are keyed by checkpoint, so choosing another checkpoint starts from its metadata; the
# link's spec (when the page is entered) comes first. A refused spec falls back visibly.
sk = f"@{ckpt}"
if restore or f"kind{sk}" not in st.session_state:
    default = None
    # the link's σ belongs to the model it was written for: a new model starts from its own σ
    if (entering or st.session_state.get("_certify_sk") == sk) and "sigma" in st.query_params:
        raw_spec = st.query_params.get("sigma")
        default, why = checked_spec(raw_spec, n_train)
        if default is None:
            refuse("sigma", f"the link's σ spec {shown(raw_spec)} was not applied: {why}; "
                            f"showing the checkpoint's σ instead")
    if default is None and meta.get("sigma"):
        default, why = checked_spec(meta.get("sigma"), n_train)
        if default is None:
            refuse("sigma", f"the checkpoint's σ spec {shown(meta.get('sigma'))} is refused: {why}; "
                            f"showing {FALLBACK_SPEC} instead")
    default = default or parse_sigma_spec(FALLBACK_SPEC)
    first = default.get("sigma") or default.get("sigma_b") or 0.25  # a ddrs spec has neither: its grid is its own
    st.session_state.update({
        f"kind{sk}": default["kind"], f"sigma{sk}": float(first), f"sigma_b{sk}": float(first),
        f"r{sk}": float(default.get("r") or 0.0), f"k{sk}": int(default.get("k") or min(20, n_train)),
        f"mset{sk}": default.get("m") is not None, f"m{sk}": float(default.get("m") or 0.0),
        f"minset{sk}": default.get("sigma_min") is not None, f"smin{sk}": float(default.get("sigma_min") or 0.05),
        f"maxset{sk}": default.get("sigma_max") is not None, f"smax{sk}": float(default.get("sigma_max") or 1.0),
        f"dmin{sk}": float(default.get("sigma_min") or 0.12) if default["kind"] == "ddrs" else 0.12,
        f"dmax{sk}": float(default.get("sigma_max") or 0.5) if default["kind"] == "ddrs" else 0.5,
        f"dg{sk}": int(default.get("num_sigmas") or 10), f"dn{sk}": int(default.get("n") or 256)
        if default["kind"] == "ddrs" else 256,
    })

st.markdown("**σ function**")
s1, s2, s3, s4 = st.columns(4)
kind = s1.radio("kind", ["constant", "knn", "ddrs"], key="kind" + sk, horizontal=True,
                help="knn: σ(x) = σ_b·exp(r·(mean distance to the k nearest training points − m)). ddrs "
                     "(data-dependent, Alfarra et al. 2022): σ(x) chosen per input from G values to maximise its "
                     "naive radius; no semi-elasticity, so only the naive certificate exists (no guarantee).")
fmt = "%.6g"
if kind == "constant":
    sig = s2.number_input(f"σ (pixel units, {SIGMA_MIN:g} to {SIGMA_MAX:g})", step=0.01, format=fmt, key="sigma" + sk)
    params = {"kind": "constant", "sigma": sig}
elif kind == "ddrs":
    d_lo = s2.number_input(f"smallest σ ({SIGMA_MIN:g} to {SIGMA_MAX:g})", step=0.01, format=fmt, key="dmin" + sk)
    d_hi = s3.number_input("largest σ", step=0.01, format=fmt, key="dmax" + sk)
    g1, g2 = s4.columns(2)
    d_g = g1.number_input(f"G (σ values, 1 to {MAX_NUM_SIGMAS})", step=1, key="dg" + sk)
    d_n = g2.number_input("samples per σ", step=32, key="dn" + sk,
                          help="noisy copies per grid value when σ(x) is chosen (the choice's own α is 0.001)")
    params = {"kind": "ddrs", "sigma_min": d_lo, "sigma_max": d_hi, "num_sigmas": d_g, "n": d_n, "alpha": 0.001,
              "seed": 0}
else:
    sigma_b = s2.number_input(f"σ_b (base σ, {SIGMA_MIN:g} to {SIGMA_MAX:g})", step=0.01, format=fmt,
                              key="sigma_b" + sk)
    r_val = s3.number_input(f"r (semi-elasticity, 0 to {R_MAX:g})", step=0.005, format=fmt, key="r" + sk)
    k_val = s4.number_input(f"k (neighbours, 1 to {n_train:,})", step=1, key="k" + sk)
    o1, o2, o3 = st.columns(3)
    m_set = o1.checkbox("fix m", key="mset" + sk, help="Off: m = mean kNN distance over the training set.")
    m_val = o1.number_input(f"m (±{M_MAX:g})", step=0.1, format=fmt, key="m" + sk, disabled=not m_set)
    lo_set = o2.checkbox("clip below", key="minset" + sk)
    lo = o2.number_input("min σ", step=0.01, format=fmt, key="smin" + sk, disabled=not lo_set)
    hi_set = o3.checkbox("clip above", key="maxset" + sk)
    hi = o3.number_input("max σ", step=0.01, format=fmt, key="smax" + sk, disabled=not hi_set)
    params = {"kind": "knn", "sigma_b": sigma_b, "r": r_val, "k": k_val, "m": m_val if m_set else None,
              "sigma_min": lo if lo_set else None, "sigma_max": hi if hi_set else None}
errors = sigma_errors(params, n_train)
spec = canonical_spec(params) if not errors else None
r_semi = semi_elasticity(params)
if spec and r_semi is None:
    st.caption(f"spec `{spec}` · no semi-elasticity: naive only (no guarantee). The run stores the naive radius "
               "σ(x)Φ⁻¹(p_A) and a sound radius of 0; the Counterexamples page shows why the naive one is no "
               "certificate.")
elif spec:
    st.caption(f"spec `{spec}` · semi-elasticity r = {r_semi:g}"
               + (" (constant σ: Cohen's certificate)" if kind == "constant" else
                  " (sound input-dependent certificate; the naive radius is stored for comparison)"))

st.markdown("**Monte Carlo and points**")
gpus = torch.cuda.device_count()
devices = ["auto", "cpu"] + (["cuda"] if gpus else []) + [f"cuda:{i}" for i in range(gpus)]
if restore:
    st.session_state.update({
        "n0": link_int("n0", 1, cost.N_MAX) or 100, "n": link_int("n", 1, cost.N_MAX) or 1000,
        "alpha": link_float("alpha", 0.0, 1.0, open_ends=True) or 0.001,
        "seed": link_int("seed", 0, cost.SEED_MAX) if "seed" in st.query_params else 0,
        "points": link_int("points", 1, n_test) or min(20, n_test),
        "device": link_choice("device", devices) or "auto",
    })
    if st.session_state["seed"] is None:
        st.session_state["seed"] = 0
    raw_indices = st.query_params.get("indices")
    if raw_indices:
        try:
            parse_indices(str(raw_indices), n_test)
            st.session_state["indices"] = str(raw_indices)
        except SmoothvizError as exc:
            refuse("indices", f"the link's indices = {shown(raw_indices)} were not applied: {reason(exc)}")
            st.session_state["indices"] = ""
    else:
        st.session_state["indices"] = ""
sampling = sequential_inputs(restore, errors, link_choice, link_float, r_semi)
p1, p2, p3, p4 = st.columns(4)
n0 = p1.number_input("n0 (selection samples)", step=10, key="n0")
n = p2.number_input("n_max (budget: estimation samples at most)" if sampling.sequential else
                    "n (estimation samples)", step=100, key="n")
alpha = p3.number_input("α (failure probability, in (0, 1))", step=0.001, format="%.6g", key="alpha")
seed = p4.number_input("seed", step=1, key="seed")
q1, q2, q3, q4 = st.columns(4)
points = q1.number_input(f"points (of {n_test:,} test points, evenly spaced)", step=1, key="points")
index_text = q2.text_input("or indices (e.g. 0-9,15,20)", key="indices")
device = q3.selectbox("device", devices, key="device")
check_number(errors, "n0", n0, 1, cost.N_MAX)
check_number(errors, "n", n, 1, cost.N_MAX)
check_number(errors, "α", alpha, 0.0, 1.0, open_ends=True)
check_number(errors, "seed", seed, 0, cost.SEED_MAX)
check_number(errors, "points", points, 1, n_test)
if n0 is not None and n is not None and n0 > n:
    errors.append(f"n0 = {n0} must not exceed n = {n} (n0 samples only pick the class; n estimate its probability).")
engine_batch = engine_batch_size(ckpt, device) if record is None else foreign_batch_size(model_path, weights_path,
                                                                                         device)
bk = f"batch@{ckpt}|{device}"
if restore or bk not in st.session_state:
    st.session_state[bk] = int(engine_batch)
batch_size = q4.number_input("batch size (noisy samples per forward pass)", step=256, key=bk,
                             help=f"never changes the counts; the engine's default here is {engine_batch}")
check_number(errors, "batch size", batch_size, 1, INT_MAX)
processes = processes_input(restore, errors, link_int, device, st.columns(4)[0])
try:
    trained_with = parse_sigma_spec(meta.get("sigma") or "")
except SmoothvizError:
    trained_with = None
stem = Path(ckpt).stem
rule_name = sampling.settings.describe() if sampling.settings is not None else ""
nk = f"name@{ckpt}|{spec}|{rule_name}"
if restore or nk not in st.session_state:
    st.session_state[nk] = (stem if params == trained_with else f"{stem} {short_spec(spec)}") \
        + (f" {rule_name}" if rule_name else "")
name = st.text_input("run name", key=nk)
try:
    name = check_run_name(name)
except SmoothvizError as exc:
    errors.append(one_line(str(exc)))

indices: list[int] = []
if not any(e.startswith("points") for e in errors):
    try:
        indices = parse_indices(index_text, n_test) if index_text.strip() else evenly_spaced(int(points), n_test)
    except SmoothvizError as exc:
        errors.append(one_line(str(exc)))

# The link's refused values stay reported (and Run disabled) until that value is changed.
link_errors: dict = st.session_state.get(LINK_ERRORS, {})
current = {"dataset": dataset, "ckpt": ckpt, "sigma": spec, "n0": n0, "n": n, "alpha": alpha, "seed": seed,
           "points": points, "device": device, "indices": index_text, **sampling.current,
           "processes": st.session_state.get("processes")}
for key in list(link_errors):
    message, fallback = link_errors[key]
    if fallback is None:
        link_errors[key][1] = current[key] if current[key] is not None else ""
    elif fallback != current[key]:
        del link_errors[key]
for message, _ in link_errors.values():
    st.error(message, icon=ERROR_ICON)
if link_errors and st.button("Use the values shown", key="accept_shown",
                             help="Run with what the widgets show instead of the refused values."):
    link_errors.clear()
    st.rerun()
for e in errors:
    st.error(e, icon=ERROR_ICON)
# A model file and the user's files stay out of the link: a link never makes the page read a path.
set_query(dataset=dataset if data_mode == DATA_MODES[0] else None, ckpt=ckpt if record is None else None,
          sigma=spec, n0=n0, n=n, alpha=alpha, seed=seed, points=points,
          device=device, indices=index_text or None, **sampling.link,
          processes=processes if processes not in (None, default_processes(device)) else None)
st.session_state["_certify_drawn"] = True  # every widget drawn and the link rewritten: the next run keeps them
st.session_state["_certify_sk"] = sk

choice_samples = int(params["n"]) * int(params["num_sigmas"]) if kind == "ddrs" and not errors else 0
if indices and not errors and kind == "ddrs":
    st.caption(f"σ(x) of a ddrs σ is chosen when the run starts: {choice_samples:,} forward passes of the model per "
               "point (G values × samples per σ), included in the estimate below.")
elif indices and not errors:
    try:
        sig_values = sigma_on_points(dataset, spec, tuple(indices), reference_text or None)
    except SmoothvizError as exc:
        show_error(exc)
        errors.append(str(exc))
    else:
        st.plotly_chart(plots.sigma_histogram_figure(sig_values), key="sigma_hist")
        ceiling = analysis.run_ceiling({'sigma_max': float(sig_values.max()), 'n': n, 'alpha': alpha})
        st.caption(f"{plural(len(indices), 'point')} · σ(x) from {sig_values.min():.4g} to {sig_values.max():.4g} · "
                   f"ceiling σ_maxΦ⁻¹(α^(1/n)) = {ceiling:.3f}")
        reach_warning(sampling, ceiling)
        try:
            check_sigma_values(sig_values, spec, indices)
        except SmoothvizError as exc:
            show_error(exc)
            errors.append(str(exc))
        spread = span_warning(sig_values)
        if spread:
            st.warning(spread, icon=WARNING_ICON)

rate = None
if indices and not errors:
    try:
        rate = sampling_rate(ckpt, device, int(batch_size)) if record is None else \
            foreign_rate(model_path, weights_path, device, int(batch_size))
    except SmoothvizError as exc:
        show_error(exc)
        errors.append(str(exc))
    else:
        estimate = cost.estimate_certify(len(indices), int(n0) + choice_samples, int(n), rate)
        st.caption(estimate_text(estimate.text, sampling, int(n), processes or 1))
        if estimate.needs_flag:
            st.error(f"This certification would take {cost.duration_text(estimate.seconds)}, more than a day; "
                     "fewer points or a smaller n make it shorter.", icon=ERROR_ICON)
            if not st.checkbox("Run it anyway", key="allow_long"):
                errors.append("longer than a day")
        elif estimate.long:
            st.warning(f"This certification should take {cost.duration_text(estimate.seconds)} (more than "
                       f"{cost.LONG_JOB_SECONDS / 60:g} min); it runs in the background and can be cancelled, "
                       "and resumed later.", icon=WARNING_ICON)

busy = executing_runs()
if busy:
    st.caption(f"{plural(len(busy), 'certification job')} already running "
               f"({', '.join(f'run #{i}' for i in busy)}); a new one shares the CPU/GPU with them.")
blocked = bool(errors) or bool(link_errors) or not indices
config = None if blocked else {
    "name": name, "dataset": dataset, "split": "test", "checkpoint": ckpt, "sigma_spec": spec,
    "sigma_params": params, "r": r_semi, "n0": int(n0), "n": int(n), "alpha": float(alpha), "device": device,
    "indices": indices, "seed": int(seed), "batch_size": int(batch_size),
}
if config is not None and sampling.settings is not None:
    config["sequential"] = sampling.settings.to_dict()
if config is not None and record is not None:
    config.update(checkpoint=checkpoint, options={"model": record})
if config is not None and reference_record is not None:
    config["options"] = {**config.get("options", {}), "sigma_reference": reference_record}
token = st.session_state.setdefault("_certify_token", uuid.uuid4().hex)
st.button("Run certification", type="primary", disabled=blocked, key="run_button",
          on_click=start_run, args=(token, config, processes or 1))
if current_run is None and st.session_state.get("_certify_start_error"):
    st.error(st.session_state.pop("_certify_start_error"), icon=ERROR_ICON)
if config is not None:
    sweep_form(config, rate)
