"""Background jobs: real CLI subprocesses started, followed, cancelled and found again from their files."""

from __future__ import annotations

import os
import time

import pytest

from smoothviz import data, models
from smoothviz.errors import InvalidArgument
from smoothviz.jobs import (
    CANCELLED, DONE, FAILED, RUNNING, EngineProgress, JobManager, certify_job_id, live_progress, parse_progress_line,
)
from smoothviz.store import Store

BOUND_ARGS = ["bound", "--sigma0", "0.25", "--sigma1", "0.26", "--distance", "0.1", "--pa", "0.9", "--dim", "64"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def test_finished_and_failed_jobs_are_found_by_a_new_manager(tmp_path):
    jobs = JobManager(tmp_path / "jobs")
    ok = jobs.start("bound", BOUND_ARGS, job_id="bound-1")
    bad = jobs.start("bound", [*BOUND_ARGS[:-4], "--pa", "2", "--dim", "64"])  # both run at once
    assert jobs.wait(ok.id, timeout=120).status == DONE
    failed = jobs.wait(bad.id, timeout=120)
    assert failed.status == FAILED and failed.returncode == 2
    assert "--pa" in jobs.log_tail(bad.id)
    again = JobManager(tmp_path / "jobs").get("bound-1")  # as after a browser reload or a server restart
    assert again is not None and again.status == DONE and again.returncode == 0
    assert '"bound"' in jobs.log_tail("bound-1")
    assert sorted(j.id for j in jobs.jobs()) == sorted([ok.id, bad.id])


def test_unknown_and_malformed_job_ids(tmp_path):
    jobs = JobManager(tmp_path)
    assert jobs.get("nothing-here") is None
    with pytest.raises(InvalidArgument):
        jobs.get("../escape")


def test_cancel_a_running_training_job_from_a_fresh_manager(tmp_path):
    progress = tmp_path / "progress.json"
    jobs = JobManager(tmp_path / "jobs")
    job = jobs.start(
        "train",
        ["train", "--dataset", "digits", "--arch", "mlp", "--epochs", "100000", "--device", "cpu",
         "--out", str(tmp_path / "m.pt"), "--progress-file", str(progress), "--no-resume"],
        progress_file=progress,
    )
    end = time.monotonic() + 120
    while jobs.read_progress(job.id) is None and time.monotonic() < end:
        time.sleep(0.2)
    reloaded = JobManager(tmp_path / "jobs")  # as after a server restart: no Popen handle
    assert reloaded.get(job.id).status == RUNNING
    assert reloaded.read_progress(job.id)["status"] == "running"
    assert reloaded.cancel(job.id)
    final = reloaded.wait(job.id, timeout=60)
    assert final.status == CANCELLED
    assert not _alive(job.pid)
    assert not reloaded.cancel(job.id)  # nothing left to cancel


@pytest.fixture(scope="module")
def digits_checkpoint(tmp_path_factory):
    """An untrained digits MLP: the certify machinery does not care how good the model is."""
    info = data.DATASET_INFO["digits"]
    path = tmp_path_factory.mktemp("ckpt") / "digits-mlp.pt"
    model = models.build_model("mlp", info.input_shape, info.num_classes)
    models.save_checkpoint(path, model, {
        "dataset": "digits", "arch": "mlp", "input_shape": list(info.input_shape),
        "num_classes": info.num_classes, "sigma": "constant:0.25", "sigma_params": {"kind": "constant", "sigma": 0.25},
        "r": 0.0,
    })
    return path


def _certify_run(store: Store, ckpt, indices, n) -> int:
    return store.create_run("job test", "digits", "test", str(ckpt), "constant:0.25",
                            {"kind": "constant", "sigma": 0.25}, 0.0, 10, n, 0.001, "cpu", indices, 0, 200)


def test_certify_job_runs_a_store_run_to_completion(tmp_path, digits_checkpoint):
    db = tmp_path / "runs.db"
    store = Store(db)
    run_id = _certify_run(store, digits_checkpoint, [0, 1, 2], 200)
    jobs = JobManager(tmp_path / "jobs")
    job = jobs.start_certify(run_id, db)
    assert job.id == certify_job_id(run_id)
    assert jobs.start_certify(run_id, db).pid == job.pid  # a second start while running is the same job
    final = jobs.wait(job.id, timeout=180)
    assert final.status == DONE, jobs.log_tail(job.id)
    assert store.run(run_id)["status"] == "done"
    assert sorted(store.results(run_id)["idx"]) == [0, 1, 2]


def test_cancel_certify_job_marks_the_run_cancelled(tmp_path, digits_checkpoint):
    db = tmp_path / "runs.db"
    store = Store(db)
    run_id = _certify_run(store, digits_checkpoint, list(range(300)), 20000)
    jobs = JobManager(tmp_path / "jobs")
    job = jobs.start_certify(run_id, db)
    end = time.monotonic() + 120
    while store.run(run_id)["status"] != "running" and time.monotonic() < end:
        time.sleep(0.2)
    assert jobs.cancel(job.id, grace_s=20.0)
    final = jobs.wait(job.id, timeout=60)
    assert final.status == CANCELLED
    end = time.monotonic() + 30
    while store.run(run_id)["status"] not in ("cancelled", "interrupted") and time.monotonic() < end:
        time.sleep(0.2)
    assert store.run(run_id)["status"] == "cancelled"
    assert len(store.results(run_id)) < 300


# ---------------------------------------------------------------- progress of a certify job
def _bar_lines(infos: list[dict]) -> str:
    """What the CLI's progress bar writes into a job log for these engine reports."""
    import io

    from smoothviz.progress import ProgressBar

    out = io.StringIO()
    bar = ProgressBar("points", stream=out, min_interval=0.0)
    for info in infos:
        bar(info)
    return out.getvalue()


def test_the_latest_progress_line_of_a_log_is_parsed_with_the_fraction_within_points():
    log = "run 3: resuming\n" + _bar_lines([
        {"done": 0, "total": 50, "fraction": 0.0},
        {"done": 3, "total": 50, "fraction": 0.07, "rate": 1.25, "eta": 40.4},
    ]) + "some warning printed by a library\n"
    got = parse_progress_line(log)
    assert (got.done, got.total) == (3, 50)
    assert got.fraction == pytest.approx(0.07)
    assert got.rate == pytest.approx(1.25) and got.eta_s == 40.0
    # a line still being written is not read; an earlier complete one is
    assert parse_progress_line(log + "[####---- 4/5") == got
    assert parse_progress_line("no progress yet\n") is None
    assert parse_progress_line(_bar_lines([{"done": 1, "total": 2}])[:-1]) is None  # no newline yet


def test_live_progress_of_a_resumed_run_counts_stored_points_and_samples_in_flight():
    # 20 of 50 points were stored before; this session's engine has 30 to do and has finished 3
    # of them plus 40% of the next point's samples
    engine = EngineProgress(done=3, total=30, fraction=3.4 / 30, rate=1.5, eta_s=20.0)
    view = live_progress(total=50, stored=23, samples_per_point=10_100, engine=engine)
    assert view.done == 23 and view.total == 50
    assert view.fraction == pytest.approx(23.4 / 50)
    assert view.point_samples == round(0.4 * 10_100)
    text = view.text()
    assert text.startswith("23/50 points (47%)") and f"{round(0.4 * 10_100):,} samples in flight" in text
    assert "1.5 points/s" in text and "ETA 0:00:20" in text
    # before the engine has said anything: what the store knows, and that it is starting
    waiting = live_progress(total=50, stored=20, samples_per_point=10_100, engine=None)
    assert (waiting.done, waiting.fraction, waiting.started) == (20, 0.4, False)
    assert "starting" in waiting.text()
    # a run executed elsewhere (the command line): only the store's count and rate are known
    elsewhere = live_progress(total=50, stored=20, samples_per_point=10_100, engine=None, store_rate=2.0,
                              store_eta=15.0, starting=False)
    assert elsewhere.text() == "20/50 points (40%) · 2 points/s · ETA 0:00:15"
    # one point with a large n: the bar moves before the point is stored
    single = live_progress(total=1, stored=0, samples_per_point=1_000_100,
                           engine=EngineProgress(0, 1, 0.25, 0.01, 75.0))
    assert single.fraction == pytest.approx(0.25) and single.text().startswith("0/1 point (25%)")


def test_starting_a_certify_job_marks_the_run_pending_at_once(tmp_path, digits_checkpoint):
    db = tmp_path / "runs.db"
    store = Store(db)
    run_id = _certify_run(store, digits_checkpoint, [0, 1], 200)
    store.set_status(run_id, "cancelled", "cancelled after 0 of 2 points")
    jobs = JobManager(tmp_path / "jobs")
    job = jobs.start_certify(run_id, db)
    assert store.run(run_id)["status"] in ("pending", "running")  # not the previous attempt's "cancelled"
    assert jobs.wait(job.id, timeout=180).status == DONE, jobs.log_tail(job.id)
    assert store.run(run_id)["status"] == "done"


def test_a_run_executed_by_another_process_is_not_started_twice(tmp_path, digits_checkpoint):
    import socket
    import subprocess
    import sys

    from smoothviz.errors import StoreError

    db = tmp_path / "runs.db"
    store = Store(db)
    run_id = _certify_run(store, digits_checkpoint, [0], 200)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        with store._write() as c:  # as the command line records a run it executes
            c.execute("UPDATE runs SET status='running', pid=?, host=? WHERE id=?",
                      (other.pid, socket.gethostname(), run_id))
        with pytest.raises(StoreError, match="already being executed"):
            JobManager(tmp_path / "jobs").start_certify(run_id, db)
        assert not (tmp_path / "jobs" / f"{certify_job_id(run_id)}.json").exists()
    finally:
        other.kill()
        other.wait()


def test_resuming_right_after_a_cancel_is_not_stopped_by_that_cancel(tmp_path, digits_checkpoint):
    """The cancel's follow-up (terminate after a grace period) must only ever hit its own process."""
    db = tmp_path / "runs.db"
    store = Store(db)
    run_id = _certify_run(store, digits_checkpoint, list(range(300)), 50000)
    jobs = JobManager(tmp_path / "jobs")
    first = jobs.start_certify(run_id, db)
    end = time.monotonic() + 120
    while store.run(run_id)["status"] != "running" and time.monotonic() < end:
        time.sleep(0.2)
    grace = 8.0
    assert jobs.cancel(first.id, grace_s=grace)
    end = time.monotonic() + 60
    while store.run(run_id)["status"] != "cancelled" and time.monotonic() < end:
        time.sleep(0.05)
    # Resume as soon as the page can offer it: the first process may still be exiting, and the
    # first cancel's grace period is still running
    second = jobs.start_certify(run_id, db)
    try:
        assert second.pid != first.pid
        assert jobs.get(first.id).pid == second.pid and not _alive(first.pid)
        # past the grace period and the follow-up's own wait for the process it stopped
        end = time.monotonic() + grace + 12
        while time.monotonic() < end:
            assert jobs.get(second.id).status == RUNNING, jobs.log_tail(second.id)
            assert store.run(run_id)["status"] in ("pending", "running")
            time.sleep(0.5)
    finally:
        jobs.cancel(second.id, grace_s=0.0)
        jobs.wait(second.id, timeout=30)
