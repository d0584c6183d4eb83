"""Sequential (anytime-valid) certification and several processes in the dashboard (AppTest).

The Sample explorer's "certify live": Start, one step per rerun (AppTest's timers never fire, so
each run of the script is one step), Stop, Continue, a stop when the page is left, and the
engine's decision at the end. The Certify page: the sequential mode's widgets (values applied,
refused in one line with Run disabled), a sequential run started from the page records its rule,
the live curve of what is certified so far from a store with in-flight rows, a finished run's
samples and stopping reasons, and the processes input with a real two-process job.
"""

from __future__ import annotations

import itertools
import os

import pytest
import torch
from apptest_support import (
    fresh_app_state,  # noqa: F401  (autouse: a temporary store, no shared caches)
    open_page,
    plotly_figures,
    save_digits_checkpoint,
    wait_for,
)
from scipy.stats import norm

from smoothviz import live
from smoothviz import sequential_engine as se
from smoothviz.data import load_dataset
from smoothviz.jobs import JobManager, certify_job_id
from smoothviz.models import load_checkpoint
from smoothviz.store import Store

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
    assert seen[0] > 0 and all(b > a for a, b in itertools.pairwise(seen)), seen  # every rerun is one more step
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


# ---------------------------------------------------------------- Certify: the sequential mode's widgets
CERTIFY = "pages/2_Certify.py"


@pytest.fixture
def mlp_checkpoint(tmp_path, monkeypatch):
    """An untrained digits MLP trained (its metadata says) with constant σ = 0.25: fast to sample."""
    torch.manual_seed(0)
    return save_digits_checkpoint(tmp_path / "ckpt", monkeypatch, "constant:0.25", 0.0)


def _errors(at) -> list[str]:
    return [e.value for e in at.error]


def _estimate(at) -> str:
    return next(c.value for c in at.caption if c.value.startswith("Estimated time: "))


def test_the_sequential_modes_apply_valid_values_and_refuse_the_rest_in_one_line(mlp_checkpoint):
    at = open_page(CERTIFY, points="5")
    assert not at.exception, [e.message for e in at.exception]
    assert at.radio(key="seq_mode").value == "fixed-n" and not [s for s in at.selectbox if s.key == "seq_cs"]
    assert not _estimate(at).startswith("Estimated time: at most")
    at.radio(key="seq_mode").set_value("radius").run()
    assert at.number_input(key="n").label.startswith("n_max (budget")
    assert _estimate(at).startswith("Estimated time: at most ") and "whole budget n_max = 1,000" in _estimate(at)
    assert not _errors(at) and not at.button(key="run_button").disabled
    for key, value, line in (("seq_max_radius", -1.0, "max radius = -1 is outside (0, 1000)"),
                             ("seq_max_radius", 0.0, "max radius = 0 is outside (0, 1000)"),
                             ("seq_tolerance", -0.5, "tolerance = -0.5 is outside [0, 1000]")):
        at.number_input(key=key).set_value(value).run()
        assert not at.exception, [e.message for e in at.exception]
        assert _errors(at) == [line] and at.button(key="run_button").disabled
        at.number_input(key=key).set_value(None if key == "seq_max_radius" else 0.0).run()
        assert not _errors(at) and not at.button(key="run_button").disabled
    at.number_input(key="seq_max_radius").set_value(0.5).run()
    at.number_input(key="seq_tolerance").set_value(0.01).run()
    at.selectbox(key="seq_cs").set_value("union").run()
    assert at.query_params["mode"] == "radius" and at.query_params["max_radius"] == "0.5"
    assert at.query_params["tolerance"] == "0.01" and at.query_params["cs"] == "union"

    at.radio(key="seq_mode").set_value("fixed-radius").run()
    at.number_input(key="seq_radius").set_value(2000.0).run()
    assert _errors(at) == ["R = 2000 is outside [0, 1000]"] and at.button(key="run_button").disabled
    at.number_input(key="seq_radius").set_value(5.0).run()  # allowed, but beyond the budget's ceiling
    assert not _errors(at) and not at.button(key="run_button").disabled
    assert any("exceeds the ceiling" in w.value for w in at.warning)
    at.number_input(key="n").set_value(5).run()  # a budget below n0
    assert any("n0 = 100 must not exceed n = 5" in e for e in _errors(at))


