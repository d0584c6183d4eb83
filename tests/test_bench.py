"""``smoothviz bench`` end to end on a tiny setting: the table, and JSON with every field."""

from __future__ import annotations

import contextlib
import io
import json
import math

import pytest
import torch

from smoothviz import cost
from smoothviz.bench import EXTRAPOLATE_N, EXTRAPOLATE_N0, format_table, seconds_per_point
from smoothviz.cli import main
from smoothviz.data import load_dataset
from smoothviz.models import build_model, save_checkpoint
from smoothviz.store import file_sha256

VARIANTS = "default,contiguous,fast-bf16,batch-auto,cuda-graphs"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    ds = load_dataset("digits")
    torch.manual_seed(0)
    model = build_model("cnn-small", ds.input_shape, ds.num_classes)
    path = tmp_path_factory.mktemp("ckpt") / "digits-tiny.pt"
    save_checkpoint(path, model, {"dataset": "digits", "arch": "cnn-small", "input_shape": list(ds.input_shape),
                                  "num_classes": ds.num_classes, "sigma": "constant:0.25"})
    return path


@pytest.fixture(scope="module")
def bench_run(checkpoint, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    out, db = folder / "bench.json", folder / "r.db"
    args = ["bench", "--device", "cpu", "--model", str(checkpoint), "--n", "300", "--points", "2",
            "--repeats", "1", "--variants", VARIANTS, "--ceiling-batches", "64,256", "--solver-points", "20",
            "--threads", "1", "--out", str(out), "--db", str(db), "--quiet"]
    printed = io.StringIO()
    threads = torch.get_num_threads()
    with contextlib.redirect_stdout(printed):
        code = main(args)
    torch.set_num_threads(threads)
    return code, out, printed.getvalue(), db


def test_bench_writes_json_with_every_field(bench_run):
    code, out, printed, _ = bench_run
    assert code == 0
    data = json.loads(out.read_text())
    assert {"created", "command", "machine", "settings", "notes", "models", "radius_solver"} <= set(data)
    assert data["machine"]["device"] == "cpu" and data["machine"]["threads"] == 1
    assert data["settings"]["extrapolated_to"] == {"n0": EXTRAPOLATE_N0, "n": EXTRAPOLATE_N}
    (mod,) = data["models"]
    assert mod["n"] == 300 and mod["points"] == 2 and mod["input_shape"] == [1, 8, 8]
    ceiling, reference = mod["ceiling"], mod["reference"]
    assert set(ceiling["by_batch"]) == {f"{f}@{b}" for f in ("contiguous", "channels_last") for b in (64, 256)}
    assert ceiling["best_batch"] in (64, 256) and ceiling["best_format"] in ("contiguous", "channels_last")
    assert ceiling["images_per_s"] == max(ceiling["by_batch"].values())
    best = ceiling["best_over_options"]
    assert best["images_per_s"] >= ceiling["images_per_s"]
    assert best["variant"] in ("default sweep", *VARIANTS.split(","))
    assert reference["batch_size"] == 1000 and reference["images_per_s"] > 0
    assert set(mod["engine"]) == set(VARIANTS.split(","))
    assert "CUDA" in mod["engine"]["cuda-graphs"]["error"]
    for name in ("default", "contiguous", "fast-bf16", "batch-auto"):
        row = mod["engine"][name]
        assert row["images_per_s"] > 0 and row["images_per_cpu_s"] > 0
        assert row["vs_ceiling_cpu"] == pytest.approx(row["images_per_cpu_s"] / ceiling["best_images_per_cpu_s"])
        assert len(row["seconds"]) == len(row["cpu_seconds"]) == 1
        assert row["vs_ceiling_same_options"] == pytest.approx(row["images_per_s"] / row["ceiling_same_options"])
        assert row["vs_reference"] == pytest.approx(row["images_per_s"] / reference["images_per_s"])
        assert row["vs_ceiling"] == pytest.approx(row["images_per_s"] / ceiling["images_per_s"])
        assert row["seconds_per_point_n100k"] == pytest.approx((EXTRAPOLATE_N0 + EXTRAPOLATE_N) / row["images_per_s"])
    assert mod["engine"]["fast-bf16"]["options"]["autocast"] == "bf16"
    assert mod["engine"]["default"]["applied"]["channels_last"] is True  # the CPU default for images
    assert mod["engine"]["contiguous"]["applied"]["channels_last"] is False
    assert mod["engine"]["batch-auto"]["options"]["batch_size"] == "auto"
    assert mod["engine"]["batch-auto"]["batch_size"] >= 8
    knn = mod["knn_sigma"]
    assert knn["seconds_per_point"] > 0 and knn["train_points"] == load_dataset("digits").train_x.shape[0]
    assert 0 < knn["fraction_of_certify_time_n100k"]
    assert data["radius_solver"]["dim"] == 3072 and data["radius_solver"]["points_per_s"] > 0
    # the printed table is the formatted JSON
    assert format_table(data) in printed
    assert "engine cuda-graphs" in printed and "n/a" in printed
    assert "rate behind the time estimates" in printed


def test_bench_records_the_default_engine_rate_for_estimates(bench_run, checkpoint):
    _, out, _, db = bench_run
    (mod,) = json.loads(out.read_text())["models"]
    assert mod["checkpoint_sha256"] == file_sha256(checkpoint)
    default = mod["engine"]["default"]
    rate = cost.sample_rate(checkpoint, "cpu", default["batch_size"], {}, cache=cost.rates_file(db))
    assert rate.source.startswith("recorded by bench on ")
    assert rate.samples_per_second == pytest.approx(default["images_per_s"])
    assert not db.exists()  # only the rates file lies next to the store; bench writes no store
    # the rate the estimate used is in the results beside the engine's measured one
    assert mod["estimate_rate"]["source"] == "measured now" and mod["estimate_rate"]["samples_per_s"] > 0


def test_planned_samples_count_every_task(checkpoint):
    from smoothviz.bench import BenchModel, planned_samples
    from smoothviz.speed import EngineOptions

    model = build_model("mlp", (2,), 2)
    bm = BenchModel("m", model, (2,), 2, torch.rand(3, 2), 0.25, "random")
    one = planned_samples(bm, torch.device("cpu"), 100, 1, {"default": EngineOptions()}, [64])
    # per round: ceiling ceil(300/64)*64 = 320, reference 300, engine + own ceiling 600; two rounds; one preparation
    assert one == 2 * (320 + 300 + 600) + 300
    assert planned_samples(bm, torch.device("cpu"), 100, 3, {"default": EngineOptions()}, [64]) == 4 * 1220 + 300


def test_seconds_per_point_extrapolates_from_throughput():
    assert seconds_per_point(100_100.0) == pytest.approx(1.0)
    assert seconds_per_point(0.0) == math.inf


@pytest.mark.parametrize(
    "extra, message",
    [(["--model", "resnet110"], "--allow-cpu-resnet"), (["--variants", "default,turbo"], "unknown 'turbo'")],
)
def test_bench_rejects_bad_requests(extra, message, capsys, tmp_path):
    code = main(["bench", "--device", "cpu", "--n", "10", "--out", str(tmp_path / "x.json"), "--db",
                 str(tmp_path / "r.db"), *extra])
    assert code == 2
    assert message in capsys.readouterr().err


def test_bench_runs_resnet_path_on_cpu_when_allowed(tmp_path):
    """The GPU benchmark's model (CIFAR ResNet, random weights) runs on a CPU with a tiny n."""
    out = tmp_path / "resnet.json"
    code = main(["bench", "--device", "cpu", "--model", "resnet20", "--allow-cpu-resnet", "--n", "16",
                 "--points", "1", "--repeats", "1", "--variants", "default,contiguous",
                 "--ceiling-batches", "16", "--solver-points", "0", "--threads", "1", "--out", str(out),
                 "--db", str(tmp_path / "r.db"), "--quiet"])
    assert code == 0
    (mod,) = json.loads(out.read_text())["models"]
    assert mod["input_shape"] == [3, 32, 32] and mod["source"] == "random weights"
    assert mod["engine"]["contiguous"]["images_per_s"] > 0
    assert "knn_sigma" not in mod
