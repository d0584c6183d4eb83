"""The Certify page's Sweep section: a grid of σ functions and n on the page's points, as one job.

``sweep_form(config, rate)`` draws the grid inputs below a valid configuration and starts the
sweep (``smoothviz.sweep``: recorded with its runs, then ``smoothviz sweep --sweep ID`` in the
background); ``sweep_panel(sweep_id)`` follows a sweep named in the link (``?sweep=ID``): progress
over the whole grid, each run's state, Cancel, Resume, and the way to its trade-off views.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from pages._ui import (
    ACTIVE,
    ERROR_ICON,
    PAGES,
    ROOT,
    WARNING_ICON,
    db_path,
    get_store,
    job_manager,
    one_line,
    set_query,
)
from smoothviz import cost
from smoothviz.errors import SmoothvizError
from smoothviz.jobs import RUNNING, parse_progress_line, sweep_job_id
from smoothviz.plots import plural

SWEEP_ICON = ":material/grid_on:"
DEFAULTS = {"sweep_sigma_b": "0.12,0.25", "sweep_r": "0,0.05,0.1", "sweep_k": 20, "sweep_constant": "0.12,0.25"}


def grid_specs(sigma_b: str, r: str, k: int | None, constant: str) -> list[str]:
    """The grid's sigma specs from the section's fields (a field left empty adds nothing)."""
    from smoothviz.sweep import expand_sigma_grid

    specs: list[str] = []
    if sigma_b.strip() or r.strip():
        if not (sigma_b.strip() and r.strip()):
            raise SmoothvizError("give both the kNN σ_b values and the r values, or neither")
        if k is None:
            raise SmoothvizError("k is empty")
        specs += expand_sigma_grid(f"knn:{{{sigma_b}}},{{{r}}},{int(k)}")
    if constant.strip():
        specs += expand_sigma_grid(f"constant:{{{constant}}}")
    if not specs:
        raise SmoothvizError("the grid is empty: give kNN σ_b and r values, constant σ values, or both")
    return specs


def _plan(config: dict, specs: list[str], ns: list[int]):
    from smoothviz.device import resolve_device
    from smoothviz.sweep import ModelChoice, SweepPlan

    options = config.get("options") or {}
    description = {"model": options["model"]} if "model" in options else {}
    model = ModelChoice(str(config["checkpoint"]), Path(str(config["checkpoint"])).stem, description)
    return SweepPlan(dataset=config["dataset"], split="test", models=(model,), sigmas=tuple(specs), ns=tuple(ns),
                     alphas=(float(config["alpha"]),), n0=int(config["n0"]), indices=tuple(config["indices"]),
                     seed=int(config["seed"]), device=str(resolve_device(config["device"])),
                     sigma_reference=options.get("sigma_reference"))


def start_sweep(config: dict, specs: list[str], ns: list[int]) -> None:
    """Start button callback: find or record the sweep, start its job, put it in the link."""
    from smoothviz.sweep import prepare_sweep, record_sweep

    store = get_store()
    try:
        plan = _plan(config, specs, ns)
        plan.check()
        sweep_id = store.find_sweep(plan.identity())
        if sweep_id is None:
            batch = config.get("batch_size")
            sweep_id = record_sweep(store, prepare_sweep(plan, batch, cost.rates_file(db_path())), batch)
        if store.sweep(sweep_id)["status"] != "done":
            job_manager().start_sweep(sweep_id, db_path(), cwd=ROOT)
    except SmoothvizError as exc:
        st.session_state["_sweep_error"] = one_line(str(exc))
        return
    st.query_params["sweep"] = str(sweep_id)


def sweep_form(config: dict, rate: cost.Rate | None) -> None:
    """The grid inputs for the page's configuration (its model, points, n0, α, seed, device)."""
    with st.expander("Sweep: a grid of σ functions and n on these points, as one job", icon=SWEEP_ICON):
        st.caption("Every cell is a certification of the same points with the same seed, so cells compare point "
                   "by point (paired). kNN σ(x) = σ_b·exp(r·(mean distance to the k nearest training points − m)); "
                   "its distances are computed once for the whole grid.")
        for key, value in DEFAULTS.items():
            st.session_state.setdefault(key, value)
        st.session_state.setdefault("sweep_n", str(config["n"]))
        c1, c2, c3, c4, c5 = st.columns(5)
        sigma_b = c1.text_input("kNN σ_b values", key="sweep_sigma_b", help="comma-separated, e.g. 0.12,0.25")
        r = c2.text_input("kNN r values", key="sweep_r", help="comma-separated semi-elasticities, e.g. 0,0.05,0.1")
        k = c3.number_input("k", step=1, key="sweep_k")
        constant = c4.text_input("constant σ values", key="sweep_constant", help="comma-separated; empty for none")
        n_text = c5.text_input("n values", key="sweep_n", help="estimation samples, comma-separated")
        try:
            from smoothviz.commands.certify import sample_count
            from smoothviz.sweep import parse_values

            specs = grid_specs(sigma_b, r, k, constant)
            ns = parse_values(n_text, "n", sample_count)
            plan = _plan(config, specs, ns)
            plan.check()
        except SmoothvizError as exc:
            st.error(one_line(str(exc)), icon=ERROR_ICON)
            return
        cells = plan.cells()
        points = len(plan.indices)
        text = (f"{plural(len(specs), 'σ function')} × {plural(len(ns), 'n')} = {plural(len(cells), 'run')} × "
                f"{plural(points, 'point')}")
        if rate is not None:
            from smoothviz.sweep import sweep_estimate

            estimate = sweep_estimate([(points, plan.n0, cell.n, rate) for cell in cells])
            text += f" · estimated {cost.duration_text(estimate.seconds)}"
        st.caption(text)
        st.button("Start sweep", key="sweep_start", icon=SWEEP_ICON, on_click=start_sweep, args=(config, specs, ns))
        error = st.session_state.pop("_sweep_error", None)
        if error:
            st.error(error, icon=ERROR_ICON)


