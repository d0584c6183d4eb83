"""Dashboard pages under Streamlit's AppTest: every page renders, widgets drive the figures."""

from __future__ import annotations

import time

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from apptest_support import ROOT, open_page, save_digits_checkpoint
from apptest_support import plotly_figures as figures
from apptest_support import fresh_app_state  # noqa: F401  (autouse: a temporary store, no shared caches)
from smoothviz import bounds, data
from smoothviz.jobs import JobManager, certify_job_id
from smoothviz.store import Store

PAGE_FILES = ["app.py"] + sorted(f"pages/{p.name}" for p in (ROOT / "pages").glob("*.py") if p.name != "__init__.py")


def figure(at: AppTest, title_start: str) -> dict:
    found = [f for f in figures(at) if f["layout"].get("title", {}).get("text", "").startswith(title_start)]
    assert found, f"no figure titled {title_start!r}: {[f['layout'].get('title') for f in figures(at)]}"
    return found[0]


def fake_run(store: Store, spec: str, r: float, sigma: float, n: int = 1000, alpha: float = 0.001,
             points: int = 30) -> int:
    """A finished run with synthetic per-point results (the pages only read the store)."""
    rng = np.random.default_rng(int(r * 1000) + points)
    run_id = store.create_run(f"fake {spec}", "digits", "test", None, spec, {}, r, 100, n, alpha, "cpu",
                              list(range(points)), 0, 100)
    for i in range(points):
        correct = bool(i % 5)
        naive = float(rng.uniform(0, 0.6))
        store.add_result(run_id, {
            "idx": i, "label": i % 10, "predict": i % 10 if correct else -1, "correct": correct,
            "p_a_lower": 0.9, "sigma": sigma, "radius": naive * (0.7 if r else 1.0), "naive_radius": naive,
            "counts": [0] * 10, "seconds": 0.01,
        })
    store.set_status(run_id, "done")
    return run_id


@pytest.mark.parametrize("page", PAGE_FILES)
def test_every_page_renders_without_exception(page):
    at = open_page(page)
    assert not at.exception, [e.message for e in at.exception]


def test_overview_explains_and_reports_an_empty_store():
    at = open_page("app.py")
    assert len(at.get("latex")) >= 3
    assert any("No runs yet" in el.value for el in at.info)


def test_theory_dimension_choice_drives_the_figures():
    at = open_page("pages/1_Theory.py")
    radius_fig = figure(at, "Sound radius vs semi-elasticity")
    assert [t["name"] for t in radius_fig["data"]] == ["N = 64", "N = 784", "N = 3,072", "N = 150,528"]
    worst = figure(at, "Worst case")
    cohen_trace = next(t for t in worst["data"] if t["name"] == "σ₁/σ₀ = 1")
    assert cohen_trace["y"][0] == pytest.approx(0.99, abs=1e-9)  # no distance, same sigma: p_A itself

    at.selectbox(key="preset").set_value("custom").run()
    at.number_input(key="dim").set_value(1000).run()
    assert not at.exception
    radius_fig = figure(at, "Sound radius vs semi-elasticity")
    assert "N = 1,000" in [t["name"] for t in radius_fig["data"]]
    band = figure(at, "Admissible")
    assert any(s.get("x0") == 1000 for s in band["layout"]["shapes"])

    at.number_input(key="pa").set_value(0.9).run()
    worst = figure(at, "Worst case")
    cohen_trace = next(t for t in worst["data"] if t["name"] == "σ₁/σ₀ = 1")
    assert cohen_trace["y"][0] == pytest.approx(0.9, abs=1e-9)
    # the worst case at ratio 0.95 in N = 1000 starts below p_A (variance change alone costs probability)
    low_trace = next(t for t in worst["data"] if t["name"] == "σ₁/σ₀ = 0.95")
    expected = bounds.worst_case_probability(0.25, 0.25 * 0.95, 0.0, 0.9, 1000)
    assert low_trace["y"][0] == pytest.approx(float(expected), rel=1e-9)


