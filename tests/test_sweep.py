"""Sweeps (smoothviz.sweep and the store's sweep tables): the grid, the record, shared kNN
distances, execution, resume after kill -9, cancel."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from smoothviz.errors import InvalidArgument, StoreError
from smoothviz.store import Store


def _run_fields(name: str, spec: str = "constant:0.25", points: int = 3) -> dict:
    return dict(name=name, dataset="digits", split="test", checkpoint=None, sigma_spec=spec, sigma_params={},
                r=0.0, n0=10, n=100, alpha=0.001, device="cpu", indices=list(range(points)), seed=0,
                batch_size=None)


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
