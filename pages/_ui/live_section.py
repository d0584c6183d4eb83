"""The Sample explorer's "certify live" section: one point certified by a sequential rule while
the user watches, one small step per rerun of a fragment.

The steps are ``smoothviz.live.advance`` (the engine's seeds, noise blocks and rule, so the point
reaches what a sequential run would store for it); the state lives in ``st.session_state`` under
LIVE_KEY with the configuration it belongs to, so any change of point, model, σ or rule starts
afresh. The fragment reruns every LIVE_EVERY while sampling and draws one step of about
STEP_SECONDS, so the page never blocks; Stop ends it at once, and leaving the page stops it (the
fragment is no longer drawn, and entering the page again finds it stopped); a click that comes
while a step is being drawn wins over that step (LOCK_KEY). At every moment the page shows the
sentence the guarantee allows (``live.verdict``).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence

import streamlit as st
import torch

from pages._ui import ERROR_ICON, entered_page, one_line
from smoothviz import live, plots_sequential
from smoothviz.errors import SmoothvizError
from smoothviz.noise import NOISE_BLOCK
from smoothviz.sequential import FixedRadiusRule

LIVE_KEY = "_ex_live"  # {"key": configuration, "point": LivePoint, "running": bool, "rate": samples/s}
LOCK_KEY = "_ex_live_lock"  # the buttons' callbacks and the fragment's steps change the state one at a time
LIVE_EVERY = 0.5  # seconds between two steps while sampling
STEP_SECONDS = 0.25  # the time one step aims at
STEP_ROWS = (NOISE_BLOCK, 64 * NOISE_BLOCK)  # rows of a step at least and at most
MODES = {"radius (sample until the radius is as good as it gets)": "radius",
         "fixed radius R (decide: certified at R?)": "fixed-radius"}
SEQUENCES = {"mixture (betting)": "mixture", "union of Clopper-Pearson bounds": "union"}
BUDGETS = (10_000, 100_000, 1_000_000)
RADIUS_MAX = 100.0  # far beyond any radius an image in [0, 1] can be certified at


def _rows(rate: float | None) -> int:
    """Rows of the next step: STEP_SECONDS at the last step's rate, within STEP_ROWS."""
    if not rate or not math.isfinite(rate):
        return 4 * NOISE_BLOCK
    return int(min(max(rate * STEP_SECONDS, STEP_ROWS[0]), STEP_ROWS[1]))


def _lock() -> threading.Lock:
    """This session's lock over the live state: a click can be handled while a step is drawn."""
    return st.session_state.setdefault(LOCK_KEY, threading.Lock())


def _start(key: tuple, point: live.LivePoint) -> None:
    with _lock():
        st.session_state[LIVE_KEY] = {"key": key, "point": point, "running": not point.finished, "rate": None}


def _stop() -> None:
    with _lock():
        state = st.session_state.get(LIVE_KEY)
        if state is not None:
            state["point"] = state["point"].stop()
            state["running"] = False


def _continue() -> None:
    with _lock():
        state = st.session_state.get(LIVE_KEY)
        if state is not None and not state["point"].decided:
            state["point"] = state["point"].resume()
            state["running"] = True