def test_theory_reads_its_state_from_the_url():
    at = open_page("pages/1_Theory.py", preset="digits", sigma0="0.5")
    assert at.selectbox(key="preset").value == "digits"
    assert at.slider(key="sigma0").value == pytest.approx(0.5)
    band = figure(at, "Admissible")
    assert any(s.get("x0") == 64 for s in band["layout"]["shapes"])


def test_compare_shows_each_runs_ceiling_and_flags_input_dependent_runs(tmp_path):
    store = Store(tmp_path / "runs" / "test.db")
    const = fake_run(store, "constant:0.25", 0.0, 0.25, n=1000)
    knn = fake_run(store, "knn:0.5,0.05,20", 0.05, 0.5, n=500)
    at = open_page("pages/3_Compare_runs.py", runs=f"{const},{knn}")
    assert not at.exception, [e.message for e in at.exception]
    assert at.multiselect(key="runs_pick").value == [const, knn]
    water = figure(at, "Certified accuracy vs radius")
    ceilings = {t["name"]: t["x"][0] for t in water["data"] if t["name"].startswith("ceiling")}
    assert ceilings[f"ceiling #{const} fake constant:0.25"] == pytest.approx(
        float(bounds.waterfall_ceiling(0.25, 1000, 0.001)))
    assert ceilings[f"ceiling #{knn} fake knn:0.5,0.05,20"] == pytest.approx(
        float(bounds.waterfall_ceiling(0.5, 500, 0.001)))
    scatter = figure(at, "Sound vs naive radius per point")
    assert [t["name"] for t in scatter["data"]][:-1] == [f"#{knn} fake knn:0.5,0.05,20"]
    assert len(at.get("download_button")) == 2

    at.multiselect(key="runs_pick").set_value([const]).run()
    assert not any(f["layout"]["title"]["text"].startswith("Sound vs naive radius per point") for f in figures(at))


def test_compare_on_an_empty_store_says_how_to_start():
    at = open_page("pages/3_Compare_runs.py")
    assert not at.exception
    assert any("no runs yet" in el.value for el in at.info)


@pytest.fixture
def digits_checkpoint(tmp_path, monkeypatch):
    """An untrained digits MLP whose metadata says it was trained with a kNN sigma of small r."""
    return save_digits_checkpoint(tmp_path / "ckpt", monkeypatch, "knn:0.3,0.02,10", 0.02)


def test_certify_defaults_from_checkpoint_and_validates(digits_checkpoint):
    at = open_page("pages/2_Certify.py")
    assert not at.exception, [e.message for e in at.exception]
    ck = at.selectbox(key="ckpt").value
    assert ck.endswith("digits-mlp.pt")
    assert at.radio(key=f"kind@{ck}").value == "knn"  # the checkpoint was trained with knn sigma
    assert at.number_input(key=f"sigma_b@{ck}").value == pytest.approx(0.3)
    assert at.number_input(key=f"r@{ck}").value == pytest.approx(0.02)
    hist = figure(at, "σ(x) on the chosen test points")
    assert len(hist["data"][0]["x"]) == 20
    assert not at.button(key="run_button").disabled

    at.number_input(key="n0").set_value(5000).run()
    assert any("n0 = 5000 must not exceed n = 1000" in e.value for e in at.error)
    assert at.button(key="run_button").disabled

    at.number_input(key="n0").set_value(100).run()
    at.text_input(key="indices").set_value("3-5,9999").run()
    assert any("outside the split" in e.value for e in at.error)
    at.text_input(key="indices").set_value("3-5").run()
    assert len(figure(at, "σ(x) on the chosen test points")["data"][0]["x"]) == 3


def test_certify_shows_a_finished_run_from_the_url(tmp_path):
    store = Store(tmp_path / "runs" / "test.db")
    run_id = fake_run(store, "constant:0.25", 0.0, 0.25)
    at = open_page("pages/2_Certify.py", run=str(run_id))
    assert not at.exception, [e.message for e in at.exception]
    assert any("Done: 30 points" in s.value for s in at.success)
    assert figure(at, "Certified accuracy vs radius")


