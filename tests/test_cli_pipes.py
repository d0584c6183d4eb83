"""A reader that stops early (``smoothviz runs | head -1``) ends every printing verb quietly.

Multi-line outputs go through a real ``| head -1`` pipeline and are made far larger than a pipe's
buffer, so the verb is still writing when head exits: it must end with status 141 and print
nothing on stderr (no "Traceback", no "Exception ignored" from the interpreter's last flush).
Verbs that print a line or two (bound, radius, certify, predict) get a pipe whose reading end is
already closed, so their first write fails the same way.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from smoothviz.store import Store, import_cohen_log

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
RUNS = 1500  # ~200 kB of `runs` output
POINTS = 30_000  # ~1 MB of export output and a 30,000-line accuracy curve


@pytest.fixture(scope="module")
def big_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("pipes") / "big.db"
    lines = ["idx\tlabel\tpredict\tradius\tcorrect\ttime"]
    lines += [f"{i}\t{i % 10}\t{i % 10}\t{(i + 1) / POINTS!r}\t1\t0:00:00.010000" for i in range(POINTS)]
    with Store(db) as s:
        import_cohen_log(s, ("\n".join(lines) + "\n").encode(), "big", "digits", "0.25", num_classes=10,
                         source_name="big.tsv")
        for i in range(RUNS):
            s.create_run(f"run {i}", "digits", "test", None, "constant:0.25", {}, 0.0, 100, 1000, 0.001, "cpu",
                         [0], 0, 256)
    return db


@pytest.mark.parametrize("args", [
    ["runs"], ["runs", "--json"], ["table", "big", "--curve"], ["table", "big", "--curve", "--json"],
    ["export", "big"], ["export", "big", "--format", "csv"],
], ids=" ".join)
def test_head_closing_the_pipe_ends_the_verb_quietly(args: list[str], big_store: Path, tmp_path: Path) -> None:
    err, status = tmp_path / "err.txt", tmp_path / "status.txt"
    command = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "smoothviz", *args, "--db", str(big_store)])
    res = subprocess.run(["bash", "-c", f"{command} 2>{err} | head -1; echo ${{PIPESTATUS[0]}} >{status}"],
                         cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300, check=False)
    stderr = err.read_text()
    assert "Traceback" not in stderr and "Exception ignored" not in stderr and stderr == "", stderr
    assert len(res.stdout.splitlines()) == 1 and res.stdout.strip()
    assert status.read_text().strip() == "141"  # still writing when head left: the pipe did break


def _into_closed_pipe(argv: list[str]) -> subprocess.CompletedProcess:
    """Run ``python -m smoothviz argv`` with stdout a pipe that nobody reads (its reading end closed)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([sys.executable, "-m", "smoothviz", *argv], cwd=ROOT, env=ENV, stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=300, check=False)
    finally:
        os.close(write_end)


@pytest.mark.parametrize("argv", [
    ["bound", "--sigma0", "0.25", "--sigma1", "0.26", "--distance", "0.1", "--pa", "0.9", "--dim", "3072"],
    ["radius", "--pa", "0.9", "--sigma0", "0.25", "--r", "0.1", "--dim", "3072", "--naive"],
], ids=lambda a: a[0])
def test_one_line_verbs_end_quietly_on_a_closed_pipe(argv: list[str]) -> None:
    res = _into_closed_pipe(argv)
    assert res.returncode == 141 and res.stderr == "", res.stderr


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from smoothviz.models import build_model, save_checkpoint

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "digits-mlp.pt"
    save_checkpoint(path, build_model("mlp", (1, 8, 8), 10), {
        "dataset": "digits", "arch": "mlp", "input_shape": [1, 8, 8], "num_classes": 10, "sigma": "constant:0.25"})
    return path


def test_engine_verbs_end_quietly_on_a_closed_pipe(checkpoint: Path, tmp_path: Path) -> None:
    common = ["--model", str(checkpoint), "--device", "cpu", "--quiet"]
    certify = _into_closed_pipe(["certify", *common, "--n0", "10", "--n", "50", "--points", "2",
                                 "--db", str(tmp_path / "c.db")])
    assert certify.returncode == 141, certify.stderr
    assert "Traceback" not in certify.stderr and "Exception ignored" not in certify.stderr, certify.stderr
    with Store(tmp_path / "c.db", create=False) as s:
        assert s.run(1)["status"] == "done" and s.run(1)["done"] == 2  # the work was done, the print failed
    predict = _into_closed_pipe(["predict", *common, "--n", "50", "--indices", "0-1"])
    assert predict.returncode == 141, predict.stderr
    assert "Traceback" not in predict.stderr and "Exception ignored" not in predict.stderr, predict.stderr
