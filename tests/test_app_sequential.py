"""Sequential (anytime-valid) certification and several processes in the dashboard (AppTest).

The Sample explorer's "certify live": Start, one step per rerun (AppTest's timers never fire, so
each run of the script is one step), Stop, Continue, a stop when the page is left, and the
engine's decision at the end. The Certify page: the sequential mode's widgets (values applied,
refused in one line with Run disabled), a sequential run started from the page records its rule,
the live curve of what is certified so far from a store with in-flight rows, a finished run's
samples and stopping reasons, and the processes input with a real two-process job.
"""

from __future__ import annotations

import torch

from apptest_support import open_page, plotly_figures
from apptest_support import fresh_app_state  # noqa: F401  (autouse: a temporary store, no shared caches)
from smoothviz import live
from smoothviz import sequential_engine as se
from smoothviz.data import load_dataset
from smoothviz.models import load_checkpoint

EXPLORER = "pages/4_Sample_explorer.py"
LIVE = "_ex_live"


def _live(at) -> dict:
    return at.session_state[LIVE]


def _figure(at, start: str) -> dict:
    found = [f for f in plotly_figures(at) if (f["layout"].get("title") or {}).get("text", "").startswith(start)]
    assert found, [(f["layout"].get("title") or {}).get("text") for f in plotly_figures(at)]
    return found[0]


def test_certify_live_advances_one_step_per_rerun_stops_and_continues():
    at = open_page(EXPLORER, idx="17", n="1000")
    assert not at.exception, [e.message for e in at.exception]
    assert LIVE not in at.session_state
    at.button(key="ex_live_start").click().run()
    assert not at.exception, [e.message for e in at.exception]
    seen = [_live(at)["point"].samples]
    for _ in range(3):
        at.run()
        seen.append(_live(at)["point"].samples)
    assert seen[0] > 0 and all(b > a for a, b in zip(seen, seen[1:])), seen  # every rerun is one more step
    point = _live(at)["point"]
    assert not point.finished and _live(at)["running"]
    names = load_dataset("digits").class_names
    assert any(i.value == live.verdict(point, names) for i in at.info)  # the sentence of this very moment
    bounds = _figure(at, "Confidence sequence for p_A")
    lower = next(t for t in bounds["data"] if t["name"] == "lower bound on p_A")
    assert lower["y"][:len(point.history)] == [h[1] for h in point.history]
    assert bounds["layout"]["xaxis"]["type"] == "log"

    at.button(key="ex_live_stop").click().run()
    stopped = _live(at)["point"]
    assert stopped.stopped and not _live(at)["running"]
    at.run()
    assert _live(at)["point"].samples == stopped.samples  # nothing more is drawn
    assert any(m.value.startswith(f"Stopped by you after {stopped.samples:,} samples")
               for m in [*at.success, *at.warning])
    at.button(key="ex_live_continue").click().run()
    assert _live(at)["running"] and _live(at)["point"].samples > stopped.samples

    at.switch_page("pages/3_Compare_runs.py").run()  # leaving the page: no fragment draws steps there
    left = _live(at)["point"].samples
    at.switch_page(EXPLORER).run()
    assert not _live(at)["running"] and _live(at)["point"].stopped and _live(at)["point"].samples == left

    at.number_input(key="ex_idx").set_value(18).run()  # another point: the live state starts afresh
    assert LIVE not in at.session_state


def test_certify_live_reaches_the_engines_decision_and_refuses_a_bad_radius():
    at = open_page(EXPLORER, idx="40", n="1000")
    at.radio(key="ex_live_mode").set_value("fixed radius R (decide: certified at R?)").run()
    at.number_input(key="ex_live_radius").set_value(-1.0).run()
    assert any(e.value == "R = -1 is outside [0, 100]" for e in at.error)
    assert at.button(key="ex_live_start").disabled
    at.number_input(key="ex_live_radius").set_value(0.3).run()
    at.select_slider(key="ex_live_budget").set_value(10_000).run()
    assert not at.error and not at.button(key="ex_live_start").disabled
    at.button(key="ex_live_start").click().run()
    for _ in range(60):
        if not _live(at)["running"]:
            break
        at.run()
    point = _live(at)["point"]
    assert point.decided and point.reason in ("certified", "below-target", "short", "budget")
    assert not at.exception, [e.message for e in at.exception]
    ckpt = at.session_state["ex_ckpt"]
    model, _ = load_checkpoint(ckpt, device="cpu", expected_dataset="digits")
    ds = load_dataset("digits")
    rule = se.SequentialSettings.create("fixed-radius", radius=0.3).rule(0.001, 10_000, point.rule.r, ds.dim)
    (want,) = se.iter_certify_sequential(model.eval(), ds.test_x[[40]], ds.test_y[[40]], [40],
                                         torch.tensor([point.sigma]), 100, rule, ds.num_classes, 4096, "cpu", 0)
    assert (point.reason, point.t, point.k, point.lower, point.upper) == (
        want.stop_reason, want.samples, want.votes_a, want.p_a_lower, want.p_a_upper)
    verdict = live.verdict(point, ds.class_names)
    assert any(m.value == verdict for m in [*at.success, *at.warning])
    assert verdict.startswith("Certified at R = 0.3." if point.reason == "certified" else "Cannot reach")
    assert not at.button(key="ex_live_start").disabled and LIVE in at.session_state
    assert not [b for b in at.button if b.key in ("ex_live_stop", "ex_live_continue")]  # decided: nothing to go on