def test_the_link_applies_a_sequential_rule_exactly_or_names_what_it_refuses(mlp_checkpoint):
    at = open_page(CERTIFY, mode="fixed-radius", radius="0.3", cs="union", processes="2", points="5")
    assert not at.exception and not _errors(at)
    assert (at.radio(key="seq_mode").value, at.number_input(key="seq_radius").value,
            at.selectbox(key="seq_cs").value, at.number_input(key="processes").value) == ("fixed-radius", 0.3,
                                                                                          "union", 2)
    for query, named in (({"mode": "bogus"}, "the link's mode = 'bogus' was not applied"),
                         ({"mode": "radius", "max_radius": "0"}, "the link's max_radius = '0' was not applied"),
                         ({"mode": "radius", "tolerance": "-1"}, "the link's tolerance = '-1' was not applied"),
                         ({"mode": "fixed-radius", "radius": "abc"}, "the link's radius = 'abc' was not applied"),
                         ({"cs": "betting2"}, "the link's cs = 'betting2' was not applied"),
                         ({"processes": "0"}, "the link's processes = 0 was not applied"),
                         ({"processes": "nan"}, "the link's processes = 'nan' was not applied")):
        at = open_page(CERTIFY, points="5", **query)
        assert not at.exception, [e.message for e in at.exception]
        assert [e for e in _errors(at) if e.startswith(named)], (query, _errors(at))
        assert at.button(key="run_button").disabled


def test_a_sigma_without_semi_elasticity_cannot_run_sequentially(mlp_checkpoint):
    at = open_page(CERTIFY, sigma="ddrs:0.12,0.5,4,n=64", mode="radius", points="3")
    assert not at.exception, [e.message for e in at.exception]
    assert any("a σ without semi-elasticity (ddrs) certifies none; use fixed n" in e for e in _errors(at))
    assert at.button(key="run_button").disabled


def _finish_jobs(tmp_path) -> None:
    jobs = JobManager(tmp_path / "runs" / "jobs")
    for job in jobs.jobs():
        jobs.cancel(job.id, grace_s=0.0)
        jobs.wait(job.id, timeout=30)


def test_a_sequential_run_started_from_the_page_records_its_rule_and_ends_done(tmp_path, mlp_checkpoint):
    store = Store(tmp_path / "runs" / "test.db")
    at = open_page(CERTIFY, points="4", n0="10", n="600", mode="fixed-radius", radius="0.1", cs="union")
    try:
        at.button(key="run_button").click().run()
        assert not at.exception, [e.message for e in at.exception]
        run_id = int(at.query_params["run"])
        run = store.run(run_id)
        want = se.SequentialSettings.create("fixed-radius", cs="union", radius=0.1)
        assert run["sequential"] == want.to_dict() and run["n"] == 600
        assert run["name"].endswith(want.describe())
        wait_for(at, lambda a: any(s.value.startswith("Done: 4 points") for s in a.success), timeout=240)
        results = store.results(run_id)
        reasons = _figure(at, "Why points stopped")["data"][0]
        assert dict(zip(reasons["x"], reasons["y"])) == results["stop_reason"].value_counts().to_dict()
        hist = _figure(at, "Samples per point")
        assert sorted(hist["data"][0]["x"]) == sorted(store.sample_counts(run_id))
        assert any("sequential (fixed-radius R=0.1 union-cp), n0 = 10, budget n_max = 600" in c.value
                   for c in at.caption)
    finally:
        _finish_jobs(tmp_path)


# ---------------------------------------------------------------- Certify: what a running sequential run has certified
def test_the_live_curve_of_a_running_sequential_run_counts_its_points_in_flight(tmp_path):
    import socket
    import subprocess
    import sys

    db = tmp_path / "runs" / "test.db"
    store = Store(db)
    settings = se.SequentialSettings.create("radius").to_dict()
    run_id = store.create_run("seq live", "digits", "test", None, "constant:0.25", {}, 0.0, 100, 10_000, 0.001,
                              "cpu", [0, 1, 2, 3, 4], 0, 256, sequential=settings)
    for idx, label, predict, radius, samples, reason in ((0, 3, 3, 0.6, 2_000, "budget"),
                                                          (1, 5, -1, 0.0, 400, "abstain")):
        store.add_result(run_id, se.SequentialResult(
            idx=idx, label=label, predict=predict, correct=predict == label, p_a_lower=0.99 if predict >= 0 else 0.2,
            sigma=0.25, radius=radius, naive_radius=radius, counts=[samples], samples=samples, selection=100,
            class_a=label, votes_a=samples, p_a_upper=0.4 if predict < 0 else 1.0, stop_reason=reason))
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        with store._write() as c:  # executed by a live process of this host, as a job's would be
            c.execute("UPDATE runs SET status='running', pid=?, host=?, started=? WHERE id=?",
                      (sleeper.pid, socket.gethostname(), 1.0, run_id))
        pool = {"idx": [2, 3], "samples": [800, 96], "lower": [0.93, 0.45], "upper": [0.99, 0.9],
                "sigma": [0.25, 0.25], "class_a": [7, 1], "label": [7, 1]}
        store.set_in_flight(run_id, pool)
        at = open_page(CERTIFY, run=str(run_id))
        assert not at.exception, [e.message for e in at.exception]
        curve = _figure(at, "Certified so far vs radius (2 of 5 points decided, 2 in flight)")
        every = next(t for t in curve["data"] if t["name"] == "certified so far (decided + in flight)")
        decided = next(t for t in curve["data"] if t["name"] == "decided points only")
        radius_2 = 0.25 * float(norm.ppf(0.93))  # point 2's radius from its current lower bound
        assert every["y"][0] == pytest.approx(2 / 5) and decided["y"][0] == pytest.approx(1 / 5)
        assert sorted(set(every["x"])) == pytest.approx(sorted({0.0, radius_2, 0.6}))
        used = 2_100 + 500 + (100 + 800) + (100 + 96)
        line = f"Samples used so far {used:,} (for 2 decided and 2 in-flight points) vs a fixed-n run's 5 points × " \
               f"10,100 = 50,500"
        assert any(c.value.startswith(line) for c in at.caption), [c.value for c in at.caption]
        assert not any("a point takes" in p.proto.text for p in at.get("progress"))
        store.set_status(run_id, "pending")  # no execution in progress: no rows in flight, the decided ones stay
        at.run()
        assert _figure(at, "Certified so far vs radius (2 of 5 points decided, 0 in flight)")
    finally:
        sleeper.kill()
        sleeper.wait()


