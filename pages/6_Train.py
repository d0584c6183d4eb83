"""Train: start a noise-augmented training job in the background, follow it, cancel it."""

from __future__ import annotations

import math
import re
import time
import uuid
from pathlib import Path

import pandas as pd
import streamlit as st

from pages._ui import (
    ERROR_ICON, ROOT, display_path, entered_page, job_manager, set_query, setup_page, show_error, shown,
    train_checkpoint_dir,
)
from smoothviz import plots_explore
from smoothviz.plots import plural
from smoothviz.commands.train import DEFAULT_EPOCHS
from smoothviz.data import DATASET_INFO, DEFAULT_DATASET
from smoothviz.errors import InvalidArgument, SmoothvizError
from smoothviz.jobs import CANCELLED, DONE, FAILED, LOST, RUNNING
from smoothviz.models import ARCHITECTURES
from smoothviz.sigma import R_MAX, SIGMA_MAX, SIGMA_MIN
from smoothviz.train import DEFAULT_LR, OPTIMIZERS

setup_page("Train", ":material/model_training:")
st.title("Train a base classifier")
st.caption(
    "Noise-augmented training (Gaussian noise of σ(x) added to every training input, as in Cohen et al. 2019) runs "
    "as `python -m smoothviz train` in a background process: you can leave this page, reload it (the job id is in "
    "the URL) or cancel it. Finished checkpoints land in the training folder (`runs/checkpoints/` by default) and "
    "appear on the Certify page."
)

DEFAULT_ARCH = "default for the dataset"
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
# (label, smallest, largest) of each number of the form. The widgets have no bounds: a browser keeps an
# out-of-range entry on screen without sending it, so the form would silently train with the previous
# value; the page checks the values on submit and refuses one outside its range, naming it.
RANGES = {
    "tr_sigma": ("σ", SIGMA_MIN, SIGMA_MAX),
    "tr_r": ("r", 0.0, R_MAX),
    "tr_k": ("k", 1, 10_000),
    "tr_epochs": ("epochs", 1, 1000),
    "tr_lr": ("learning rate", 1e-6, 10.0),
    "tr_batch": ("batch size", 1, 4096),
    "tr_seed": ("seed", 0, 2**31 - 1),
}


def range_problems(values: dict[str, float | None], skip: tuple[str, ...] = ()) -> list[str]:
    """One line per value outside its range (None means "default" and is fine), naming the value."""
    problems = []
    for key, value in values.items():
        label, lo, hi = RANGES[key]
        if key in skip or value is None:
            continue
        if not (math.isfinite(value) and lo <= value <= hi):
            problems.append(f"{label} = {value:g} is outside [{lo:g}, {hi:g}]; training was not started.")
    return problems


def sigma_spec(kind: str, sigma: float, r: float, k: int) -> str:
    """The sigma specification string the CLI takes."""
    return f"constant:{sigma:g}" if kind == "constant" else f"knn:{sigma:g},{r:g},{int(k)}"


def validate(dataset: str, arch: str, spec: str, name: str, device: str) -> Path:
    """Check the choices before starting a process; the checkpoint path to write."""
    from smoothviz.device import resolve_device
    from smoothviz.models import build_model
    from smoothviz.sigma import parse_sigma_spec

    parse_sigma_spec(spec)
    resolve_device(device)
    info = DATASET_INFO[dataset]
    build_model(arch, info.input_shape, info.num_classes)
    if not _NAME.match(name):
        raise InvalidArgument(f"checkpoint name {name!r}: use letters, digits, '_', '.', '-' only")
    out = train_checkpoint_dir() / f"{name.removesuffix('.pt')}.pt"
    if out.exists():
        raise InvalidArgument(f"{display_path(out)} already exists; choose another checkpoint name")
    return out


