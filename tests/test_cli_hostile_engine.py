"""Hostile input for the engine verbs (certify, predict, train, bench), table-driven.

Every case must end with exit code 2 and exactly one stderr line ``smoothviz VERB: error: ...``
naming the problem, no traceback, and nothing written: the store's runs and results are the same
before and after, a missing store is not created, and no file or folder appears anywhere in the
working folder (the cases run there, so default output locations are watched too).
"""

from __future__ import annotations

import os
import pickle
import sqlite3
from pathlib import Path

import pytest
import torch

from smoothviz.cli import main
from smoothviz.models import build_model, save_checkpoint
from smoothviz.store import Store

pytestmark = pytest.mark.usefixtures("one_thread")


class _Payload:
    """Unpickling this runs open(marker, "w"): a checkpoint with a code payload."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _meta(classes=10, shape=(1, 8, 8), arch="cnn-small", dataset="digits"):
    return {"dataset": dataset, "arch": arch, "input_shape": list(shape), "num_classes": classes,
            "sigma": "constant:0.25"}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict[str, Path]:
    """A working folder with checkpoints good and bad, a store holding one finished run, odd files."""
    root = tmp_path_factory.mktemp("hostile")
    ck = root / "ckpt"
    torch.manual_seed(0)
    paths = {"root": root}

    def save(name: str, model, meta: dict) -> None:
        paths[name] = ck / f"{name}.pt"
        save_checkpoint(paths[name], model, meta)

    save("good", build_model("cnn-small", (1, 8, 8), 10), _meta())
    save("five", build_model("cnn-small", (1, 8, 8), 5), _meta(classes=5))
    save("twelve", build_model("cnn-small", (1, 8, 8), 12), _meta(classes=12))
    save("out12", build_model("cnn-small", (1, 8, 8), 12), _meta(classes=10))  # weights wider than meta says
    nan = build_model("cnn-small", (1, 8, 8), 10)
    with torch.no_grad():
        nan[1][-1].weight.fill_(float("nan"))
    save("nan", nan, _meta())
    save("shape28", build_model("cnn-small", (1, 28, 28), 10), _meta(shape=(1, 28, 28)))
    save("huge", build_model("mlp", (2,), 10), _meta(shape=(1, 4096, 4096), arch="mlp"))  # a tiny file
    paths["marker"] = root / "pwned"
    paths["evil"] = ck / "evil.pt"
    with open(paths["evil"], "wb") as fh:
        pickle.dump({"format": "smoothviz-checkpoint", "meta": _Payload(paths["marker"]), "state_dict": {}}, fh)
    paths["db"] = root / "store.db"
    code = main(["certify", "--model", str(paths["good"]), "--n0", "10", "--n", "20", "--points", "2",
                 "--device", "cpu", "--db", str(paths["db"]), "--quiet"])
    assert code == 0
    paths["dir"] = root / "a-folder.pt"
    paths["dir"].mkdir()
    paths["garbage_db"] = root / "garbage.db"
    paths["garbage_db"].write_bytes(os.urandom(4096))
    paths["full"] = root / "full.pt"
    paths["full"].symlink_to("/dev/full")
    return paths


def _rows(db: Path) -> tuple[list, list]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        return (c.execute("SELECT * FROM runs ORDER BY id").fetchall(),
                c.execute("SELECT * FROM results ORDER BY run_id, idx").fetchall())


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with the bytes of regular files (None for folders and links)."""
    out = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = p.read_bytes() if p.is_file() and not p.is_symlink() else None
    return out


C = ["certify", "--n0", "10", "--n", "20", "--points", "2", "--device", "cpu", "--db", "{db}", "--quiet"]
CM = [*C, "--model", "{good}"]
CI = [*C[:5], *C[7:], "--model", "{good}"]  # without --points, for --indices
P = ["predict", "--n", "20", "--points", "2", "--device", "cpu", "--quiet"]
PM = [*P, "--model", "{good}"]
T = ["train", "--dataset", "toy2d-moons", "--epochs", "1", "--device", "cpu"]
TO = [*T, "--out", "{root}/t.pt"]
B = ["bench", "--device", "cpu", "--n", "10", "--points", "1", "--repeats", "1", "--variants", "default",
     "--solver-points", "0", "--no-knn", "--quiet", "--db", "{db}"]
