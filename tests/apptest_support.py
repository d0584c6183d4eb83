"""What the AppTest suites of the dashboard share: isolated state, opening a page, decoding its figures."""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from smoothviz import data, models

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120  # a page's first run imports torch and may train the playground's MLP


@pytest.fixture(autouse=True)
def fresh_app_state(tmp_path, monkeypatch):
    """A temporary results store per test, and no cache shared between tests. Exceptions show in
    full under test (the served dashboard shows only their type), so a failure says what broke."""
    from streamlit import config

    monkeypatch.setenv("SMOOTHVIZ_DB", str(tmp_path / "runs" / "test.db"))
    before = config.get_option("client.showErrorDetails")
    config.set_option("client.showErrorDetails", "full")
    st.cache_data.clear()
    st.cache_resource.clear()
    yield
    st.cache_data.clear()
    st.cache_resource.clear()
    config.set_option("client.showErrorDetails", before)


def open_page(page: str, **query: str) -> AppTest:
    """The app after its first run, switched to ``page`` with ``query`` in the URL (``app.py``: the
    entry page, opened with ``query``)."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    if page == "app.py":
        for key, value in query.items():
            at.query_params[key] = value
    at.run()
    if page != "app.py":
        at.switch_page(page)
        for key, value in query.items():
            at.query_params[key] = value
        at.run()
    return at


def wait_for(at: AppTest, done, timeout: float = 120.0, poll: float = 0.5) -> None:
    """Rerun ``at`` (AppTest's timers never fire) until ``done(at)`` holds; fails after ``timeout`` s."""
    import time

    end = time.monotonic() + timeout
    while not done(at):
        if time.monotonic() > end:
            raise AssertionError(f"still waiting after {timeout:.0f} s; page says: "
                                 f"{[e.value for e in (*at.error, *at.warning, *at.info, *at.success)]}")
        time.sleep(poll)
        at.run()


def _decode(value):
    """Plotly 6 sends numeric arrays as {"dtype", "bdata"(, "shape")}; turn them back into lists."""
    if isinstance(value, dict) and "bdata" in value and "dtype" in value:
        arr = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        if "shape" in value:
            arr = arr.reshape([int(n) for n in str(value["shape"]).split(",")])
        return arr.tolist()
    if isinstance(value, dict):
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def plotly_figures(at: AppTest) -> list[dict]:
    """Every plotly chart on the page as a figure dict with plain lists, so tests can read its numbers."""
    return [_decode(json.loads(el.proto.spec)) for el in at.get("plotly_chart")]


def save_digits_checkpoint(folder: Path, monkeypatch: pytest.MonkeyPatch, sigma: str, r: float) -> Path:
    """An untrained digits MLP saved in ``folder`` as if trained with ``sigma``; the pages look only there."""
    info = data.DATASET_INFO["digits"]
    folder.mkdir()
    model = models.build_model("mlp", info.input_shape, info.num_classes)
    models.save_checkpoint(folder / "digits-mlp.pt", model, {
        "dataset": "digits", "arch": "mlp", "input_shape": list(info.input_shape),
        "num_classes": info.num_classes, "sigma": sigma, "sigma_params": {}, "r": r,
    })
    monkeypatch.setenv("SMOOTHVIZ_CHECKPOINTS", str(folder))
    return folder / "digits-mlp.pt"


# ---------------------------------------------------------------- hostile state shared by the page suites
HOSTILE_QUERY_VALUES = (
    "", " ", "-1", "0", "1e309", "-1e309", "nan", "inf", "9223372036854775808", "1.5", "abc",
    "../../etc/passwd", "/etc/passwd", "%00", "\x00", "a" * 5000, "knn:0.25,0.4,5000",
    "knn:1,1e9,5", "constant:0.0001", "constant:1e308", "knn:0.25,0.4,20,min=0.00001", "1,2,x,-3",
)


def number(raw: str) -> float | None:
    """The finite number a hostile link value ``raw`` spells, or None (what a page may apply as it is)."""
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def hostile_store(db: Path, tmp: Path) -> dict[str, int]:
    """A store holding one run of every kind a user meets: done, imported, running (a live process on
    this host), cancelled and failed part-way, interrupted (running, its process gone), pending and
    empty. Returns the run ids by state; the caller stops ``running_pid`` (see ``stop_running``)."""
    import os
    import socket
    import subprocess
    import sys

    from smoothviz.store import Store, import_cohen_log

    store = Store(db)

    def make(name: str, status: str, points: int, done: int, spec: str = "constant:0.25", r: float = 0.0) -> int:
        run_id = store.create_run(name, "digits", "test", None, spec, {}, r, 100, 1000, 0.001, "cpu",
                                  list(range(points)), 0, 256)
        for i in range(done):
            correct = i % 4 != 0
            store.add_result(run_id, {
                "idx": i, "label": i % 10, "predict": i % 10 if correct else -1, "correct": correct,
                "p_a_lower": 0.95, "sigma": 0.25, "radius": 0.3 if correct else 0.0,
                "naive_radius": 0.4 if correct else 0.0, "counts": [0] * 10, "seconds": 0.01,
            })
        if status != "pending":
            store.set_status(run_id, status, f"{status} in the test fixture")
        return run_id

    ids = {
        "done": make("done run", "done", 12, 12),
        "knn": make("knn run", "done", 12, 12, "knn:0.25,0.05,20,m=1.5", 0.05),
        "cancelled": make("cancelled run", "cancelled", 12, 5),
        "failed": make("failed run", "failed", 12, 3),
        "pending": make("pending run", "pending", 12, 0),
        "empty": make("empty done run", "done", 12, 0),
    }
    log = tmp / "imported.tsv"
    log.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t3\t3\t0.42\t1\t0:00:01.5\n"
                   "1\t7\t-1\t0.0\t0\t1.25\n2\t1\t1\t0.1\t1\t0.5\n")
    ids["imported"] = import_cohen_log(store, log, "imported log", "digits", "0.25")
    # interrupted: recorded as running by a process of this host that no longer exists
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ids["interrupted"] = make("interrupted run", "pending", 12, 2)
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    ids["running"] = make("running run", "pending", 12, 4)
    with store._write() as c:  # the run's process is the live sleeper (or the dead one) on this host
        for key, pid in (("interrupted", dead.pid), ("running", running.pid)):
            c.execute("UPDATE runs SET status='running', pid=?, host=?, started=? WHERE id=?",
                      (pid, socket.gethostname(), os.path.getmtime(db), ids[key]))
    ids["running_pid"] = running.pid
    store.close()
    return ids


def stop_running(ids: dict[str, int]) -> None:
    """Stop the live process that ``hostile_store`` recorded as executing the running run."""
    import os
    import signal

    try:
        os.kill(ids["running_pid"], signal.SIGKILL)
        os.waitpid(ids["running_pid"], 0)
    except (ProcessLookupError, ChildProcessError):
        pass
