"""The Certify page's sequential (anytime-valid) certification and processes, and what a
sequential run shows while it runs and once it is done.

``sequential_inputs`` draws the sampling choice (fixed n; sequential in radius mode with a maximum
radius and a tolerance; sequential at a fixed radius R) with the confidence sequence;
``processes_input`` the number of processes (torchrun: one per GPU, or ranks sharing a CPU).
Both read their link values through the page's checks and append one line per refused value to
the page's errors, so Run stays disabled while any is invalid. ``live_sequential`` draws, while a
sequential run executes, what is certified so far from its stored points and the bounds of its
points in flight (``Store.in_flight``, refreshed by the process that runs it) with the samples
used against a fixed-n run; ``done_sequential`` the samples per point and stopping reasons of a
run that has ended.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd
import streamlit as st
import torch

from pages._ui import WARNING_ICON, load_dataset
from pages._ui.numbers import check_number
from smoothviz import analysis, live, plots_sequential
from smoothviz.errors import SmoothvizError
from smoothviz.plots import plural
from smoothviz.sequential_engine import SequentialSettings

MODES = {"fixed-n": "fixed n", "radius": "sequential: radius mode", "fixed-radius": "sequential: fixed radius R"}
CS_CHOICES = {"mixture": "mixture", "betting": "betting (the mixture's name as a bet)",
              "union": "union of Clopper-Pearson bounds"}
RADIUS_MAX = 1000.0  # far beyond any radius a certificate reaches in pixel units; larger is a typo
DEFAULTS = {"seq_mode": "fixed-n", "seq_cs": "mixture", "seq_max_radius": None, "seq_tolerance": 0.0,
            "seq_radius": 0.25}
LINK_KEYS = {"mode": "seq_mode", "cs": "seq_cs", "max_radius": "seq_max_radius", "tolerance": "seq_tolerance",
             "radius": "seq_radius"}


@dataclass
class SequentialChoice:
    """What the sampling widgets hold: the mode, the settings (None for fixed n or while a value
    is refused), the link's values and the widgets' values (keyed like the link)."""

    mode: str
    settings: SequentialSettings | None
    link: dict = field(default_factory=dict)
    current: dict = field(default_factory=dict)

    @property
    def sequential(self) -> bool:
        return self.mode != "fixed-n"


def sequential_inputs(restore: bool, errors: list[str], link_choice: Callable, link_float: Callable,
                      r_semi: float | None) -> SequentialChoice:
    """The sampling row of the page (mode, confidence sequence, radius values).

    ``restore``: the page applies its link now; ``link_choice`` / ``link_float`` are the page's
    checked readers of link values (a refused value is reported by the page). ``r_semi``: the σ
    function's semi-elasticity (None: no radius to stop at, so sequential modes are refused).
    """
    if restore:
        st.session_state.update({
            "seq_mode": link_choice("mode", list(MODES)) or DEFAULTS["seq_mode"],
            "seq_cs": link_choice("cs", list(CS_CHOICES)) or DEFAULTS["seq_cs"],
            "seq_max_radius": link_float("max_radius", 0.0, RADIUS_MAX, open_ends=True)
            if "max_radius" in st.query_params else None,
            "seq_tolerance": link_float("tolerance", 0.0, RADIUS_MAX) or DEFAULTS["seq_tolerance"],
            "seq_radius": link_float("radius", 0.0, RADIUS_MAX) if "radius" in st.query_params
            else DEFAULTS["seq_radius"],
        })
        if st.session_state["seq_radius"] is None:
            st.session_state["seq_radius"] = DEFAULTS["seq_radius"]
    for key, value in DEFAULTS.items():
        st.session_state.setdefault(key, value)
    c1, c2, c3, c4 = st.columns([2, 1, 1, 1])
    mode = c1.radio("sampling", list(MODES), format_func=MODES.get, key="seq_mode", horizontal=True,
                    help="fixed n: CERTIFY of Cohen et al. with n estimation samples per point. sequential: a "
                         "confidence sequence for p_A, valid at every sample count at once, stops each point as "
                         "soon as its certificate is settled; n becomes the budget n_max.")
    link: dict = {"mode": None if mode == "fixed-n" else mode}
    if mode == "fixed-n":
        return SequentialChoice(mode, None, {**link, "cs": None, "max_radius": None, "tolerance": None,
                                             "radius": None}, _current())
    cs = c2.selectbox("confidence sequence", list(CS_CHOICES), format_func=CS_CHOICES.get, key="seq_cs",
                      help="mixture: a beta-binomial mixture martingale (equivalently a betting sequence), valid at "
                           "every sample count; union: Clopper-Pearson bounds at fixed checkpoints with a union "
                           "bound over them.")
    mine: list[str] = []
    radius = max_radius = None
    tolerance = 0.0
    if mode == "fixed-radius":
        radius = c3.number_input(f"R (radius to decide, 0 to {RADIUS_MAX:g})", step=0.05, format="%.6g",
                                 key="seq_radius")
        check_number(mine, "R", radius, 0.0, RADIUS_MAX)
    else:
        max_radius = c3.number_input(f"max radius (empty: no cap; below {RADIUS_MAX:g})", value=None, step=0.05,
                                     format="%.6g", key="seq_max_radius",
                                     help="a point stops once its radius reaches this")
        tolerance = c4.number_input("tolerance (radius gain per doubling; 0: never stop for it)", step=0.005,
                                    format="%.6g", key="seq_tolerance",
                                    help="a point stops once its radius grew by less than this over a doubling of "
                                         "its samples")
        if max_radius is not None:
            check_number(mine, "max radius", max_radius, 0.0, RADIUS_MAX, open_ends=True)
        check_number(mine, "tolerance", tolerance, 0.0, RADIUS_MAX)
    if r_semi is None:
        mine.append("a sequential run stops at a certified radius, and a σ without semi-elasticity (ddrs) certifies "
                    "none; use fixed n")
    settings = None
    if not mine:
        try:
            settings = SequentialSettings.create(mode, cs=cs, radius=radius, max_radius=max_radius,
                                                 tolerance=float(tolerance or 0.0))
        except SmoothvizError as exc:
            mine.append(str(exc).splitlines()[0])
    errors.extend(mine)
    link.update(cs=cs if cs != "mixture" else None, radius=radius if mode == "fixed-radius" else None,
                max_radius=max_radius if mode == "radius" else None,
                tolerance=tolerance if mode == "radius" and tolerance else None)
    return SequentialChoice(mode, settings, link, _current())


def _current() -> dict:
    """The widgets' values keyed like the link ("" for an empty one), so the page can tell when a
    refused link value has been changed (widgets not drawn keep their last value)."""
    out = {}
    for key, widget in LINK_KEYS.items():
        value = st.session_state.get(widget)
        out[key] = "" if value is None else value
    return out


def processes_limit(device: str) -> int:
    """Processes a run may span here: one per GPU where the device is a GPU, else the CPU's cores."""
    gpus = torch.cuda.device_count()
    if device == "cpu" or gpus == 0:
        return max(1, os.cpu_count() or 1)
    return gpus