def new_job_id() -> str:
    """A fresh, sortable training job id."""
    return f"train-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def start_job(dataset: str, arch: str, spec: str, epochs: int, lr: float | None, optimizer: str,
              batch_size: int, seed: int, device: str, out: Path) -> str:
    """Start ``smoothviz train`` through the job manager; returns the job id."""
    jm = job_manager()
    job_id = new_job_id()
    progress_file = jm.jobs_dir / "progress" / f"{job_id}.json"  # not beside the job files: jobs() reads *.json there
    # the command writes only into folders that exist: the training folder and the progress folder
    for folder in (out.parent, progress_file.parent):
        folder.mkdir(parents=True, exist_ok=True)
    args = [
        "train", "--dataset", dataset, "--arch", arch, "--sigma", spec, "--epochs", str(epochs),
        "--optimizer", optimizer, "--batch-size", str(batch_size), "--seed", str(seed),
        "--device", device, "--out", str(out), "--progress-file", str(progress_file),
    ]
    if lr is not None:
        args += ["--lr", f"{lr:g}"]
    jm.start(
        "train", args, job_id=job_id, progress_file=progress_file, cwd=ROOT,
        extra={"dataset": dataset, "arch": arch, "sigma": spec, "epochs": epochs, "out": str(out)},
    )
    return job_id


def resume_job(old_id: str) -> None:
    """Start the command of job ``old_id`` again as a new job (train resumes from its epoch file)."""
    old = job_manager().get(old_id)
    if old is None:
        return
    job_id = new_job_id()
    progress_file = job_manager().jobs_dir / "progress" / f"{job_id}.json"
    progress_file.parent.mkdir(parents=True, exist_ok=True)
    args = list(old.argv[3:])  # drop "python -m smoothviz"
    if "--progress-file" in args:
        args[args.index("--progress-file") + 1] = str(progress_file)
    job_manager().start("train", args, job_id=job_id, progress_file=progress_file, cwd=ROOT, extra=old.extra)
    st.session_state.train_job = job_id
    st.query_params["job"] = job_id


# ---------------------------------------------------------------- the form
q_dataset = st.query_params.get("dataset")
datasets = list(DATASET_INFO)
if q_dataset is not None and q_dataset not in datasets and entered_page():
    st.warning(f"The link's dataset={shown(q_dataset)} is not a dataset; showing {DEFAULT_DATASET}.",
               icon=":material/link_off:")
# outside the form, so that choosing constant disables the fields only a kNN σ uses at once
kind = st.radio("σ function", ["constant", "knn"], horizontal=True, key="tr_kind",
                help="knn: σ(x) = σ_b·exp(r·(mean distance to the k nearest training points − m))")
knn = kind == "knn"
with st.form("train_form"):
    c1, c2, c3 = st.columns(3)
    with c1:
        dataset = st.selectbox(
            "Dataset", datasets, key="tr_dataset",
            index=datasets.index(q_dataset) if q_dataset in datasets else datasets.index(DEFAULT_DATASET),
            format_func=lambda d: f"{d} — {DATASET_INFO[d].description}",
        )
        arch_choice = st.selectbox("Architecture", [DEFAULT_ARCH, *ARCHITECTURES], key="tr_arch")
        name = st.text_input("Checkpoint name", key="tr_name", placeholder="automatic: dataset-arch-sigma-time",
                             help="Saved as NAME.pt in the training folder (runs/checkpoints/ by default)")
    with c2:
        sigma = st.number_input("σ_b (knn base)" if knn else "σ (constant)", value=0.25, step=0.05,
                                key="tr_sigma", help=f"in [{SIGMA_MIN:g}, {SIGMA_MAX:g}] (inputs are in [0, 1])")
        r = st.number_input("Semi-elasticity r (knn only)", value=0.5, step=0.1, key="tr_r", disabled=not knn,
                            help=f"in [0, {R_MAX:g}]")
        k = st.number_input("k neighbours (knn only)", value=20, step=1, key="tr_k", disabled=not knn)
        raw_spec = st.text_input(
            "σ spec (optional, overrides the fields above)", key="tr_spec",
            placeholder="e.g. knn:0.25,0.5,20,min=0.1,max=1",
            help="Any spec the CLI accepts: constant:S or knn:SIGMA_B,R,K[,m=M][,min=A][,max=B].",
        )
    with c3:
        epochs = st.number_input("Epochs", key="tr_epochs", value=None, step=1,
                                 placeholder="default for the dataset",
                                 help=f"Defaults: {', '.join(f'{d} {e}' for d, e in DEFAULT_EPOCHS.items())}, toy2d 50")
        optimizer = st.selectbox("Optimizer", OPTIMIZERS)
        lr = st.number_input("Learning rate", value=None, step=0.001, format="%.5f", key="tr_lr",
                             placeholder=f"default: sgd {DEFAULT_LR['sgd']}, adam {DEFAULT_LR['adam']}")
        batch_size = st.number_input("Batch size", value=128, step=32, key="tr_batch")
        seed = st.number_input("Seed", value=0, step=1, key="tr_seed")
        device = st.selectbox("Device", ["auto", "cpu", "cuda"], key="tr_device")
    submitted = st.form_submit_button("Start training", type="primary", icon=":material/play_arrow:")