BO = [*B, "--out", "{root}/b.json"]
BM = [*BO, "--model", "{good}"]

CASES = [
    # certify: types, ranges, NaN/inf, huge
    ("certify-n-type", [*CM, "--n", "abc"], "argument --n/--num-samples: 'abc' is not an integer"),
    ("certify-n-zero", [*CM, "--n", "0"], "argument --n/--num-samples: 0 must be >= 1"),
    ("certify-n-huge", [*CM, "--n", str(10**12)], "exceeds 1,000,000,000 samples per point"),
    ("certify-n-long", [*CM, "--n", str(10**9), "--n0", "100", "--points", "360"], "more than a day; add --allow-long"),
    ("certify-n0-above-n", [*CM, "--n0", "50"], "--n0 50 must not exceed --n 20"),
    ("certify-alpha-nan", [*CM, "--alpha", "nan"], "argument --alpha: NaN is not allowed"),
    ("certify-alpha-inf", [*CM, "--alpha", "inf"], "argument --alpha: inf is outside (0, 1)"),
    ("certify-alpha-one", [*CM, "--alpha", "1"], "argument --alpha: 1.0 is outside (0, 1)"),
    ("certify-seed-huge", [*CM, "--seed", str(2**70)], f"argument --seed: {2**70} is outside 0 to 4294967295"),
    ("certify-seed-negative", [*CM, "--seed", "-1"], "argument --seed: -1 is outside 0 to"),
    ("certify-batch-huge", [*CM, "--batch-size", str(10**12)], "--batch-size 1000000000000: a batch needs about"),
    ("certify-batch-zero", [*CM, "--batch-size", "0"], "argument --batch-size: 0 must be >= 1"),
    ("certify-points-zero", [*CM, "--points", "0"], "argument --points: 0 must be >= 1"),
    ("certify-indices-outside", [*CI, "--indices", "400"], "--indices: '400' is outside the split (0 to 359)"),
    ("certify-indices-text", [*CI, "--indices", "a-b"], "--indices: 'a-b' is not an index"),
    ("certify-device", [*CM, "--device", "tpu"], "--device 'tpu': expected auto"),
    ("certify-radii", [*CM, "--radii", "0,nan"], "--radii: 'nan' is not a finite radius >= 0"),
    ("certify-cuda-graphs", [*CM, "--cuda-graphs"], "--cuda-graphs needs a CUDA device"),
    ("certify-no-model", C, "--model: a checkpoint is required"),
    # data and sigma
    ("certify-dataset-unknown", [*CM, "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    ("certify-dataset-other", [*CM, "--dataset", "toy2d-moons"], "trained on 'digits', not on 'toy2d-moons'"),
    ("certify-knn-k", [*CM, "--sigma", "knn:0.25,0.4,5000"], "k=5000 exceeds the 1436 other training points"),
    ("certify-sigma-1e308", [*CM, "--sigma", "constant:1e308"], "sigma = 1e+308 is outside [1e-06, 100]"),
    ("certify-sigma-nan", [*CM, "--sigma", "constant:nan"], "sigma must be a finite number > 0"),
    ("certify-sigma-zero", [*CM, "--sigma", "constant:0"], "sigma must be a finite number > 0"),
    ("certify-sigma-kind", [*CM, "--sigma", "gauss:1"], "unknown kind 'gauss'"),
    ("certify-sigma-values", [*CM, "--sigma", "knn:0.25,1000,20"], "is outside [1e-06, 100]"),
    # checkpoints
    ("certify-model-missing", [*C, "--model", "{root}/missing.pt"], "missing.pt not found"),
    ("certify-model-dir", [*C, "--model", "{dir}"], "is a directory, not a checkpoint file"),
    ("certify-model-dev-full", [*C, "--model", "/dev/full"], "is a device or special file"),
    ("certify-model-proc", [*C, "--model", "/proc/version"], "/proc/version is not a readable checkpoint"),
    ("certify-model-5-classes", [*C, "--model", "{five}"], "declares 5 classes, but digits has 10"),
    ("certify-model-12-classes", [*C, "--model", "{twelve}"], "declares 12 classes, but digits has 10"),
    ("certify-model-12-outputs", [*C, "--model", "{out12}"], "weights do not fit arch 'cnn-small'"),
    ("certify-model-nan", [*C, "--model", "{nan}"], "weights hold NaN or infinite values"),
    ("certify-model-shape", [*C, "--model", "{shape28}"], "declares input shape [1, 28, 28], but digits inputs"),
    ("certify-model-4096", [*C, "--model", "{huge}"], "invalid input_shape [1, 4096, 4096]: 16,777,216 values"),
    ("certify-model-payload", [*C, "--model", "{evil}"], "evil.pt is not a readable checkpoint"),
    # stores
    ("certify-db-dir", [*CM, "--db", "{root}/ckpt"], "ckpt: is a directory"),
    ("certify-db-missing-folder", [*CM, "--db", "{root}/nope/r.db"], "folder {root}/nope does not exist"),
    ("certify-db-dev-full", [*CM, "--db", "/dev/full"], "/dev/full: is not a regular file"),
    ("certify-db-garbage", [*CM, "--db", "{garbage_db}"], "not a readable smoothviz database"),
    ("certify-run-unknown", ["certify", "--run", "999", "--db", "{db}"], "no run"),
    ("certify-run-missing-store", ["certify", "--run", "1", "--db", "{root}/absent.db"], "no results store at"),
    ("certify-run-env-store", ["certify", "--run", "1"], "no results store at {root}/env.db"),
    # predict
    ("predict-out-dir", [*PM, "--out", "{dir}"], "is a directory; give a file name"),
    ("predict-out-dev-full", [*PM, "--out", "/dev/full"], "is a device or special file"),
    ("predict-out-proc", [*PM, "--out", "/proc/version"], "/proc/version"),
    ("predict-out-missing-folder", [*PM, "--out", "{root}/nope/p.tsv"], "folder {root}/nope does not exist"),
    ("predict-n-huge", [*PM, "--n", str(10**12)], "exceeds 1,000,000,000 samples per point"),
    ("predict-n-long", [*PM, "--n", str(10**9), "--points", "360"], "more than a day; add --allow-long"),
    ("predict-seed-huge", [*PM, "--seed", str(2**70)], "argument --seed"),
    ("predict-model-nan", [*P, "--model", "{nan}"], "weights hold NaN or infinite values"),
    ("predict-model-5-classes", [*P, "--model", "{five}"], "declares 5 classes"),
    ("predict-batch-huge", [*PM, "--batch-size", str(10**12)], "a batch needs about"),
    ("predict-sigma-1e308", [*PM, "--sigma", "constant:1e308"], "is outside [1e-06, 100]"),
    # train
    ("train-epochs-long", [*TO, "--epochs", str(10**12)], "this training would take"),
    ("train-epochs-long-default-out", [*T, "--epochs", str(10**12)], "more than a day; add --allow-long"),
    ("train-sigma-ddrs", [*TO, "--sigma", "ddrs:0.1,0.5,4"], "training takes constant or knn; ddrs optimises"),
    ("train-sigma-ddrs-default-out", [*T, "--sigma", "ddrs:0.1,0.5,4"], "training takes constant or knn"),
    ("train-epochs-zero", [*TO, "--epochs", "0"], "argument --epochs: 0 must be >= 1"),
    ("train-epochs-type", [*TO, "--epochs", "many"], "argument --epochs: 'many' is not an integer"),
    ("train-seed-huge", [*TO, "--seed", str(2**70)], "argument --seed"),
    ("train-lr-inf", [*TO, "--lr", "inf"], "argument --lr: inf must be a finite number > 0"),
    ("train-lr-nan", [*TO, "--lr", "nan"], "argument --lr: NaN is not allowed"),
    ("train-momentum", [*TO, "--momentum", "5"], "momentum must be in [0, 1)"),
    ("train-threads-huge", [*TO, "--threads", str(10**12)], "argument --threads: 1000000000000 exceeds 1024"),
    ("train-dataset", [*TO, "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    ("train-knn-k", [*TO, "--sigma", "knn:0.25,0.4,5000"], "k=5000 exceeds the 1499 other training points"),
    ("train-sigma-1e308", [*TO, "--sigma", "constant:1e308"], "is outside [1e-06, 100]"),
    ("train-out-dir", [*T, "--out", "{dir}"], "is a directory; give a file name"),
    ("train-out-dev-full", [*T, "--out", "{full}"], "is a device or special file"),
    ("train-out-proc", [*T, "--out", "/proc/version"], "must end in .pt"),
    ("train-out-proc-pt", [*T, "--out", "/proc/smoothviz.pt"], "/proc/smoothviz.pt"),
    ("train-out-missing-folder", [*T, "--out", "{root}/nope/t.pt"], "folder {root}/nope does not exist"),
    ("train-progress-dir", [*TO, "--progress-file", "{dir}"], "--progress-file {dir}: is a directory"),
    # bench
    ("bench-out-dir", [*B, "--model", "{good}", "--out", "{dir}"], "is a directory; give a file name"),
    ("bench-out-dev-full", [*B, "--model", "{good}", "--out", "/dev/full"], "is a device or special file"),
    ("bench-out-proc", [*B, "--model", "{good}", "--out", "/proc/version"], "/proc/version"),
    ("bench-out-missing-folder", [*B, "--model", "{good}", "--out", "{root}/nope/b.json"], "does not exist"),
    ("bench-n-huge", [*BM, "--n", str(10**12)], "argument --n: 1000000000000 is outside 1 to 10,000,000"),
    ("bench-points-zero", [*BM, "--points", "0"], "argument --points: 0 is outside 1 to 1,000"),
    ("bench-solver-negative", [*BM, "--solver-points", "-5"], "argument --solver-points: -5 is outside 0"),
    ("bench-threads-huge", [*BM, "--threads", str(10**12)], "argument --threads"),
    ("bench-ceiling-huge", [*BM, "--ceiling-batches", str(10**12)], "--ceiling-batches 1000000000000: a batch"),
    ("bench-variant", [*BM, "--variants", "turbo"], "--variants: unknown 'turbo'"),
    ("bench-resnet-cpu", [*BO, "--model", "resnet20"], "--allow-cpu-resnet"),
    ("bench-model-nan", [*BO, "--model", "{nan}"], "weights hold NaN or infinite values"),
    ("bench-model-5-classes", [*BO, "--model", "{twelve}"], "declares 12 classes"),
    ("bench-model-missing", [*BO, "--model", "{root}/missing.pt"], "missing.pt not found"),
    ("bench-long", [*BM, "--n", "10000000", "--points", "1000", "--repeats", "100"],
     "this benchmark would take"),
]


@pytest.mark.parametrize("argv, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refused_in_one_line_and_nothing_written(work, argv, expected, capsys, monkeypatch):
    names = {k: str(v) for k, v in work.items()}
    argv = [a.format(**names) for a in argv]
    expected = expected.format(**names)
    monkeypatch.chdir(work["root"])
    monkeypatch.setenv("SMOOTHVIZ_DB", str(work["root"] / "env.db"))
    rows, tree = _rows(work["db"]), _tree(work["root"])
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse refusals
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith(f"smoothviz {argv[0]}: error: "), lines[0]
    assert expected in lines[0], lines[0]
    assert _rows(work["db"]) == rows
    assert _tree(work["root"]) == tree  # no store, checkpoint, output, rates file or folder appeared
    assert not work["marker"].exists()  # the pickle's payload never ran


def test_certify_honours_smoothviz_db(work, tmp_path, capsys, monkeypatch):
    db = tmp_path / "from-env.db"
    monkeypatch.setenv("SMOOTHVIZ_DB", str(db))
    code = main(["certify", "--model", str(work["good"]), "--n0", "10", "--n", "20", "--indices", "3",
                 "--device", "cpu", "--quiet"])
    assert code == 0, capsys.readouterr().err
    with Store(db) as s:
        assert s.results(1)["idx"].tolist() == [3]
    assert "1/1 point," in capsys.readouterr().out  # no "1 points"
