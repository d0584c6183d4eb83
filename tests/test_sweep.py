"""Sweeps (smoothviz.sweep and the store's sweep tables): the grid, the record, shared kNN
distances, execution, resume after kill -9, cancel."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from smoothviz.errors import InvalidArgument, StoreError
from smoothviz.store import Store


def _run_fields(name: str, spec: str = "constant:0.25", points: int = 3) -> dict:
    return {"name": name, "dataset": "digits", "split": "test", "checkpoint": None, "sigma_spec": spec,
            "sigma_params": {}, "r": 0.0, "n0": 10, "n": 100, "alpha": 0.001, "device": "cpu",
            "indices": list(range(points)), "seed": 0, "batch_size": None}


# ---------------------------------------------------------------------------------------------
# The store's sweep tables
# ---------------------------------------------------------------------------------------------


def test_store_records_a_sweep_with_its_runs_in_one_transaction(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    assert store.sweeps() == [] and store.find_sweep({"grid": 1}) is None
    cells = [({"sigma": 0.25}, _run_fields("a")), ({"sigma": 0.5}, _run_fields("b", "constant:0.5"))]
    sweep_id = store.create_sweep("grid", {"grid": 1}, {"shown": True}, cells)
    assert store.find_sweep({"grid": 1}) == sweep_id and store.find_sweep({"grid": 2}) is None
    record = store.sweep(sweep_id)
    assert record["status"] == "pending" and record["config"] == {"shown": True}
    assert [c["cell"] for c in record["cells"]] == [{"sigma": 0.25}, {"sigma": 0.5}]
    run_ids = [c["run_id"] for c in record["cells"]]
    assert [store.run(i)["name"] for i in run_ids] == ["a", "b"]
    assert (record["done"], record["total"], record["runs_done"]) == (0, 6, 0)
    assert store.sweep_of_run(run_ids[1]) == sweep_id

    # a refused cell (duplicate indices) writes nothing: no sweep, no run
    bad = [({"sigma": 1.0}, _run_fields("c")), ({"sigma": 2.0}, {**_run_fields("d"), "indices": [1, 1]})]
    with pytest.raises(InvalidArgument, match="duplicates"):
        store.create_sweep("bad", {"grid": 3}, {}, bad)
    assert len(store.sweeps()) == 1 and len(store.runs()) == 2


def test_cancel_flags_and_status_of_a_sweep(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    sweep_id = store.create_sweep("grid", {"g": 1}, {}, [({"i": i}, _run_fields(f"r{i}")) for i in range(3)])
    first, second, third = (c["run_id"] for c in store.sweep(sweep_id)["cells"])
    store.set_status(first, "done")
    store.request_sweep_cancel(sweep_id)
    assert store.sweep_cancel_requested(sweep_id)
    assert not store.cancel_requested(first)  # a finished run is left alone
    assert store.cancel_requested(second) and store.cancel_requested(third)
    store.set_sweep_status(sweep_id, "running")
    assert not store.sweep_cancel_requested(sweep_id) and store.sweep_executing(sweep_id)
    assert store.sweep(sweep_id)["pid"] is not None
    store.set_sweep_status(sweep_id, "cancelled", "stopped")
    assert store.sweep(sweep_id)["status"] == "cancelled" and not store.sweep_executing(sweep_id)
    with pytest.raises(InvalidArgument, match="status"):
        store.set_sweep_status(sweep_id, "paused")
    for bad in (99, "x", -1):
        with pytest.raises(StoreError, match="not found"):
            store.sweep(bad)


def test_deleting_a_child_run_leaves_its_cell_to_be_recreated(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    sweep_id = store.create_sweep("grid", {"g": 1}, {}, [({"i": i}, _run_fields(f"r{i}")) for i in range(2)])
    gone = store.sweep(sweep_id)["cells"][1]["run_id"]
    store.delete_run(gone)
    cell = store.sweep(sweep_id)["cells"][1]
    assert cell["run_id"] is None and cell["status"] is None
    with pytest.raises(StoreError, match="still has its run"):
        store.replace_sweep_run(sweep_id, 0, _run_fields("again"))
    new = store.replace_sweep_run(sweep_id, 1, _run_fields("r1"))
    assert new != gone and store.sweep(sweep_id)["cells"][1]["run_id"] == new
    with pytest.raises(StoreError, match="no cell"):
        store.replace_sweep_run(sweep_id, 5, _run_fields("x"))


def test_a_store_from_before_sweeps_stays_readable_and_gains_the_tables_on_first_use(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    with Store(db) as store:
        run_id = store.create_run(**_run_fields("old"))
    with sqlite3.connect(db) as c:
        tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert not tables & {"sweeps", "sweep_runs"}  # a plain store has no sweep tables
    with Store(db, create=False) as store:  # reading it writes nothing
        assert store.sweeps() == [] and store.sweep_of_run(run_id) is None
        assert store.run(run_id)["name"] == "old"
    with sqlite3.connect(db) as c:
        assert not {r[0] for r in c.execute("SELECT name FROM sqlite_master")} & {"sweeps", "sweep_runs"}
    with Store(db) as store:
        store.create_sweep("new", {"g": 1}, {}, [({"i": 0}, _run_fields("child"))])
        assert [s["name"] for s in store.sweeps()] == ["new"] and store.run(run_id)["name"] == "old"


# ---------------------------------------------------------------------------------------------
# Shared kNN distances
# ---------------------------------------------------------------------------------------------


def test_shared_distances_give_exactly_the_sigma_of_separately_built_functions() -> None:
    import torch

    from smoothviz.data import load_dataset
    from smoothviz.sigma import build_sigma

    ds = load_dataset("digits")
    points = ds.test_x[torch.tensor([0, 5, 17, 100, 359])]
    base = build_sigma("knn:0.25,0.05,10", ds.train_x)
    distances = base.remember_distances(points)
    calls = []
    original = base._blocks
    base._blocks = lambda *a: calls.append(1) or original(*a)  # counts distance computations
    for spec in ("knn:0.12,0.0,10", "knn:0.25,0.1,10", "knn:0.5,0.3,10,min=0.4,max=0.6", "knn:0.3,0.2,10,m=1.0"):
        fresh = build_sigma(spec, ds.train_x)
        p = fresh.params()
        shared = base.with_parameters(p["sigma_b"], p["r"], p["m"] if "m=" in spec else None,
                                      p["sigma_min"], p["sigma_max"])
        assert shared.spec == fresh.spec
        assert torch.equal(shared(points), fresh(points)), spec  # bit for bit
        assert torch.equal(shared.mean_distance(points), distances)
    assert calls == []  # every cell read the remembered distances
    other = ds.test_x[torch.tensor([1, 2])]
    assert torch.equal(base.with_parameters(0.25, 0.1)(other), build_sigma("knn:0.25,0.1,10", ds.train_x)(other))
    assert calls == [1]  # other inputs are computed afresh
    with pytest.raises(InvalidArgument, match="sigma_b"):
        base.with_parameters(0.0, 0.1)
    with pytest.raises(InvalidArgument, match="min"):
        base.with_parameters(0.25, 0.1, sigma_min=0.5, sigma_max=0.4)


def test_prepare_run_takes_a_sigma_function_only_for_its_own_spec(tmp_path: Path) -> None:
    import torch

    from smoothviz.certify import prepare_run
    from smoothviz.data import load_dataset
    from smoothviz.sigma import build_sigma

    ds = load_dataset("digits")
    run = {"dataset": "digits", "split": "test", "checkpoint": "assets/digits-cnn-constant-0.25.pt",
           "sigma_spec": "knn:0.25,0.1,10", "indices": [0, 3, 9], "options": {}, "device": "cpu", "n0": 10,
           "n": 50, "alpha": 0.001}
    base = build_sigma("knn:0.12,0.0,10", ds.train_x)
    base.remember_distances(ds.test_x[torch.tensor(run["indices"])])
    given = base.with_parameters(0.25, 0.1)
    prepared = prepare_run(run, sigma_fn=given)
    assert prepared.sigma_fn is given
    assert torch.equal(prepared.sigmas, prepare_run(run).sigmas)
    with pytest.raises(InvalidArgument, match="the function given is knn:0.25,0.2,10"):
        prepare_run(run, sigma_fn=base.with_parameters(0.25, 0.2))
    with pytest.raises(InvalidArgument, match="the function given"):
        prepare_run({**run, "sigma_spec": f"knn:0.25,0.1,10,m={given.m + 1}"}, sigma_fn=given)


# ---------------------------------------------------------------------------------------------
# The grid
# ---------------------------------------------------------------------------------------------


def test_grid_specs_expand_to_their_product_in_order() -> None:
    from smoothviz.sweep import expand_sigma_grid

    assert expand_sigma_grid("knn:{0.12,0.25},{0,0.05,0.1},20") == [
        f"knn:{b!r},{r!r},20" for b in (0.12, 0.25) for r in (0.0, 0.05, 0.1)]
    assert expand_sigma_grid("constant:{0.12, 0.25}") == ["constant:0.12", "constant:0.25"]
    assert expand_sigma_grid("knn:0.25,0.1,{5,10},m={1,2}") == [
        "knn:0.25,0.1,5,m=1.0", "knn:0.25,0.1,5,m=2.0", "knn:0.25,0.1,10,m=1.0", "knn:0.25,0.1,10,m=2.0"]
    assert expand_sigma_grid("constant:0.5") == ["constant:0.5"]


@pytest.mark.parametrize("text, words", [
    ("", "empty"),
    ("   ", "empty"),
    ("knn:{},0.1,20", "empty item"),
    ("knn:{0.1,},0.1,20", "empty item"),
    ("knn:{0.1,0.2,0.1,20", "braces do not pair"),
    ("knn:0.1},0.1,20", "braces do not pair"),
    ("knn:{{0.1}},0.1,20", "braces do not pair"),
    ("constant:{0.25,0.250}", "appears twice"),
    ("constant:{0.25,-1}", "sigma"),
    ("knn:{0.25},{0,x},20", "not a number"),
    ("ddrs:{0.1,0.2},0.5,4", "no semi-elasticity"),
    ("gauss:{0.1,0.2}", "unknown kind"),
    ("knn:{" + ",".join(str(0.01 * (i + 1)) for i in range(70)) + "},{" + ",".join(str(0.001 * i) for i in range(70))
     + "},20", "more than"),
    ("constant:" + "9" * 2000, "longer than"),
])
def test_bad_grids_are_refused_in_one_line(text: str, words: str) -> None:
    from smoothviz.sweep import expand_sigma_grid

    with pytest.raises(InvalidArgument, match=words) as err:
        expand_sigma_grid(text)
    assert "\n" not in str(err.value) and len(str(err.value)) < 400


def _plan(**changes):
    from smoothviz.sweep import ModelChoice, SweepPlan

    base = {"dataset": "digits", "split": "test", "models": (ModelChoice("assets/digits-cnn-constant-0.25.pt", "c"),),
            "sigmas": ("constant:0.25", "knn:0.25,0.1,10"), "ns": (200,), "alphas": (0.001,), "n0": 10,
            "indices": (0, 1, 2), "seed": 0, "device": "cpu"}
    return SweepPlan(**{**base, **changes})


def test_plan_cells_names_identity_and_checks() -> None:
    from smoothviz.sweep import GRID_MAX, ModelChoice

    plan = _plan(ns=(200, 400), alphas=(0.001, 0.01))
    cells = plan.cells()
    assert len(cells) == 8 and [(c.sigma, c.n, c.alpha) for c in cells[:3]] == [
        ("constant:0.25", 200, 0.001), ("constant:0.25", 200, 0.01), ("constant:0.25", 400, 0.001)]
    assert plan.run_name(cells[1]) == "sweep digits 8 runs x 3 points: c constant:0.25 n=200 alpha=0.01"
    assert len(plan.run_name(cells[0])) <= 120 and len(_plan(name="x" * 120).run_name(cells[0])) <= 120
    assert plan.identity() == _plan(ns=(200, 400), alphas=(0.001, 0.01)).identity()
    assert plan.identity() != _plan(ns=(200, 400), alphas=(0.001, 0.01), seed=1).identity()
    assert plan.identity()["models"][0]["sha256"] is not None  # the checkpoint's bytes identify it
    plan.check()
    twice = _plan(models=(ModelChoice("assets/digits-cnn-constant-0.25.pt", "c"),) * 2)
    with pytest.raises(InvalidArgument, match="appears twice"):
        twice.check()
    big = _plan(ns=tuple(range(100, 100 + GRID_MAX)))
    with pytest.raises(InvalidArgument, match="--allow-long"):
        big.check()
    big.check(allow_long=True)
    with pytest.raises(InvalidArgument, match="--n0"):
        _plan(n0=300).check()
    with pytest.raises(InvalidArgument, match="empty"):
        _plan(sigmas=()).check()


# ---------------------------------------------------------------------------------------------
# Execution: shared distances against separate runs, resume after kill -9, cancel
# ---------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
MODEL = "assets/digits-cnn-constant-0.25.pt"
GRID = ["--model", MODEL, "--sigma-grid", "knn:{0.2,0.3},{0,0.1},10", "--n0", "20", "--n", "500", "--points", "6",
        "--device", "cpu", "--seed", "3", "--quiet"]


def _results(db: Path) -> list[dict]:
    """Per cell of the store's only sweep: its spec and per-point results as plain lists."""
    with Store(db, create=False) as store:
        (record,) = store.sweeps()
        out = []
        for cell in record["cells"]:
            df = store.results(cell["run_id"])
            out.append({"spec": store.run(cell["run_id"])["sigma_spec"], "idx": df["idx"].tolist(),
                        "counts": df["counts"].tolist(), "predict": df["predict"].tolist(),
                        "sigma": df["sigma"].tolist(), "radius": df["radius"].tolist()})
        return out


