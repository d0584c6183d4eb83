"""The sweep verb end to end, the error bars of table and export, and hostile input (one line,
nothing written)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from smoothviz import tradeoffs
from smoothviz.cli import main
from smoothviz.store import Store

MODEL = "assets/digits-cnn-constant-0.25.pt"
SWEEP = ["sweep", "--model", MODEL, "--sigma-grid", "knn:{0.2,0.3},{0,0.1},10", "--n0", "20", "--n", "400",
         "--points", "5", "--device", "cpu", "--quiet"]


def cli(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_2x2_sweep_on_digits_end_to_end(tmp_path: Path, capsys) -> None:
    db = tmp_path / "s.db"
    code, out, err = cli(capsys, *SWEEP, "--db", db, "--radii", "0,0.25")
    assert code == 0, err
    assert "sweep 1 created" in err and "4 runs (runs 1-4) x 5 points" in err
    assert sum(line.startswith("run ") and "(5 certified now)" in line for line in err.splitlines()) == 4
    assert "sweep 1 (" in out and "done, 4/4 runs done, 20/20 points" in out
    with Store(db) as store:
        (record,) = store.sweeps()
        cells = record["cells"]
        assert [(c["cell"]["sigma_b"], c["cell"]["r"]) for c in cells] == [(0.2, 0.0), (0.2, 0.1), (0.3, 0.0),
                                                                          (0.3, 0.1)]
        runs = [store.run(c["run_id"]) for c in cells]
        assert {r["indices"] == runs[0]["indices"] for r in runs} == {True}  # the same points everywhere
        assert {r["seed"] for r in runs} == {0} and {r["n"] for r in runs} == {400}
        assert len({r["sigma_params"]["m"] for r in runs}) == 1  # one m for the (data, k) group
        for c, r in zip(cells, runs):  # the summary table is each run's certified accuracy
            acc = float(store.results(r["id"])["correct"].mean())
            assert f"{acc:.3f}" in next(line for line in out.splitlines() if line.strip().startswith(str(r["id"])))
        # each kNN cell with r > 0 against its r = 0 cell (the constant sigma_b), paired on the same points
        diff = tradeoffs.paired_difference(store.results(cells[1]["run_id"]), store.results(cells[0]["run_id"]),
                                           [0.0, 0.25])
    line = next(x for x in out.splitlines() if x.startswith(f"  run {cells[1]['run_id']} (sigma_b 0.2, r 0.1) vs knn r=0"))
    for row in diff.itertuples():
        verdict = {"a higher": "kNN higher", "b higher": "constant higher"}.get(row.verdict, "undecided")
        assert f"R={row.radius:g} {row.difference:+.3f} [{row.low:+.3f}, {row.high:+.3f}] {verdict}" in line
    # the same command again: nothing new, nothing to do
    code, out, err = cli(capsys, *SWEEP, "--db", db)
    assert code == 0 and "sweep 1: resuming (4 of 4 runs done, 20 of 20 points stored)" in err
    assert "certified now" not in err
    with Store(db) as store:
        assert len(store.runs()) == 4 and len(store.sweeps()) == 1
    code, out, _ = cli(capsys, "sweep", "--list", "--json", "--db", db)
    listed = json.loads(out)
    assert code == 0 and listed[0]["runs_done"] == 4 and listed[0]["run_ids"] == [c["run_id"] for c in cells]
    code, out, err = cli(capsys, "sweep", "--sweep", "1", "--db", db, "--quiet")
    assert code == 0 and "resuming (4 of 4" in err
    # --new records a second sweep beside it
    code, _, err = cli(capsys, *SWEEP, "--db", db, "--new")
    assert code == 0 and "sweep 2 created" in err


# ---------------------------------------------------------------------------------------------
# table --ci / --hp / --paired and export --format table-csv on a constructed store
# ---------------------------------------------------------------------------------------------


def _constructed(db: Path) -> dict[str, int]:
    """Two runs on the same 40 points: b certifies every point a does at radius 0.5 plus 10 more."""
    store = Store(db)
    ids = {}
    for name, extra in (("a", 0), ("b", 10)):
        run_id = store.create_run(name, "digits", "test", None, "constant:0.25", {}, 0.0, 100, 1000, 0.001, "cpu",
                                  list(range(40)), 0, 256)
        for i in range(40):
            correct = i < 30
            radius = 0.0 if not correct else (0.7 if i < 12 + extra else 0.3)
            store.add_result(run_id, {"idx": i, "label": i % 10, "predict": i % 10 if correct else -1,
                                      "correct": correct, "p_a_lower": 0.9, "sigma": 0.25, "radius": radius,
                                      "naive_radius": radius, "counts": [0] * 10, "seconds": 0.01})
        store.set_status(run_id, "done")
        ids[name] = run_id
    store.close()
    return ids


def test_table_ci_hp_and_paired_match_the_tradeoffs_functions(tmp_path: Path, capsys) -> None:
    db = tmp_path / "c.db"
    ids = _constructed(db)
    radii = [0.0, 0.25, 0.5, 1.0]
    code, out, err = cli(capsys, "table", "a", "b", "--radii", "0,0.25,0.5,1", "--ci", "0.9", "--hp", "0.01",
                         "--paired", "b,a", "--json", "--db", db)
    assert code == 0, err
    got = json.loads(out)
    with Store(db) as store:
        frames = {name: store.results(run_id) for name, run_id in ids.items()}
    for rep, name in zip(got["runs"], ("a", "b")):
        bars = rep["intervals"]
        expected = tradeoffs.accuracy_intervals(frames[name], radii, beta=0.1)
        assert [r["certified"] for r in bars["rows"]] == expected["certified"].tolist()
        assert [r["low"] for r in bars["rows"]] == pytest.approx(expected["low"].tolist(), rel=1e-12)
        assert [r["high"] for r in bars["rows"]] == pytest.approx(expected["high"].tolist(), rel=1e-12)
        for row in bars["rows"]:  # independently: scipy's exact interval
            ci = stats.binomtest(row["certified"], 40).proportion_ci(confidence_level=0.9, method="exact")
            assert (row["low"], row["high"]) == pytest.approx((ci.low, ci.high), rel=1e-9, abs=1e-12)
        ref = tradeoffs.high_probability_accuracy(frames[name], radii, alpha=0.001, rho=0.01, method="reference")
        exact = tradeoffs.high_probability_accuracy(frames[name], radii, alpha=0.001, rho=0.01, method="binomial")
        assert [r["hp_reference"] for r in bars["rows"]] == pytest.approx(ref["high_probability"].tolist())
        assert [r["hp_binomial"] for r in bars["rows"]] == pytest.approx(exact["high_probability"].tolist())
        assert bars["high_probability"]["alpha"] == 0.001  # the run's own alpha
        assert "not a valid" in bars["high_probability"]["hp_reference"]
    (pair,) = got["paired"]
    diff = tradeoffs.paired_difference(frames["b"], frames["a"], radii, beta=0.1)
    assert (pair["a"], pair["b"]) == (ids["b"], ids["a"])
    assert [r["difference"] for r in pair["rows"]] == pytest.approx(diff["difference"].tolist())
    assert [r["low"] for r in pair["rows"]] == pytest.approx(diff["low"].tolist())
    assert [r["verdict"] for r in pair["rows"]] == diff["verdict"].tolist()
    assert pair["rows"][2]["verdict"] == "a higher" and pair["rows"][0]["verdict"] == "undecided"

    code, out, _ = cli(capsys, "table", "a", "--ci", "--ci-method", "bootstrap", "--n-boot", "500", "--radii",
                       "0,0.5", "--json", "--db", db)
    boot = tradeoffs.accuracy_intervals(frames["a"], [0.0, 0.5], method="bootstrap", n_boot=500, seed=0)
    assert [r["low"] for r in json.loads(out)["intervals"]["rows"]] == pytest.approx(boot["low"].tolist())
    code, out, _ = cli(capsys, "table", "a", "b", "--radii", "0.5", "--ci", "--hp", "0.5,0.001", "--paired", "b,a",
                       "--db", db)
    assert code == 0
    assert "95% Clopper-Pearson intervals over its 40 test points" in out
    assert "hp reference*" in out and "not a valid bound in general" in out
    assert f"run {ids['b']} minus run {ids['a']}" in out and f"run {ids['b']} higher" in out

    target = tmp_path / "table.csv"
    code, _, err = cli(capsys, "export", "a", "--format", "table-csv", "--radii", "0,0.5", "--ci", "0.9", "--hp",
                       "0.01", "--out", target, "--db", db)
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    expected = tradeoffs.interval_table(frames["a"], [0.0, 0.5], beta=0.1, hp=(0.001, 0.01))
    assert [float(r["low"]) for r in rows] == pytest.approx(expected["low"].tolist(), rel=1e-12)
    assert [float(r["high"]) for r in rows] == pytest.approx(expected["high"].tolist(), rel=1e-12)
    assert [float(r["hp_binomial"]) for r in rows] == pytest.approx(expected["hp_binomial"].tolist())
    assert {r["level"] for r in rows} == {"0.9"} and {r["method"] for r in rows} == {"clopper-pearson"}


# ---------------------------------------------------------------------------------------------
# Hostile input: one line, exit 2, nothing written
# ---------------------------------------------------------------------------------------------

BASE = ["sweep", "--model", MODEL, "--n0", "10", "--n", "50", "--points", "2", "--device", "cpu", "--quiet"]


@pytest.mark.parametrize("extra, words", [
    (["--sigma-grid", ""], "empty"),
    (["--sigma-grid", "knn:{},0.1,10"], "empty item"),
    (["--sigma-grid", "knn:{0.1,0.2,0.1,10"], "braces do not pair"),
    (["--sigma-grid", "constant:{0.25,0.250}"], "appears twice"),
    (["--sigma-grid", "constant:0.25", "--sigma-grid", "constant:{0.25,0.5}"], "appears twice"),
    (["--sigma-grid", "knn:{0.1,0.2},{0,0.1},10", "--n", "50,50"], "appears twice"),
    (["--sigma-grid", "knn:{" + ",".join(f"0.{i + 10}" for i in range(9)) + "},{0,0.01,0.02,0.03,0.04,0.05,0.06,0.07},10"],
     "--allow-long"),
    (["--sigma-grid", "knn:0.25,0.1,5000"], "k=5000"),
    (["--sigma-grid", "knn:0.25,900,10"], "outside"),
    (["--sigma-grid", "ddrs:0.1,0.5,4"], "no semi-elasticity"),
    (["--sigma-grid", "constant:0.25", "--n", "50,x"], "--n"),
    (["--sigma-grid", "constant:0.25", "--n", "0"], "--n"),
    (["--sigma-grid", "constant:0.25", "--alpha", "0.001,1.5"], "--alpha"),
    (["--sigma-grid", "constant:0.25", "--n", "5"], "--n0"),
    (["--sigma-grid", "constant:0.25", "--radii", "0,-1"], "--radii"),
    (["--sigma-grid", "constant:0.25", "--radius", "0.5"], "needs --sequential"),
    (["--sigma-grid", "constant:0.25", "--indices", "0-9999"], "not allowed with argument --points"),
    (["--sigma-grid", "constant:0.25", "--model", MODEL], "given twice"),
    (["--sigma-grid", "constant:0.25", "--model", "assets/fashion-mnist-lenet-constant-0.25.pt"], "one dataset"),
    (["--sigma-grid", "constant:0.25", "--name", "\x07bell"], "control character"),
])
def test_hostile_sweeps_are_refused_in_one_line_and_write_nothing(tmp_path: Path, capsys, extra, words) -> None:
    db = tmp_path / "runs.db"
    code, _, err = cli(capsys, *BASE, *extra, "--db", db)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert words in lines[0], lines[0]
    assert not db.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, words", [
    (["sweep", "--sweep", "1"], "no results store"),
    (["sweep", "--cancel", "7"], "no results store"),
    (["table", "1", "--ci", "1.5"], "--ci"),
    (["table", "1", "--hp", "0.5,0.5,0.5"], "--hp"),
    (["table", "1", "--hp", "abc"], "--hp"),
    (["table", "1", "--paired", "1"], "--paired"),
    (["export", "1", "--format", "table-csv", "--ci", "0"], "--ci"),
    (["export", "1", "--format", "table-csv", "--radii", "nan"], "--radii"),
])
def test_hostile_store_verbs_are_one_line(tmp_path: Path, capsys, argv, words) -> None:
    db = tmp_path / "missing.db"
    code, _, err = cli(capsys, *argv, "--db", db)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and words in lines[0], err
    assert not db.exists()


def test_refusals_on_an_existing_store_change_nothing(tmp_path: Path, capsys) -> None:
    db = tmp_path / "c.db"
    ids = _constructed(db)
    before = db.read_bytes()
    for argv, words in (
        (["sweep", "--sweep", "9"], "sweep '9' not found"),
        (["sweep", "--cancel", "x"], "not found"),
        (["sweep", "--sweep", "1", "--model", MODEL], "keeps its own grid"),
        (["sweep", "--model", MODEL, "--sigma-grid", "knn:{},1,10"], "empty item"),
        (["sweep", "--model", MODEL, "--sigma-grid", "constant:0.25", "--n", "10", "--n0", "50"], "--n0"),
        (["table", "a", "--paired", "a,zzz"], "no run with id or name 'zzz'"),
        (["table", "a", "--hp", "0.5", "--paired", "a,b", "--ci", "0.99999999999999999"], "--ci"),
    ):
        code, _, err = cli(capsys, *argv, "--db", db)
        assert code == 2 and len(err.strip().splitlines()) == 1 and words in err, (argv, err)
    assert db.read_bytes() == before
    with Store(db) as store:  # a run on other points: refused unless --intersect
        run_id = store.create_run("c", "digits", "test", None, "constant:0.25", {}, 0.0, 100, 1000, 0.001, "cpu",
                                  [0, 1, 50], 0, 256)
        for i in (0, 1, 50):
            store.add_result(run_id, {"idx": i, "label": i % 10, "predict": i % 10, "correct": True,
                                      "radius": 0.5, "naive_radius": 0.5})
    code, _, err = cli(capsys, "table", "a", "--paired", f"a,{run_id}", "--db", db)
    assert code == 2 and "add --intersect to compare the 2 they share" in err
    code, out, _ = cli(capsys, "table", "a", "--paired", f"a,{run_id}", "--intersect", "--json", "--db", db)
    assert code == 0 and json.loads(out)["paired"][0]["rows"][0]["points"] == 2
    assert np.isfinite(json.loads(out)["paired"][0]["rows"][0]["low"]) and ids


def test_speed_options_reach_every_run_of_the_sweep(tmp_path: Path, capsys) -> None:
    db = tmp_path / "speed.db"
    argv = ["sweep", "--model", MODEL, "--sigma-grid", "constant:{0.2,0.3}", "--n0", "20", "--n", "200", "--points",
            "3", "--device", "cpu", "--quiet", "--db", db]
    code, _, err = cli(capsys, *argv, "--batch-size", "64", "--autocast", "bf16", "--no-channels-last")
    assert code == 0, err
    with Store(db) as store:
        runs = [store.run(c["run_id"]) for c in store.sweep(1)["cells"]]
    assert len(runs) == 2
    for run in runs:
        assert run["batch_size"] == 64
        assert run["options"]["autocast"] == "bf16" and run["options"]["channels_last"] is False
    # without the flags the runs take the engine's defaults: a new sweep, not a resumed one
    code, _, err = cli(capsys, *argv)
    assert code == 0 and "sweep 2 created" in err, err
    with Store(db) as store:
        plain = [store.run(c["run_id"]) for c in store.sweep(2)["cells"]]
    assert all("autocast" not in r["options"] and "channels_last" not in r["options"] for r in plain)
    # a recorded sweep keeps its own options: a speed flag with --sweep is refused, nothing changes
    before = db.read_bytes()
    for flag in (["--fast"], ["--no-channels-last"], ["--compile"]):
        code, _, err = cli(capsys, "sweep", "--sweep", "1", "--db", db, *flag)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "keeps its own grid" in err, (flag, err)
    assert db.read_bytes() == before
    code, _, err = cli(capsys, *argv, "--cuda-graphs", "--new")
    assert code == 2 and "--cuda-graphs needs a CUDA device" in err, err
    assert db.read_bytes() == before