def test_certify_follows_a_running_job_and_cancels_it(tmp_path, digits_checkpoint):
    db = tmp_path / "runs" / "test.db"
    store = Store(db)
    run_id = store.create_run("live", "digits", "test", str(digits_checkpoint), "constant:0.25",
                              {"kind": "constant", "sigma": 0.25}, 0.0, 10, 200_000, 0.001, "cpu",
                              list(range(200)), 0, 4096)
    jobs = JobManager(db.parent / "jobs")  # the folder the page's own manager uses
    job = jobs.start_certify(run_id, db)
    try:
        end = time.monotonic() + 120
        while store.run(run_id)["status"] != "running" and time.monotonic() < end:
            time.sleep(0.2)
        at = open_page("pages/2_Certify.py", run=str(run_id))
        assert not at.exception, [e.message for e in at.exception]
        assert len(at.get("progress")) == 1
        assert any(f"run #{run_id} is certifying" in link.proto.label for link in at.sidebar.get("page_link"))
        at.button(key=f"cancel{run_id}").click().run()
        end = time.monotonic() + 90
        while time.monotonic() < end and not any("cancelled" in w.value for w in at.warning):
            time.sleep(0.5)
            at.run()
        assert any("cancelled" in w.value for w in at.warning), [w.value for w in at.warning]
        assert at.button(key=f"resume{run_id}")  # a cancelled run can be resumed
        assert jobs.wait(job.id, timeout=30).status == "cancelled"
    finally:
        jobs.cancel(job.id, grace_s=0.0)


def test_compare_imports_a_reference_log_and_rejects_a_bad_one(tmp_path):
    at = open_page("pages/3_Compare_runs.py")
    bad = b"idx\tlabel\tpredict\n0\t1\t1\n"
    at.file_uploader(key="upload").set_value(("bad.tsv", bad, "text/tab-separated-values")).run()
    at.button(key="import_button").click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert any("expected the tab-separated header" in e.value for e in at.error)

    log = "idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t3\t3\t0.42\t1\t0:00:01.5\n20\t7\t-1\t0.0\t0\t1.25\n"
    at.file_uploader(key="upload").set_value(("cohen.tsv", log.encode(), "text/tab-separated-values")).run()
    at.text_input(key="import_sigma").set_value("0.25").run()
    at.button(key="import_button").click().run()
    assert not at.exception, [e.message for e in at.exception]
    store = Store(tmp_path / "runs" / "test.db")
    runs = store.runs()
    assert len(runs) == 1 and runs.loc[0, "name"] == "cohen"
    results = store.results(int(runs.loc[0, "id"]))
    assert results["radius"].tolist() == [0.42, 0.0] and results["correct"].tolist() == [True, False]
    assert at.multiselect(key="runs_pick").value == [int(runs.loc[0, "id"])]


def test_overview_lists_the_runs_in_the_store(tmp_path):
    store = Store(tmp_path / "runs" / "test.db")
    fake_run(store, "constant:0.25", 0.0, 0.25)
    at = open_page("app.py")
    assert not at.exception
    table = at.dataframe[0].value
    assert table["name"].tolist() == ["fake constant:0.25"] and table["status"].tolist() == ["done"]


def test_certify_reports_a_missing_dataset_without_traceback(tmp_path, monkeypatch):
    def offline(name, root):
        raise OSError("no network in this test")

    monkeypatch.setattr(data, "_download", offline)  # deterministic offline, even where CI has a network
    monkeypatch.setenv("SMOOTHVIZ_DATA", str(tmp_path / "no-data"))
    data.clear_cache()
    at = open_page("pages/2_Certify.py", dataset="cifar10")
    assert not at.exception, [e.message for e in at.exception]
    assert any("cifar10 not found" in e.value and "no network" in e.value for e in at.error)
    assert not at.get("plotly_chart")


def test_certify_cancels_a_recorded_run_that_no_process_executes(tmp_path):
    store = Store(tmp_path / "runs" / "test.db")
    run_id = store.create_run("never started", "digits", "test", None, "constant:0.25", {}, 0.0, 10, 100, 0.001,
                              "cpu", [0, 1], 0, 100)
    at = open_page("pages/2_Certify.py", run=str(run_id))
    assert any("no process is executing it" in i.value for i in at.info)
    at.button(key=f"cancel{run_id}").click().run()
    assert store.run(run_id)["status"] == "cancelled"
    at.run()
    assert any("cancelled after 0 of 2 points" in w.value for w in at.warning)