def test_a_sweep_equals_separate_certify_runs_and_knn_r0_equals_constant(tmp_path: Path, capsys) -> None:
    from smoothviz.cli import main

    db = tmp_path / "s.db"
    assert main(["sweep", *GRID[:3], "knn:0.3,{0,0.1},10", "--sigma-grid", "constant:0.3", *GRID[4:],
                 "--db", str(db)]) == 0
    cells = _results(db)
    assert [c["spec"].split(",m=")[0] for c in cells] == ["knn:0.3,0.0,10", "knn:0.3,0.1,10", "constant:0.3"]
    for cell in cells:  # each cell against the certify verb with the spec its run recorded
        alone = tmp_path / f"alone{len(list(tmp_path.glob('alone*')))}.db"
        assert main(["certify", "--model", MODEL, "--sigma", cell["spec"].split(",m=")[0], "--n0", "20", "--n", "500",
                     "--points", "6", "--device", "cpu", "--seed", "3", "--quiet", "--db", str(alone)]) == 0
        with Store(alone) as store:
            df = store.results(1)
            if ",m=" in cell["spec"]:  # the m the sweep wrote into the spec is the one certify computes
                assert store.run(1)["sigma_params"]["m"] == float(cell["spec"].split(",m=")[1])
        assert df["sigma"].tolist() == cell["sigma"] and df["counts"].tolist() == cell["counts"]
        assert df["radius"].tolist() == cell["radius"]
    capsys.readouterr()
    # knn with r = 0 is the constant sigma_b: the same sigma(x), so the same noise and counts
    assert cells[0]["sigma"] == cells[2]["sigma"] and cells[0]["counts"] == cells[2]["counts"]
    assert cells[1]["sigma"] != cells[0]["sigma"]