def certify_live(key: tuple, make_rule: Callable[[str, str, float | None, int], object], idx: int, label: int,
                 sigma: float, n0: int, seed: int, dim: int, x: torch.Tensor, classify: Callable,
                 class_names: Sequence[str], batch_size: int = 1024) -> None:
    """The section: rule widgets, Start / Stop / Continue, and the live panel of the point.

    ``key`` identifies everything the live run depends on outside this section (dataset, model,
    σ, point, n0, α, seed); ``make_rule(mode, cs, radius, budget)`` builds the stopping rule (a
    SmoothvizError names a value it refuses); ``classify`` is the base classifier on x's device.
    """
    st.subheader("Certify live (anytime-valid)")
    st.caption("A sequential rule samples this point in small steps and reads a confidence sequence for p_A, whose "
               "bounds hold at every sample count at once: you may stop whenever you like and keep the certificate "
               "of that moment. The samples are the ones a sequential run on the Certify page draws for this point "
               "(same seed), so it reaches the same decision.")
    c1, c2, c3, c4 = st.columns(4)
    mode = MODES[c1.radio("question", list(MODES), key="ex_live_mode")]
    cs = SEQUENCES[c2.selectbox("confidence sequence", list(SEQUENCES), key="ex_live_cs")]
    budget = c3.select_slider("budget n_max (estimation samples at most)", options=BUDGETS, value=100_000,
                              format_func=lambda v: f"{v:,}", key="ex_live_budget")
    radius = c4.number_input(f"R (0 to {RADIUS_MAX:g})", value=0.25, step=0.05, format="%.4g", key="ex_live_radius",
                             disabled=mode != "fixed-radius")
    problem = None
    rule = None
    if mode == "fixed-radius" and (radius is None or not math.isfinite(radius) or not 0 <= radius <= RADIUS_MAX):
        problem = f"R = {'empty' if radius is None else f'{radius:g}'} is outside [0, {RADIUS_MAX:g}]"
    else:
        try:
            rule = make_rule(mode, cs, radius if mode == "fixed-radius" else None, int(budget))
        except SmoothvizError as exc:
            problem = one_line(str(exc))
    if problem:
        st.error(problem, icon=ERROR_ICON)
    full_key = (*key, mode, cs, int(budget), float(radius) if mode == "fixed-radius" else None)
    state = st.session_state.get(LIVE_KEY)
    if state is not None and (state["key"] != full_key or problem):  # another point or rule: start afresh
        del st.session_state[LIVE_KEY]
        state = None
    if state is not None and state["running"] and entered_page():  # back from another page: it stopped there
        _stop()
    b1, b2, _ = st.columns([1, 1, 4])
    running = state is not None and state["running"]
    b1.button("Start", key="ex_live_start", type="primary", icon=":material/play_arrow:", disabled=rule is None,
              on_click=lambda: _start(full_key, live.start(rule, idx, label, sigma, n0, seed, dim)))
    if running:
        b2.button("Stop", key="ex_live_stop", icon=":material/stop:", on_click=_stop)
    elif state is not None and not state["point"].decided:
        b2.button("Continue", key="ex_live_continue", icon=":material/play_circle:", on_click=_continue)
    if state is None:
        return
    if state["running"]:
        _running_panel(x, classify, len(class_names), class_names, batch_size)
    else:
        _draw(state["point"], class_names)


@st.fragment(run_every=LIVE_EVERY)
def _running_panel(x: torch.Tensor, classify: Callable, num_classes: int, class_names: Sequence[str],
                   batch_size: int) -> None:
    """One step, then the panel; hands back to the whole page once the point is finished."""
    state = st.session_state.get(LIVE_KEY)
    if state is None or not state["running"]:
        st.rerun(scope="app")
    t0, begun = time.perf_counter(), state["point"]
    try:
        stepped = live.advance(begun, classify, x, num_classes, batch_size, _rows(state["rate"]))
    except SmoothvizError as exc:
        state["running"] = False
        st.error(one_line(str(exc)), icon=ERROR_ICON)
        return
    with _lock():
        # Stopped, continued or started afresh while the step was drawn: the click wins, the step is dropped.
        current = st.session_state.get(LIVE_KEY) is state and state["running"] and state["point"] is begun
        if current:
            state["point"] = stepped
            spent = time.perf_counter() - t0
            if spent > 0 and stepped.samples > begun.samples:
                state["rate"] = (stepped.samples - begun.samples) / spent
            if stepped.finished:
                state["running"] = False
    if not current or stepped.finished:
        st.rerun(scope="app")
    _draw(stepped, class_names)


def _draw(point: live.LivePoint, class_names: Sequence[str]) -> None:
    """Metrics, the sentence the guarantee allows now, and the two figures."""
    m = st.columns(4)
    m[0].metric("samples drawn", f"{point.samples:,}", help="selection + estimation samples of this point")
    m[1].metric("p_A lower bound", f"{point.lower:.5f}")
    m[2].metric("p_A upper bound", f"{point.upper:.5f}")
    m[3].metric("sound radius now", f"{point.radius:.4f}")
    text = live.verdict(point, class_names)
    if not point.finished:
        st.info(text, icon=":material/hourglass_top:")
    elif point.lower > 0.5 and point.reason not in ("below-target", "short"):
        st.success(text, icon=":material/verified:")
    else:
        st.warning(text, icon=":material/pan_tool:")
    h = live.history_arrays(point)
    drawn = point.t + point.pending_rows
    fixed = isinstance(point.rule, FixedRadiusRule)
    target = point.rule.radius if fixed else None
    cap = None if fixed else point.rule.max_radius
    left, right = st.columns(2)
    left.plotly_chart(plots_sequential.live_bounds_figure(h["samples"], h["lower"], h["upper"], point.rule.alpha,
                                                          live.needed_p(point), drawn), key="ex_live_bounds")
    right.plotly_chart(plots_sequential.live_radius_figure(h["samples"], h["radius"], target, cap, drawn),
                       key="ex_live_radius_fig")