# ---------------------------------------------------------------- Overview: examples, the picture, managing runs
def test_overview_loads_the_example_runs_in_one_click(tmp_path):
    from smoothviz.examples import read_examples

    at = open_page("app.py")
    assert any("No runs yet" in el.value for el in at.info)
    at.button(key="examples_overview").click().run()
    assert not at.exception, [e.message for e in at.exception]
    expected = read_examples()
    assert any(s.value.startswith(f"Loaded {len(expected)} example runs") for s in at.success)
    table = at.dataframe[0].value
    assert sorted(table["kind"]) == ["example"] * len(expected)
    store = Store(tmp_path / "runs" / "test.db")
    assert sorted(store.runs()["name"]) == sorted(e["config"]["name"] for e in expected)
    links = [link.proto for link in at.get("page_link") if link.proto.label.startswith("Compare the example runs")]
    assert len(links) == 1
    linked = {int(i) for i in links[0].query_string.split("=", 1)[1].replace("%2C", ",").split(",")}
    assert linked == set(store.runs()["id"])


def test_overview_draws_what_a_certificate_means():
    from scipy.stats import norm

    at = open_page("app.py")
    fig = figure(at, "What a certificate means")
    traces = {t["name"].split(",")[0]: t for t in fig["data"]}
    ball = traces["certified ball"]
    radius = float(np.hypot(ball["x"][0], ball["y"][0]))
    sigma, p_a = 0.5, 0.9  # the figure's title states them
    assert f"σ = {sigma:g}, p_A = {p_a:g}" in fig["layout"]["title"]["text"]
    assert radius == pytest.approx(sigma * norm.ppf(p_a), rel=1e-9)
    assert np.allclose(np.hypot(ball["x"], ball["y"]), radius)
    boundary = traces["decision boundary of the base classifier"]
    assert boundary["x"] == pytest.approx([radius, radius])  # the ball touches the boundary
    adversarial = next(t for name, t in traces.items() if name.startswith("adversarial point"))
    assert float(np.hypot(adversarial["x"][-1], adversarial["y"][-1])) > radius
    assert adversarial["x"][-1] > radius  # beyond the boundary: classified B
    a, b = (len(traces[f"noisy copy → class {c}"]["x"]) for c in "AB")
    assert abs(a / (a + b) - p_a) < 4 * np.sqrt(p_a * (1 - p_a) / (a + b))


# ---------------------------------------------------------------- Certify: starting, cancelling, resuming
def _start_from_the_page(at: AppTest) -> None:
    at.button(key="run_button").click().run()
    assert not at.exception, [e.message for e in at.exception]


def test_rapid_clicks_on_run_create_one_run(tmp_path, digits_checkpoint):
    store = Store(tmp_path / "runs" / "test.db")
    jobs = JobManager(tmp_path / "runs" / "jobs")
    at = open_page("pages/2_Certify.py", points="3", n0="10", n="100")
    try:
        for _ in range(3):  # the same configuration again and again while it is pending or running
            _start_from_the_page(at)
        runs = store.runs()
        assert len(runs) == 1, runs[["id", "status"]]
        assert at.query_params["run"] == str(runs.loc[0, "id"])
    finally:
        for job in jobs.jobs():
            jobs.cancel(job.id, grace_s=0.0)
            jobs.wait(job.id, timeout=30)