def _sweep_process(db: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "smoothviz", "sweep", *GRID, "--batch-size", "4", "--db", str(db)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_results(db: Path, proc: subprocess.Popen, at_least: int) -> int:
    deadline = time.monotonic() + 180
    stored = 0
    while time.monotonic() < deadline and proc.poll() is None:
        if db.exists():
            try:
                with sqlite3.connect(db, timeout=5) as c:
                    stored = c.execute("SELECT COUNT(*) FROM results").fetchone()[0]
            except sqlite3.OperationalError:
                stored = 0
            if stored >= at_least:
                return stored
        time.sleep(0.02)
    raise AssertionError(f"the sweep ended (or stalled) with {stored} results before it could be stopped")


def test_a_sweep_killed_mid_way_resumes_exactly_the_missing_runs_and_points(tmp_path: Path) -> None:
    db = tmp_path / "killed.db"
    proc = _sweep_process(db)
    _wait_for_results(db, proc, 8)  # into the second of four runs of 6 points
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with Store(db) as store:
        (record,) = store.sweeps()
        assert record["status"] == "interrupted"
        stored = [c["done"] for c in record["cells"]]
        before = {row[0]: row[1:] for row in store._query("SELECT run_id || ':' || idx, created FROM results")}
    partial = [i for i, s in enumerate(stored) if s < 6]
    assert 8 <= sum(stored) < 24 and partial  # killed after the first run, before the last point
    assert all(s == 0 for s in stored[partial[0] + 1:])  # runs go in order: the later ones have not started
    resumed = subprocess.run([sys.executable, "-m", "smoothviz", "sweep", *GRID, "--batch-size", "4", "--db", str(db)],
                             cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                             timeout=300, check=False)
    assert resumed.returncode == 0, resumed.stderr
    done_runs = sum(s == 6 for s in stored)
    assert f"sweep 1: resuming ({done_runs} of 4 runs done, {sum(stored)} of 24 points stored)" in resumed.stderr
    executed = [line for line in resumed.stderr.splitlines() if line.startswith("run ")]
    expected = [f"({6 - s} certified now)" for s in stored if s < 6]
    assert [line.rsplit(" (", 1)[1] for line in executed] == [e[1:] for e in expected]  # only the missing ones
    with Store(db) as store:
        assert store.integrity_check() == "ok"
        assert len(store.runs()) == 4 and len(store.sweeps()) == 1  # nothing new was created
        after = {row[0]: row[1:] for row in store._query("SELECT run_id || ':' || idx, created FROM results")}
        assert store.sweeps()[0]["status"] == "done"
    assert len(after) == 24 and all(after[key] == value for key, value in before.items())  # stored rows kept
    clean = tmp_path / "clean.db"
    done = subprocess.run([sys.executable, "-m", "smoothviz", "sweep", *GRID, "--db", str(clean)], cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert _results(db) == _results(clean)  # counts, sigma(x), predictions and radii of a clean sweep


def test_cancel_stops_the_current_run_and_the_rest_and_a_rerun_finishes(tmp_path: Path, capsys) -> None:
    from smoothviz.cli import main

    db = tmp_path / "cancel.db"
    proc = _sweep_process(db)
    _wait_for_results(db, proc, 2)
    assert main(["sweep", "--cancel", "1", "--db", str(db)]) == 0
    assert "cancel requested" in capsys.readouterr().out
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    with Store(db) as store:
        record = store.sweeps()[0]
        statuses = [c["status"] for c in record["cells"]]
        assert record["status"] == "cancelled"
        stopped = statuses.index("cancelled")
        assert statuses[:stopped] == ["done"] * stopped and statuses[stopped + 1:] == ["pending"] * (3 - stopped)
        assert record["cells"][stopped]["done"] < 6 and all(c["done"] == 0 for c in record["cells"][stopped + 1:])
    assert main(["sweep", *GRID, "--db", str(db)]) == 0
    with Store(db) as store:
        assert store.sweeps()[0]["status"] == "done" and store.sweeps()[0]["done"] == 24 and len(store.runs()) == 4


def test_the_dashboards_job_runs_a_recorded_sweep_and_cancels_it(tmp_path: Path) -> None:
    from smoothviz.jobs import CANCELLED, JobManager, sweep_job_id
    from smoothviz.sweep import ModelChoice, SweepPlan, prepare_sweep, record_sweep

    db = tmp_path / "jobs.db"
    plan = SweepPlan(dataset="digits", split="test", models=(ModelChoice(MODEL, "c"),),
                     sigmas=("knn:0.2,0.1,10", "knn:0.3,0.1,10", "constant:0.3"), ns=(500,), alphas=(0.001,), n0=20,
                     indices=tuple(range(0, 360, 45)), seed=0, device="cpu")
    with Store(db) as store:
        sweep_id = record_sweep(store, prepare_sweep(plan, batch_size=4), batch_size=4)
    manager = JobManager(tmp_path / "jobs")
    job = manager.start_sweep(sweep_id, db, cwd=ROOT)
    assert job.id == sweep_job_id(sweep_id) and manager.start_sweep(sweep_id, db, cwd=ROOT).pid == job.pid
    deadline = time.monotonic() + 120
    with Store(db) as store:
        while store.sweep(sweep_id)["done"] < 2:
            assert time.monotonic() < deadline and manager.is_running(job.id), manager.log_tail(job.id)
            time.sleep(0.05)
        assert manager.cancel(job.id)
        assert manager.wait(job.id, timeout=60).status == CANCELLED
        record = store.sweep(sweep_id)
    assert record["status"] == "cancelled" and record["done"] < 24, manager.log_tail(job.id)
    assert record["cells"][-1]["done"] == 0 and record["cells"][-1]["status"] == "pending"


def test_sequential_options_pass_to_every_run_of_the_sweep(tmp_path: Path, capsys) -> None:
    from smoothviz.cli import main

    db, alone = tmp_path / "seq.db", tmp_path / "alone.db"
    common = ["--model", MODEL, "--n0", "20", "--points", "4", "--device", "cpu", "--quiet", "--sequential",
              "--radius", "0.25", "--max-n", "500"]
    assert main(["sweep", *common, "--sigma-grid", "constant:{0.2,0.3}", "--db", str(db)]) == 0
    assert main(["certify", *common, "--sigma", "constant:0.3", "--db", str(alone)]) == 0
    capsys.readouterr()
    with Store(db) as store, Store(alone) as single:
        cells = store.sweeps()[0]["cells"]
        settings = [store.run(c["run_id"])["sequential"] for c in cells]
        assert settings == [single.run(1)["sequential"]] * 2 and settings[0]["mode"] == "fixed-radius"
        assert {store.run(c["run_id"])["n"] for c in cells} == {500}  # the budget
        swept, ref = store.results(cells[1]["run_id"]), single.results(1)
        assert swept["stop_reason"].notna().all()
        assert swept[["idx", "samples", "stop_reason", "radius"]].equals(ref[["idx", "samples", "stop_reason", "radius"]])
    code = main(["sweep", *common[:-5], "--sigma-grid", "constant:0.2", "--radius", "0.25", "--db", str(tmp_path / "x.db")])
    assert code == 2 and "needs --sequential" in capsys.readouterr().err


def test_processes_run_every_cell_on_ranks_with_the_counts_of_one_process(tmp_path: Path) -> None:
    grid = ["sweep", "--model", MODEL, "--sigma-grid", "constant:{0.2,0.3}", "--n0", "20", "--n", "300", "--points",
            "4", "--device", "cpu", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ranks, one = tmp_path / "ranks.db", tmp_path / "one.db"
    for db, extra in ((ranks, ["--processes", "2"]), (one, [])):
        done = subprocess.run([sys.executable, "-m", "smoothviz", *grid, *extra, "--db", str(db)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
    with Store(ranks) as store:
        assert [store.run(c["run_id"])["world_size"] for c in store.sweeps()[0]["cells"]] == [2, 2]
    assert _results(ranks) == _results(one)


def test_a_grid_mixing_given_and_computed_m_gives_each_spec_its_own_m() -> None:
    from smoothviz.data import load_dataset
    from smoothviz.sigma import build_sigma
    from smoothviz.sweep import prepare_sweep

    plan = _plan(sigmas=("knn:0.25,0.1,10,m=2.0", "knn:0.25,0.2,10", "constant:0.25"))
    prepared = prepare_sweep(plan)
    data_m = build_sigma("knn:0.25,0.2,10", load_dataset("digits").train_x).m
    assert prepared.specs["knn:0.25,0.1,10,m=2.0"] == "knn:0.25,0.1,10,m=2.0"
    assert prepared.specs["knn:0.25,0.2,10"] == f"knn:0.25,0.2,10,m={data_m!r}"
    assert prepared.specs["constant:0.25"] == "constant:0.25"
    assert len(prepared.computed) == 1 and len(prepared.rates) == 1 and prepared.estimate.seconds > 0