# ---------------------------------------------------------------- Certify: processes
def test_the_processes_input_is_bounded_by_the_cpu_cores_and_starts_a_two_process_job(tmp_path, mlp_checkpoint):
    cores = os.cpu_count() or 1
    at = open_page(CERTIFY, points="6", n0="10", n="20000", device="cpu")
    assert at.number_input(key="processes").value == 1  # one process on a CPU by default
    assert at.number_input(key="processes").label.startswith(f"processes (1 to {cores};")
    at.number_input(key="processes").set_value(cores + 1).run()
    assert _errors(at) == [f"processes = {cores + 1} is outside [1, {cores}] (CPU cores here)"]
    assert at.button(key="run_button").disabled
    if cores < 2:
        pytest.skip(f"the two-process job needs two CPU cores; this machine has {cores}")
    at.number_input(key="processes").set_value(2).run()
    assert not _errors(at) and "2 processes share the work" in _estimate(at)
    store = Store(tmp_path / "runs" / "test.db")
    jobs = JobManager(tmp_path / "runs" / "jobs")
    try:
        at.button(key="run_button").click().run()
        run_id = int(at.query_params["run"])
        job = jobs.get(certify_job_id(run_id))
        assert job is not None and job.extra["processes"] == 2
        assert len(at.get("progress")) == 1  # the run panel follows it from the start
        wait_for(at, lambda a: any(s.value.startswith("Done: 6 points") for s in a.success), timeout=240)
        assert store.run(run_id)["world_size"] == 2
        assert any("· 2 processes (torchrun)" in c.value for c in at.caption)
        assert "6/6 points (100%)" in jobs.log_tail(job.id)  # rank 0's progress over every rank's points
    finally:
        _finish_jobs(tmp_path)


def _processes_widget() -> None:
    """The processes widget alone, on the device named in session state, as the Certify page draws it."""
    import sys
    from pathlib import Path

    import streamlit as st

    sys.path.insert(0, str(Path(st.session_state["root"])))
    from pages._ui.sequential_section import processes_input

    errors: list[str] = []
    value = processes_input(False, errors, lambda *args, **kwargs: None, st.session_state["device"], st)
    st.markdown(f"value {value!r}")
    for line in errors:
        st.error(line)


@pytest.mark.parametrize(("gpus", "device", "default", "refused"), [
    (2, "auto", 2, None),  # one process per GPU by default
    (2, "cuda", 2, None),
    (2, "cuda:1", 1, "processes = 2 needs device auto, cpu or cuda (each process takes a GPU of its own), not cuda:1"),
    (2, "cpu", 1, None),
    (0, "auto", 1, None),  # no GPU: the CPU's cores
])
def test_processes_default_to_one_per_gpu_and_need_a_device_each_process_can_take(monkeypatch, gpus, device,
                                                                                   default, refused):
    from apptest_support import ROOT
    from streamlit.testing.v1 import AppTest

    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)  # as on a machine with that many GPUs
    at = AppTest.from_function(_processes_widget, default_timeout=60)
    at.session_state["root"], at.session_state["device"] = str(ROOT), device
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    widget = at.number_input(key="processes")
    limit = gpus if gpus and device != "cpu" else (os.cpu_count() or 1)
    assert widget.value == default and widget.label.startswith(f"processes (1 to {limit};")
    widget.set_value(2 if limit >= 2 else 1).run()
    assert [e.value for e in at.error] == ([refused] if refused else [])
    widget.set_value(limit + 1).run()
    unit = "GPUs" if gpus and device != "cpu" else "CPU cores"
    assert [e.value for e in at.error] == [f"processes = {limit + 1} is outside [1, {limit}] ({unit} here)"]