def test_cancel_then_resume_shows_the_new_jobs_progress_until_done(tmp_path, digits_checkpoint):
    from apptest_support import wait_for

    store = Store(tmp_path / "runs" / "test.db")
    jobs = JobManager(tmp_path / "runs" / "jobs")
    at = open_page("pages/2_Certify.py", points="40", n0="100", n="200000")
    try:
        _start_from_the_page(at)
        run_id = int(store.runs().loc[0, "id"])
        wait_for(at, lambda a: store.run(run_id)["done"] >= 1)
        at.button(key=f"cancel{run_id}").click().run()
        wait_for(at, lambda a: any("cancelled after" in w.value for w in a.warning))
        stored = store.run(run_id)["done"]
        assert 0 < stored < 40, "the run must be cancelled part-way for this test to mean anything"
        at.button(key=f"resume{run_id}").click().run()
        # at once: the new job's live progress, not the old job's cancelled state
        assert not at.exception, [e.message for e in at.exception]
        assert not any("cancelled" in w.value for w in at.warning)
        assert len(at.get("progress")) == 1
        assert store.run(run_id)["status"] in ("pending", "running")
        wait_for(at, lambda a: any(s.value.startswith("Done: 40 points") for s in a.success), timeout=240)
        rest = 40 - stored
        assert f"{rest}/{rest} points (100%)" in jobs.log_tail(certify_job_id(run_id))
        log = next(e for e in at.expander if e.label == "Job log")  # the Sweep section's expander follows it
        assert f"{rest}/{rest} points (100%)" in log.code[0].value
    finally:
        for job in jobs.jobs():
            jobs.cancel(job.id, grace_s=0.0)
            jobs.wait(job.id, timeout=30)


def test_a_run_that_has_ended_is_not_called_running_while_its_process_exits(tmp_path):
    """The job's process may outlive the run's end by a moment; the store's status decides."""
    import json
    import subprocess
    import sys

    db = tmp_path / "runs" / "test.db"
    store = Store(db)
    run_id = fake_run(store, "constant:0.25", 0.0, 0.25)
    exiting = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        jobs_dir = db.parent / "jobs"
        jobs_dir.mkdir()
        (jobs_dir / f"{certify_job_id(run_id)}.json").write_text(json.dumps({
            "id": certify_job_id(run_id), "kind": "certify", "argv": [], "pid": exiting.pid,
            "started": time.time(), "run_id": run_id, "db": str(db)}))
        assert JobManager(jobs_dir).get(certify_job_id(run_id)).status == "running"
        at = open_page("pages/2_Certify.py", run=str(run_id))
        assert any(s.value.startswith("Done: 30 points") for s in at.success)
        assert not any("already running" in c.value for c in at.caption)
        assert not any("is certifying" in link.proto.label for link in at.sidebar.get("page_link"))
    finally:
        exiting.kill()
        exiting.wait()