def default_processes(device: str) -> int:
    """One process per visible GPU on a machine with several; else one."""
    gpus = torch.cuda.device_count()
    return gpus if gpus > 1 and device in ("auto", "cuda") else 1


def processes_input(restore: bool, errors: list[str], link_int: Callable, device: str, column) -> int | None:
    """The processes widget in ``column``; its value, or None with one line in ``errors``."""
    limit = processes_limit(device)
    if restore or "processes" not in st.session_state:
        st.session_state["processes"] = (link_int("processes", 1, limit) if "processes" in st.query_params
                                         else None) or default_processes(device)
    value = column.number_input(f"processes (1 to {limit}; torchrun)", step=1, key="processes",
                                help="ranks of one run: one per GPU, or processes sharing this CPU; every point is "
                                     "certified once, with the same result as in one process")
    if value is None or not 1 <= value <= limit:
        unit = "CPU cores" if device == "cpu" or torch.cuda.device_count() == 0 else "GPUs"
        errors.append(f"processes = {'empty' if value is None else value} is outside [1, {limit}] ({unit} here)")
        return None
    if value > 1 and device not in ("auto", "cpu", "cuda"):
        errors.append(f"processes = {value} needs device auto, cpu or cuda (each process takes a GPU of its own), "
                      f"not {device}")
        return None
    return int(value)


def estimate_text(text: str, choice: SequentialChoice, n: int, processes: int) -> str:
    """The time estimate's caption: for a sequential run an upper bound, said so."""
    out = f"Estimated time: {text}"
    if choice.sequential:
        out = (f"Estimated time: at most {text} — every point using the whole budget n_max = {n:,}; a sequential "
               "run stops each point as soon as its certificate is settled, usually far sooner")
    if processes > 1:
        out += f" · measured for one process; {processes} processes share the work"
    return out