def _cancel(sweep_id: int) -> None:
    job = job_manager().get(sweep_job_id(sweep_id))
    if job is None or not job_manager().cancel(job.id):
        get_store().request_sweep_cancel(sweep_id)  # executed elsewhere (the command line): ask it to stop
    st.toast("Cancelling the sweep…")


def _resume(sweep_id: int) -> None:
    try:
        job_manager().start_sweep(sweep_id, db_path(), cwd=ROOT)
    except SmoothvizError as exc:
        st.session_state["_sweep_error"] = one_line(str(exc))


@st.fragment(run_every="1s")
def _live(sweep_id: int) -> None:
    """Progress over the whole grid while the sweep's job runs; the page redraws when it ends."""
    store = get_store()
    record = store.sweep(sweep_id)
    job = job_manager().get(sweep_job_id(sweep_id))
    if record["status"] not in ACTIVE or (job is not None and job.status != RUNNING):
        if record["status"] in ACTIVE and job is not None and job.status != RUNNING:
            tail = job_manager().log_tail(job.id, 2000).strip().splitlines()
            store.set_sweep_status(sweep_id, "cancelled" if job.cancel_requested else "failed",
                                   tail[-1] if tail else f"process exited with code {job.returncode}")
        st.rerun(scope="app")
    engine = parse_progress_line(job_manager().log_tail(job.id, 4000)) if job is not None else None
    fraction = max(engine.fraction if engine is not None else 0.0, record["done"] / max(record["total"], 1))
    line = (f"{record['runs_done']}/{plural(len(record['cells']), 'run')} done · {record['done']}/"
            f"{plural(record['total'], 'point')} stored")
    if engine is not None and engine.eta_s is not None:
        line += f" · ETA {cost.duration_text(engine.eta_s)}"
    if job is None:
        line += " · no dashboard job executes it (the command line may)"
    st.progress(min(fraction, 1.0), text=line)
    if job is None and record["status"] == "pending":
        st.button("Start it", key=f"sweep_start{sweep_id}", on_click=_resume, args=(sweep_id,))
    st.button("Cancel sweep", key=f"sweep_cancel{sweep_id}", on_click=_cancel, args=(sweep_id,),
              help="Stops the run in flight after its current batch; finished runs and points stay.")


def sweep_panel(sweep_id: int) -> None:
    """The sweep named in the link: live progress while it runs, its runs and the next steps after."""
    store = get_store()
    try:
        record = store.sweep(sweep_id)
    except SmoothvizError:
        st.error(f"the link's sweep = {sweep_id} was not applied: there is no sweep #{sweep_id} in the results store",
                 icon=ERROR_ICON)
        set_query(sweep=None)
        return
    st.subheader(f"Sweep #{sweep_id} {record['name']}", anchor=False)
    config = record["config"]
    st.caption(f"{config['dataset']} · {plural(len(record['cells']), 'run')} × {plural(config['points'], 'point')} · "
               f"n0 = {config['n0']}, n = {', '.join(map(str, config['n']))}, α = "
               f"{', '.join(f'{a:g}' for a in config['alpha'])}, seed {config['seed']}")
    error = st.session_state.pop("_sweep_error", None)
    if error:
        st.error(error, icon=ERROR_ICON)
    if record["status"] in ACTIVE:
        _live(sweep_id)
    elif record["status"] == "done":
        st.success(f"Done: {plural(len(record['cells']), 'run')}, {plural(record['done'], 'point')} certified.",
                   icon=":material/check_circle:")
    else:
        st.warning(f"The sweep is {record['status']} after {record['runs_done']} of "
                   f"{plural(len(record['cells']), 'run')} ({record['done']} of {record['total']} points): "
                   f"{one_line(record['message'] or '')}", icon=WARNING_ICON)
        st.button("Resume sweep", key=f"sweep_resume{sweep_id}", on_click=_resume, args=(sweep_id,),
                  help="Certifies the missing runs and points; nothing done is repeated.")
    rows = [{"run": c["run_id"], "σ": c["cell"]["sigma_spec"], "n": c["cell"]["n"], "status": c["status"] or "deleted",
             "points": f"{c['done']}/{c['total']}"} for c in record["cells"]]
    st.dataframe(rows, hide_index=True)
    if record["done"]:
        st.page_link(PAGES["tradeoffs"], label="Explore this sweep's trade-offs →", icon=":material/tune:",
                     query_params={"sweep": str(sweep_id)})