# ---------------------------------------------------------------- serving
def test_the_dashboard_listens_on_localhost_unless_told_otherwise():
    import os
    import shutil
    import subprocess
    import tomllib

    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] in ("127.0.0.1", "localhost")
    assert config["client"]["showErrorDetails"] in ("type", "none")
    if shutil.which("make") is None:
        pytest.skip("make is not installed: the Makefile's run command cannot be checked")
    dry = subprocess.run(["make", "-n", "run"], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={k: v for k, v in os.environ.items() if k != "HOST"}).stdout
    command = next(line for line in dry.splitlines() if "streamlit run app.py" in line)
    assert "--server.address 127.0.0.1" in command or "--server.address localhost" in command
    wide = subprocess.run(["make", "-n", "run", "HOST=0.0.0.0"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout
    assert "--server.address 0.0.0.0" in wide and "WARNING" in wide


def test_overview_renames_a_run_and_deletes_one_only_after_confirmation(tmp_path):
    store = Store(tmp_path / "runs" / "test.db")
    first = fake_run(store, "constant:0.25", 0.0, 0.25)
    second = fake_run(store, "knn:0.5,0.05,20", 0.05, 0.5)
    at = open_page("app.py")
    at.selectbox(key="manage_run").set_value(first).run()
    at.text_input(key=f"rename_text{first}").set_value("  my constant run ").run()
    at.button(key="rename_button").click().run()
    assert store.run(first)["name"] == "my constant run"
    assert any("is now called 'my constant run'" in s.value for s in at.success)
    at.selectbox(key="manage_run").set_value(second).run()
    at.text_input(key=f"rename_text{second}").set_value("my constant run").run()
    at.button(key="rename_button").click().run()  # taken: refused in one line, nothing changes
    assert any("my constant run" in e.value and "already used" in e.value for e in at.error)
    assert store.run(second)["name"] == "fake knn:0.5,0.05,20"

    at.button(key="delete_button").click().run()
    assert any(w.value.startswith(f"Delete run #{second} ") for w in at.warning)
    at.button(key="delete_cancel").click().run()  # "Keep it"
    assert len(store.runs()) == 2
    at.button(key="delete_button").click().run()
    at.button(key="delete_confirm").click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert list(store.runs()["id"]) == [first]
    assert any(f"Run #{second} was deleted" in s.value for s in at.success)
    assert at.dataframe[0].value["id"].tolist() == [first]


def test_certify_estimates_the_time_before_run_and_warns_of_long_jobs(tmp_path, digits_checkpoint):
    import streamlit as st

    from smoothviz import cost
    from smoothviz.store import file_sha256

    at = open_page("pages/2_Certify.py", device="cpu", points="20", n0="100", n="1000")
    ck = at.selectbox(key="ckpt").value
    batch = at.number_input(key=f"batch@{ck}|cpu").value
    assert any(c.value.startswith("Estimated time: ") and "measured now" in c.value for c in at.caption)
    # a rate recorded for this checkpoint, device and batch is used as it is, and named
    rates = cost.rates_file(tmp_path / "runs" / "test.db")
    assert cost.record_rate(cost.rate_key(file_sha256(digits_checkpoint), "cpu", batch, {}), 1000.0, "this test",
                            rates)
    st.cache_data.clear()
    at.run()
    rate = cost.recorded_rate(cost.rate_key(file_sha256(digits_checkpoint), "cpu", batch, {}), rates)

    def estimate_line() -> str:
        return next(c.value for c in at.caption if c.value.startswith("Estimated time: "))

    assert estimate_line() == f"Estimated time: {cost.estimate_certify(20, 100, 1000, rate).text}"
    assert "recorded by this test" in estimate_line()
    assert not any("should take" in w.value for w in at.warning)

    at.number_input(key="n").set_value(1_000_000).run()  # 20 points x 1,000,100 samples at 1,000/s
    long = cost.estimate_certify(20, 100, 1_000_000, rate)
    assert long.long and not long.needs_flag
    assert any(w.value.startswith(f"This certification should take {cost.duration_text(long.seconds)}")
               for w in at.warning)
    assert not at.button(key="run_button").disabled

    at.number_input(key="n").set_value(100_000_000).run()  # more than a day
    assert cost.estimate_certify(20, 100, 100_000_000, rate).needs_flag
    assert any("more than a day" in e.value for e in at.error)
    assert at.button(key="run_button").disabled
    at.checkbox(key="allow_long").check().run()
    assert not at.button(key="run_button").disabled


@pytest.mark.parametrize(("spec", "refused"), [
    ("knn:0.25,100,20", True),  # exp(100 * (d - m)) leaves [SIGMA_MIN, SIGMA_MAX] on some points
    ("knn:0.25,100,20,min=0.01,max=10", False),  # clipped inside the range, yet spanning 1,000 x
])
def test_certify_warns_when_sigma_spans_absurd_values(digits_checkpoint, spec, refused):
    at = open_page("pages/2_Certify.py", sigma=spec)
    assert not at.exception, [e.message for e in at.exception]
    assert any("spans" in w.value and "smaller r" in w.value for w in at.warning), [w.value for w in at.warning]
    assert any("outside" in e.value for e in at.error) == refused
    assert at.button(key="run_button").disabled == refused


def test_certify_lists_checkpoints_that_cannot_be_used_with_their_reason(tmp_path, digits_checkpoint):
    (digits_checkpoint.parent / "broken.pt").write_bytes(b"not a torch file")
    at = open_page("pages/2_Certify.py")
    assert not at.exception, [e.message for e in at.exception]
    assert at.selectbox(key="ckpt").options == [str(digits_checkpoint)]  # only the usable one is offered
    box = next(e for e in at.expander if "cannot be used" in e.label)
    assert box.label.startswith("1 checkpoint ")
    lines = [m.value for m in box.markdown]
    assert len(lines) == 1 and "broken.pt" in lines[0] and "not a readable checkpoint" in lines[0]
