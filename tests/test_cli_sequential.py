"""CLI of sequential certification: certify --sequential, table and export of sequential runs,
bench-sequential; bad input is one line with exit code 2 and leaves nothing behind."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import torch

from smoothviz.cli import main
from smoothviz.store import Store

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "assets" / "digits-cnn-constant-0.25.pt"


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cli(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse refusals
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


COMMON = ["certify", "--model", DIGITS, "--n0", 50, "--indices", "0,48,101,150", "--device", "cpu", "--quiet",
          "--batch-size", 128]


def test_certify_sequential_records_the_rule_and_resumes(tmp_path: Path, capsys) -> None:
    db = tmp_path / "r.db"
    argv = [*COMMON, "--db", db, "--sequential", "--radius", 0.5, "--max-n", 3000, "--cs", "betting"]
    code, out, err = cli(capsys, *argv)
    assert code == 0, err
    assert "samples:" in out and "per point on average" in out and "stopped:" in out
    with Store(db) as s:
        run = s.run(1)
        first = s.results(1)
    assert run["n"] == 3000 and run["sequential"]["mode"] == "fixed-radius"
    assert run["sequential"]["method"] == "mixture" and run["sequential"]["radius"] == 0.5
    assert "fixed-radius R=0.5 mixture max-n=3000" in run["name"]
    assert set(first["stop_reason"]) <= {"certified", "below-target", "short", "budget"}
    assert (first["samples"] <= 3000).all() and (first["selection"] == 50).all()
    with sqlite3.connect(db) as c:  # a point lost, as after a crash: the rerun certifies it alone, identically
        c.execute("PRAGMA foreign_keys = ON")
        c.execute("DELETE FROM results WHERE run_id=1 AND idx=48")
    code, _, err = cli(capsys, *argv)
    assert code == 0 and "resuming (3 of 4 points stored)" in err
    with Store(db) as s:
        again = s.results(1)
        assert len(s.runs()) == 1
    assert again.drop(columns="seconds").equals(first.drop(columns="seconds"))
    code, out, _ = cli(capsys, "table", 1, "--json", "--db", db)
    rep = json.loads(out)
    assert rep["mode"] == "fixed-radius" and rep["samples_per_point"] == pytest.approx(
        50 + first["samples"].mean())
    code, _, _ = cli(capsys, *COMMON, "--db", db, "--n", 3000)  # a fixed-n run beside it
    code, out, _ = cli(capsys, "table", 1, 2, "--db", db)
    assert code == 0 and "samples/pt" in out and "3,050" in out
    code, out, _ = cli(capsys, "export", 1, "--format", "cohen", "--db", db)
    lines = out.splitlines()
    assert lines[0] == "idx\tlabel\tpredict\tradius\tcorrect\ttime" and len(lines) == 5
    code, out, _ = cli(capsys, "export", 1, "--format", "csv", "--db", db)
    assert code == 0 and "stop_reason" in out.splitlines()[0] and "samples" in out.splitlines()[0]


@pytest.mark.parametrize("extra, fragment", [
    (["--sequential", "--radius", 0.5, "--max-radius", 0.9], "not allowed with argument --radius"),
    (["--sequential", "--max-n", 20], "--max-n 20 is below --n0 50"),
    (["--sequential", "--n", 30], "--n 30 is below --n0 50"),
    (["--sequential", "--radius", 0.5, "--tolerance", 0.01], "--tolerance 0.01 applies to radius mode"),
    (["--max-n", 1000], "--max-n needs --sequential"),
    (["--radius", 0.25], "--radius needs --sequential"),
    (["--cs", "union"], "--cs needs --sequential"),
    (["--sequential", "--max-n", 1000, "--n", 2000], "--max-n 1000 with --n 2000"),
    (["--sequential", "--run", "1"], "--sequential with --run 1"),
    (["--sequential", "--cs", "bets"], "invalid choice: 'bets'"),
    (["--sequential", "--radius", -1], "-1.0 must be a finite number >= 0"),
    (["--sequential", "--max-radius", 0], "must be a finite number > 0"),
    (["--sequential", "--max-n", "lots"], "'lots' is not an integer"),
])
def test_bad_sequential_input_is_one_line_and_writes_nothing(tmp_path: Path, capsys, extra, fragment) -> None:
    db = tmp_path / "r.db"
    code, _, err = cli(capsys, *COMMON, "--db", db, *extra)
    assert code == 2 and fragment in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not db.exists() and list(tmp_path.iterdir()) == []


def _sequential_run(db: Path, execute: bool = True) -> None:
    from smoothviz import certify
    from smoothviz.sequential_engine import SequentialSettings

    with Store(db) as s:
        run = s.create_run(name="seq", dataset="digits", split="test", checkpoint=str(DIGITS),
                           sigma_spec="constant:0.25", sigma_params={"kind": "constant", "sigma": 0.25}, r=0.0,
                           n0=50, n=2000, alpha=0.001, device="cpu", indices=[0, 48, 101], seed=0,
                           batch_size=128, sequential=SequentialSettings.create("radius").to_dict())
        if execute:
            assert certify.run_certification(s, run) == "done"


def test_a_recorded_sequential_run_executes_with_its_rule(tmp_path: Path, capsys) -> None:
    """A run the dashboard created (pending in the store) runs by id with the rule it records."""
    db = tmp_path / "r.db"
    _sequential_run(db, execute=False)
    code, out, err = cli(capsys, "certify", "--run", 1, "--db", db, "--quiet")
    assert code == 0, err
    assert "run 1 (seq): done, 3/3 points" in out and "samples:" in out
    with Store(db) as s:
        df = s.results(1)
    assert (df["samples"] <= 2000).all() and set(df["stop_reason"]) <= {"budget", "abstain", "short"}


def test_table_and_export_of_a_sequential_run(tmp_path: Path, capsys) -> None:
    db = tmp_path / "r.db"
    _sequential_run(db)
    with Store(db) as s:
        df = s.results(1)
    code, out, _ = cli(capsys, "table", "seq", "--json", "--db", db)
    rep = json.loads(out)
    assert code == 0 and rep["mode"] == "radius" and rep["sequential"]["method"] == "mixture"
    assert rep["samples_per_point"] == pytest.approx(50 + df["samples"].mean())
    code, out, _ = cli(capsys, "table", "seq", "--db", db)
    header, row = out.splitlines()[:2]
    assert "samples/pt" in header and f"{50 + df['samples'].mean():,.0f}" in row
    log = tmp_path / "seq.tsv"
    assert cli(capsys, "export", "seq", "--out", log, "--db", db)[0] == 0
    rows = [line.split("\t") for line in log.read_text().splitlines()[1:]]
    assert [int(r[0]) for r in rows] == df["idx"].tolist()
    assert [float(r[3]) for r in rows] == df["radius"].tolist()
    code, _, _ = cli(capsys, "import", log, "--name", "back", "--dataset", "digits", "--sigma", "0.25",
                     "--db", db)
    assert code == 0
    code, out, _ = cli(capsys, "table", "back", "--json", "--db", db)
    assert json.loads(out)["samples_per_point"] is None and json.loads(out)["mode"] == "fixed-n"


def test_bench_sequential_reports_consistent_numbers(tmp_path: Path, capsys) -> None:
    out = tmp_path / "b.json"
    code, text, err = cli(capsys, "bench-sequential", "--models", "digits", "--points", 3, "--n", 1500,
                          "--radii", "0.25", "--tolerances", "0,0.05", "--out", out, "--db", tmp_path / "x.db")
    assert code == 0, err
    result = json.loads(out.read_text())
    model = result["models"][0]
    fixed = model["runs"]["fixed"]
    assert fixed["samples_per_point"] == 100 + 1500 and fixed["points"] == 3
    assert set(model["runs"]) == {"fixed", "fixed-radius R=0.25 mixture",
                                  "radius max-radius=ceiling tolerance=0 mixture",
                                  "radius max-radius=ceiling tolerance=0.05 mixture"}
    for name, run in model["runs"].items():
        if name == "fixed":
            continue
        assert run["sample_ratio"] == pytest.approx(fixed["samples_per_point"] / run["samples_per_point"])
        assert run["time_ratio"] == pytest.approx(fixed["seconds"] / run["seconds"])
        assert 100 < run["samples_per_point"] <= 1600 and sum(run["stop_reasons"].values()) == 3
        assert 0 < run["batch_fill"] <= 1
    assert model["runs"]["radius max-radius=ceiling tolerance=0 mixture"]["samples_per_point"] == 1600
    assert result["machine"]["cpus"] >= 1 and result["command"].startswith("python -m smoothviz")
    assert "samples/pt" in text and "oracle bound" in text
    assert not (tmp_path / "x.db").exists()  # nothing goes to a store


@pytest.mark.parametrize("argv, fragment", [
    (["--models", "cifar10"], "--models 'cifar10'"),
    (["--points", "0"], "--points '0'"),
    (["--points", "3,4,5"], "one count per model"),
    (["--tolerances", "-1"], "--tolerances '-1'"),
    (["--n0", 200, "--n", 100], "--n0 200 must not exceed --n 100"),
    (["--cs", "coin"], "--cs 'coin'"),
    (["--radii", "x"], "--radii"),
])
def test_bench_sequential_refuses_bad_input(tmp_path: Path, capsys, argv, fragment) -> None:
    out = tmp_path / "b.json"
    code, _, err = cli(capsys, "bench-sequential", *argv, "--out", out)
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()