if submitted:
    arch = DATASET_INFO[dataset].default_arch if arch_choice == DEFAULT_ARCH else arch_choice
    own_spec = raw_spec.strip()
    problems = range_problems(
        {"tr_sigma": sigma, "tr_r": r, "tr_k": k, "tr_epochs": epochs, "tr_lr": lr, "tr_batch": batch_size,
         "tr_seed": seed},
        # a typed spec replaces the σ fields; constant σ has no r or k
        skip=("tr_sigma", "tr_r", "tr_k") if own_spec else () if knn else ("tr_r", "tr_k"),
    )
    for problem in problems:
        st.error(problem, icon=ERROR_ICON)
    if not problems:
        spec = own_spec or sigma_spec(kind, sigma, r, k)
        n_epochs = int(epochs) if epochs is not None else DEFAULT_EPOCHS.get(dataset, 50)
        auto = f"{dataset}-{arch}-{spec.split(':')[0]}-{time.strftime('%Y%m%d-%H%M%S')}"
        try:
            out = validate(dataset, arch, spec, name.strip() or auto, device)
            job_id = start_job(dataset, arch, spec, n_epochs, lr, optimizer, int(batch_size), int(seed), device, out)
        except SmoothvizError as exc:
            show_error(exc)
        else:
            st.session_state.train_job = job_id
            set_query(job=job_id, dataset=dataset)