def world_text(run: dict, job) -> str:
    """How many processes execute or executed the run (its record, else what its job asked for)."""
    size = run.get("world_size") or (job.extra.get("processes") if job is not None else None)
    if not size:
        return ""
    return " · 1 process" if int(size) == 1 else f" · {int(size)} processes (torchrun)"


def _count(value: object) -> str:
    """A sample count for a caption; "—" where the run does not record it (an imported log has no n0)."""
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError, OverflowError):
        return "—"


def alpha_text(run: dict) -> str:
    """The run's α for a caption; "—" where it records none."""
    try:
        alpha = float(run.get("alpha"))
    except (TypeError, ValueError):
        return "—"
    return f"{alpha:g}" if math.isfinite(alpha) else "—"


def rule_text(run: dict) -> str:
    """The run's sampling, for its caption: fixed n, or the sequential rule and budget."""
    settings = run.get("sequential")
    if settings is None:
        return f"n0 = {_count(run.get('n0'))}, n = {_count(run.get('n'))}"
    try:
        what = SequentialSettings.from_dict(settings).describe()
    except SmoothvizError:
        what = "sequential"
    return f"sequential ({what}), n0 = {_count(run.get('n0'))}, budget n_max = {_count(run.get('n'))}"


def _dim(run: dict) -> int | None:
    """The input dimension of the run's data (what the sound radius needs when r > 0)."""
    if not run.get("r"):
        return None
    try:
        return int(load_dataset(run["dataset"]).dim)
    except SmoothvizError:
        return None


def live_sequential(store, run: dict, results: pd.DataFrame, key: str) -> None:
    """While a sequential run executes: what is certified so far, and its samples against fixed n."""
    flight = store.in_flight(int(run["id"]))
    if run["status"] != "running":  # rows belong to an execution in progress
        flight = flight.iloc[0:0]
    dim = _dim(run)
    if run.get("r") and dim is None:
        flight = flight.iloc[0:0]  # no dimension, no sound radius for the points in flight
        st.caption("The bounds of the points in flight need the data's dimension, which cannot be read here; the "
                   "curve holds the decided points only.")
    partial = live.partial_results(run["indices"], results, flight, int(run["n0"]), run.get("r"), dim)
    if (run.get("world_size") or 1) > 1:
        st.caption(f"This run spans {run['world_size']} processes: their points in flight are not reported, so the "
                   "curve holds the decided points only.")
    cost = live.sample_cost(partial, int(run["n0"]), int(run["n"]))
    st.caption(cost.text()[0].upper() + cost.text()[1:] + ".")
    st.plotly_chart(plots_sequential.partial_curve_figure(partial, analysis.run_ceiling(run)), key=key)


def done_sequential(store, run: dict, results: pd.DataFrame, key: str) -> None:
    """A sequential run that has ended: samples per point against fixed n, and stopping reasons."""
    if not len(results):
        return
    used = store.sample_counts(int(run["id"])) or []
    fixed = int(run["n0"]) + int(run["n"])
    mean = sum(used) / len(used) if used else 0.0
    c = st.columns(3)
    c[0].metric("samples per point (mean)", f"{mean:,.0f}", help="selection + estimation samples each point used")
    c[1].metric("fixed n would use", f"{fixed:,}", help="n0 + n per point, with n the budget")
    c[2].metric("fewer samples", f"{fixed / mean:.1f}×" if mean > 0 else "—")
    left, right = st.columns(2)
    left.plotly_chart(plots_sequential.samples_figure(used, fixed), key=f"{key}_samples")
    reasons = results["stop_reason"].value_counts().to_dict()
    right.plotly_chart(plots_sequential.stop_reasons_figure({str(k): int(v) for k, v in reasons.items()}),
                       key=f"{key}_reasons")
    if run["status"] != "done":
        st.caption(f"{plural(len(results), 'point')} of {run['total']:,} decided before the run stopped.")


def reach_warning(choice: SequentialChoice, ceiling: float) -> None:
    """A fixed radius beyond what the budget can certify for any point (all would stop at once)."""
    if choice.settings is not None and choice.mode == "fixed-radius" and math.isfinite(ceiling) \
            and choice.settings.radius > ceiling:
        st.warning(f"R = {choice.settings.radius:g} exceeds the ceiling {ceiling:.3f} of this budget: no point can be "
                   "certified at R, every point would stop at once (a larger n_max raises the ceiling).",
                   icon=WARNING_ICON)
