"""Background jobs: real CLI subprocesses started, followed, cancelled and found again from their files."""

from __future__ import annotations

import os
import time

import pytest

from smoothviz import data, models
from smoothviz.errors import InvalidArgument
from smoothviz.jobs import CANCELLED, DONE, FAILED, RUNNING, JobManager, certify_job_id
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