# ---------------------------------------------------------------- the current job
jm = job_manager()
job_id = st.query_params.get("job") or st.session_state.get("train_job")
if job_id:
    try:
        job = jm.get(job_id)
    except SmoothvizError as exc:
        show_error(exc)
        job = None
    if job is None:
        st.warning(f"No training job with id {shown(job_id)} (its files may have been removed).",
                   icon=":material/search_off:")
    else:
        st.subheader(f"Job `{job.id}`")
        extra = job.extra or {}
        st.caption(
            f"{extra.get('arch', '?')} on {extra.get('dataset', '?')} with σ `{extra.get('sigma', '?')}`, "
            f"{plural(int(extra['epochs']), 'epoch') if extra.get('epochs') else '? epochs'} → "
            f"`{display_path(Path(extra.get('out', '?')))}`"
        )

        def progress_panel() -> None:
            """Progress bar, rate and ETA of the running job, polled every second."""
            current = jm.get(job_id)
            prog = jm.read_progress(job_id) or {}
            done, total = int(prog.get("done", 0)), int(prog.get("total", 0))
            elapsed = time.time() - current.started
            rate = done / elapsed if done and elapsed > 0 else None
            eta = f"{(total - done) / rate:.0f} s" if rate and total else "?"
            st.progress(
                min(done / total, 1.0) if total else 0.0,
                text=f"{done:,}/{total:,} batches · {prog.get('message', 'starting')} · "
                f"{rate or 0:.1f} batches/s · ETA {eta}",
            )
            if st.button("Cancel training", key="train_cancel", icon=":material/cancel:"):
                jm.cancel(job_id)
                st.rerun(scope="app")
            if current.status != RUNNING:
                st.rerun(scope="app")
            show_curves()

        def show_curves() -> None:
            """Loss and noisy training accuracy per finished epoch, parsed from the job's log."""
            history = plots_explore.epoch_history(jm.log_tail(job_id, max_chars=500_000))
            if history:
                st.plotly_chart(plots_explore.training_curves(history, total_epochs=extra.get("epochs")),
                                key="train_curves")

        if job.status == RUNNING:
            st.fragment(run_every="1s")(progress_panel)()
        else:
            prog = jm.read_progress(job_id) or {}
            message = prog.get("message", "")
            if job.status == DONE:
                st.success(f"Training finished: {message}", icon=":material/check_circle:")
                out = extra.get("out")
                if out and Path(out).exists():
                    link = {"dataset": extra.get("dataset", ""), "ckpt": display_path(Path(out))}
                    st.page_link("pages/2_Certify.py", label="Certify it on the Certify page", icon=":material/verified:",
                                 query_params=link)
                    if len(DATASET_INFO.get(link["dataset"], DATASET_INFO[DEFAULT_DATASET]).input_shape) > 1:
                        st.page_link("pages/4_Sample_explorer.py", label="Look at single points in the Sample explorer",
                                     icon=":material/image_search:", query_params=link)
                    else:
                        st.page_link("pages/5_2D_playground.py", label="See its decision regions in the 2-D playground",
                                     icon=":material/scatter_plot:",
                                     query_params={"dataset": link["dataset"], "model": link["ckpt"]})
            elif job.status == CANCELLED:
                st.warning("Training was cancelled. Resuming continues from the last finished epoch.",
                           icon=":material/stop_circle:")
            elif job.status == FAILED:
                lines = [ln for ln in jm.log_tail(job_id).splitlines() if ln.strip()]
                st.error(f"Training failed: {message or (lines[-1] if lines else 'see the log below')}",
                         icon=ERROR_ICON)
            elif job.status == LOST:
                st.warning("The training process disappeared without an exit code (the server may have restarted).")
            if job.status in (CANCELLED, FAILED, LOST):
                st.button("Resume training", key="train_resume", on_click=resume_job, args=(job_id,),
                          icon=":material/replay:", help="Runs the same command again as a new job; finished epochs are not repeated.")
            show_curves()
        with st.expander("Log"):
            st.code(jm.log_tail(job_id) or "(empty)", language=None)

# ---------------------------------------------------------------- earlier jobs
jobs = jm.jobs(kind="train")
if jobs:
    st.subheader("Training jobs")
    table = pd.DataFrame(
        [
            {
                "job": j.id,
                "status": j.status,
                "dataset": (j.extra or {}).get("dataset"),
                "arch": (j.extra or {}).get("arch"),
                "σ": (j.extra or {}).get("sigma"),
                "epochs": (j.extra or {}).get("epochs"),
                "checkpoint": display_path(Path((j.extra or {}).get("out", ""))),
                "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j.started)),
            }
            for j in jobs
        ]
    )
    st.dataframe(table, hide_index=True)


    def _follow() -> None:
        """Follow the picked job: into the session and the URL."""
        pick = st.session_state.get("train_pick")
        if pick:
            st.session_state.train_job = pick
            st.query_params["job"] = pick

    st.selectbox(
        "Show job", [j.id for j in jobs], index=None, placeholder="choose a job to follow",
        key="train_pick", on_change=_follow,
    )
