"""CLI verbs certify, predict, table, runs, import, export: end to end, resume after kill, errors."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from smoothviz.cli import main
from smoothviz.models import build_model, save_checkpoint
from smoothviz.store import Store

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    """Tiny untrained checkpoints (digits cnn-small with constant and knn sigma; a toy2d mlp)."""
    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    out = {}
    for key, dataset, arch, shape, classes, sigma in [
        ("constant", "digits", "cnn-small", (1, 8, 8), 10, "constant:0.25"),
        ("knn", "digits", "cnn-small", (1, 8, 8), 10, "knn:0.25,0.2,10"),
        ("toy", "toy2d-moons", "mlp", (2,), 2, "constant:0.25"),
    ]:
        model = build_model(arch, shape, classes)
        path = d / f"{key}.pt"
        save_checkpoint(path, model, {"dataset": dataset, "arch": arch, "input_shape": list(shape),
                                      "num_classes": classes, "sigma": sigma})
        out[key] = path
    return out


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_certify_table_runs_export_import(tmp_path: Path, ckpts, capsys) -> None:
    db = tmp_path / "r.db"
    code, out, err = cli(capsys, "certify", "--model", ckpts["knn"], "--n0", 20, "--n", 300, "--points", 6,
                         "--db", db, "--device", "cpu", "--name", "knn-run")
    assert code == 0, err
    assert "run 1 (knn-run): done, 6/6 points" in out and "certified accuracy" in out
    assert "points/s" in err and "ETA" in err  # the progress bar
    with Store(db) as s:
        run = s.run(1)
        df = s.results(1)
    assert run["indices"] == [0, 72, 144, 215, 287, 359]  # evenly spaced over 360 test points
    assert run["r"] == 0.2 and run["sigma_params"]["m"] is not None  # resolved from the data
    assert len(df) == 6 and df["sigma"].nunique() > 1  # sigma(x) varies
    assert (df["radius"] <= df["naive_radius"] + 1e-12).all()  # sound radius never above naive

    code, out, _ = cli(capsys, "table", "knn-run", "--radii", "0,0.1", "--json", "--db", db)
    rep = json.loads(out)
    assert code == 0 and [r["radius"] for r in rep["table"]] == [0.0, 0.1]
    assert rep["table"][0]["certified_accuracy"] == pytest.approx(df["correct"].mean())
    code, out, _ = cli(capsys, "table", "1", "--db", db)
    assert code == 0 and "r=0.25" in out and "knn-run" in out
    code, out, _ = cli(capsys, "table", "1", "--curve", "--use", "naive", "--db", db)
    assert code == 0 and "naive_radius" in out

    log = tmp_path / "log.tsv"
    assert cli(capsys, "export", "1", "--format", "cohen", "--out", log, "--db", db)[0] == 0
    code, out, _ = cli(capsys, "import", log, "--name", "again", "--dataset", "digits", "--sigma", "0.25",
                       "--db", db)
    assert code == 0 and "run 2: imported 6 points" in out
    code, out, _ = cli(capsys, "table", "again", "--json", "--db", db)
    assert json.loads(out)["table"][0]["certified_accuracy"] == rep["table"][0]["certified_accuracy"]
    code, out, _ = cli(capsys, "export", "2", "--format", "csv", "--db", db)
    assert code == 0 and out.splitlines()[0].startswith("idx,label,predict,correct")
    code, out, _ = cli(capsys, "runs", "--db", db)
    assert code == 0 and "knn-run" in out and "again" in out and "6/6" in out
    code, out, _ = cli(capsys, "runs", "--json", "--db", db)
    assert [r["status"] for r in json.loads(out)] == ["done", "done"]

    # the same command again resumes the finished run: nothing new is created
    code, out, err = cli(capsys, "certify", "--model", ckpts["knn"], "--n0", 20, "--n", 300, "--points", 6,
                         "--db", db, "--device", "cpu", "--name", "knn-run", "--quiet")
    assert code == 0 and "resuming (6 of 6" in err and "run 1 " in out


def test_predict_verb(tmp_path: Path, ckpts, capsys) -> None:
    out_log = tmp_path / "predict.tsv"
    code, out, err = cli(capsys, "predict", "--model", ckpts["constant"], "--n", 200, "--indices", "0-4",
                         "--device", "cpu", "--out", out_log, "--quiet")
    assert code == 0, err
    assert out.startswith("5 points (digits, constant:0.25, n=200")
    lines = out_log.read_text().splitlines()
    assert lines[0] == "idx\tlabel\tpredict\tcorrect\ttime" and len(lines) == 6


_CERTIFY = ["certify", "--dataset", "digits", "--n0", "10", "--n", "1000", "--points", "16",
            "--batch-size", "256", "--device", "cpu", "--seed", "5", "--quiet"]


def test_resume_after_kill_loses_and_duplicates_nothing(tmp_path: Path, ckpts) -> None:
    db = tmp_path / "resume.db"
    cmd = [sys.executable, "-m", "smoothviz", *_CERTIFY, "--model", str(ckpts["constant"]), "--db", str(db)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stored = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if db.exists():
            try:
                with sqlite3.connect(db, timeout=5) as c:
                    stored = c.execute("SELECT COUNT(*) FROM results").fetchone()[0]
            except sqlite3.OperationalError:
                stored = 0
            if stored >= 3:
                break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with Store(db) as s:
        killed = len(s.done_indices(1))
        assert 3 <= killed < 16
        assert s.run(1)["status"] == "interrupted"
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"resuming ({killed} of 16" in done.stderr
    clean_db = tmp_path / "clean.db"
    clean = subprocess.run([*cmd[:-1], str(clean_db)], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=300)
    assert clean.returncode == 0, clean.stderr
    with Store(db) as s, Store(clean_db) as c:
        assert s.integrity_check() == "ok"
        assert [r[0] for r in s._query("SELECT COUNT(*) FROM runs")] == [1]
        resumed, fresh = s.results(1), c.results(1)
        assert s.run(1)["status"] == "done"
    assert resumed["idx"].tolist() == fresh["idx"].tolist() and len(resumed) == 16  # each point once
    assert resumed["counts"].tolist() == fresh["counts"].tolist()
    assert resumed["predict"].tolist() == fresh["predict"].tolist()
    assert resumed["radius"].tolist() == pytest.approx(fresh["radius"].tolist(), rel=1e-12)


def _error_line(capsys, *argv) -> str:
    code, out, err = cli(capsys, *argv)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_errors_exit_2_with_one_line(tmp_path: Path, ckpts, capsys) -> None:
    db = tmp_path / "e.db"
    base = ["certify", "--n0", 10, "--n", 50, "--points", 2, "--device", "cpu", "--db", db, "--quiet"]
    assert "not found" in _error_line(capsys, *base, "--model", tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"PK\x03\x04 not a zip archive at all" * 40)
    assert "garbage.pt" in _error_line(capsys, *base, "--model", garbage)
    assert "toy2d-moons" in _error_line(capsys, *base, "--model", ckpts["toy"], "--dataset", "digits")
    assert "sigma spec" in _error_line(capsys, *base, "--model", ckpts["constant"], "--sigma", "knn:0.25,abc,5")
    assert "sigma spec" in _error_line(capsys, *base, "--model", ckpts["constant"], "--sigma", "gauss:1")
    assert "--n0" in _error_line(capsys, *base, "--model", ckpts["constant"], "--n0", 100)
    assert "--indices" in _error_line(capsys, "certify", "--model", ckpts["constant"], "--indices", "350-400",
                                      "--db", db, "--device", "cpu")
    assert "no run" in _error_line(capsys, "table", "42", "--db", db)
    assert "no run" in _error_line(capsys, "certify", "--run", "nope", "--db", db)
    bad_db = tmp_path / "bad.db"
    bad_db.write_bytes(os.urandom(3000))
    assert "bad.db" in _error_line(capsys, "runs", "--db", bad_db)
    bad_log = tmp_path / "bad.tsv"
    bad_log.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.5\t1\t1.0\n1\t2\tx\t0\t0\t1\n")
    assert "line 3" in _error_line(capsys, "import", bad_log, "--name", "b", "--dataset", "digits", "--db", db)
    if torch.cuda.device_count() <= 7:
        assert "cuda:7" in _error_line(capsys, "certify", "--model", ckpts["constant"], "--n0", 10, "--n", 50, "--points", 2,
                                       "--device", "cuda:7", "--db", db)


def test_argparse_rejects_alpha_outside_unit_interval(ckpts, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["certify", "--model", str(ckpts["constant"]), "--alpha", "1.5"])
    assert info.value.code == 2
    assert "outside (0, 1)" in capsys.readouterr().err


def test_speed_flags_are_recorded_and_keep_counts(tmp_path: Path, ckpts, capsys) -> None:
    db = tmp_path / "speed.db"
    common = ["certify", "--model", ckpts["constant"], "--n0", 10, "--n", 400, "--indices", "3,7", "--device",
              "cpu", "--db", db, "--quiet", "--batch-size", 96]
    assert cli(capsys, *common)[0] == 0
    assert cli(capsys, *common, "--no-channels-last")[0] == 0
    with Store(db) as s:
        assert s.run(1)["options"] == {} and s.run(2)["options"] == {"channels_last": False}
        assert s.results(1)["counts"].tolist() == s.results(2)["counts"].tolist()
    code, _, err = cli(capsys, *common, "--cuda-graphs")
    assert code == 2 and "--cuda-graphs needs a CUDA device" in err and len(err.strip().splitlines()) == 1
    with Store(db) as s:
        assert len(s.runs()) == 2  # nothing recorded for the rejected command
