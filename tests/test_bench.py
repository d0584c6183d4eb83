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


def test_variants_combine_with_plus_and_refuse_conflicts():
    from smoothviz.bench import variant_options
    from smoothviz.errors import InvalidArgument
    from smoothviz.speed import EngineOptions

    assert variant_options("fast-fp16+channels_last+cuda-graphs") == EngineOptions(
        autocast="fp16", channels_last=True, cuda_graphs=True)
    assert variant_options("default+compile") == EngineOptions(compile=True)
    assert variant_options("channels_last") == EngineOptions(channels_last=True)
    with pytest.raises(InvalidArgument, match="sets autocast twice"):
        variant_options("fast-bf16+fast-fp16")
    with pytest.raises(InvalidArgument, match="sets channels_last twice"):
        variant_options("contiguous+channels_last")
    with pytest.raises(InvalidArgument, match="unknown 'turbo'"):
        variant_options("fast-fp16+turbo")


def test_cuda_ceiling_sweep_lies_around_the_engine_batch():
    from smoothviz.bench import default_ceiling_batches

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert default_ceiling_batches(cuda) == (1024, 4096, 8192, 16384)  # no model: the 8192 default
    assert default_ceiling_batches(cuda, engine_batch=512) == (64, 256, 512, 1024)  # an ImageNet ResNet-50
    assert default_ceiling_batches(cpu, engine_batch=8) == (8, 64, 256, 1024, 4096)


def test_measure_stops_timed_rounds_at_the_deadline():
    import time

    from smoothviz.bench import Task, measure

    calls = []
    task = Task("sleep", lambda: (calls.append(1), time.sleep(0.05)), 10)
    timed = measure([task], torch.device("cpu"), repeats=50, deadline=time.perf_counter() + 0.3)["sleep"]
    assert 1 <= timed["rounds"] < 50 and len(timed["seconds"]) == timed["rounds"]
    assert len(calls) == timed["rounds"] + 1  # and the warm-up round
    # a deadline already past still gives one timed round after the warm-up
    assert measure([task], torch.device("cpu"), repeats=5, deadline=0.0)["sleep"]["rounds"] == 1


def test_budget_spent_skips_the_variants_with_the_reason():
    from smoothviz.bench import BenchModel, run_bench
    from smoothviz.speed import EngineOptions

    bm = BenchModel("m", build_model("mlp", (2,), 2), (2,), 2, torch.rand(2, 2), 0.25, "random")
    result = run_bench([bm], torch.device("cpu"), 64, repeats=3, variants={"default": EngineOptions()},
                       ceiling_batches=[64], solver_points=0, budget_s=1e-6)
    (mod,) = result["models"]
    assert mod["engine"]["default"]["error"].startswith("skipped: half of the time budget")
    assert mod["ceiling"]["rounds"] == 1 and mod["reference"]["rounds"] == 1
    assert result["settings"]["budget_s"] == 1e-6
    assert "timed rounds: 1 of 3" in format_table(result)


def test_random_workloads_have_their_dataset_shape_and_normalisation():
    from smoothviz import bench
    from smoothviz.commands import bench as bench_command
    from smoothviz.data import DATASET_INFO
    from smoothviz.errors import InvalidArgument
    from smoothviz.models import Normalize

    assert bench_command.RANDOM_ARCHS == bench.RANDOM_ARCHS
    state = torch.random.get_rng_state()
    r50 = bench.random_workload("resnet50", 2)
    assert torch.equal(torch.random.get_rng_state(), state), "the caller's random state is left alone"
    assert r50.input_shape == (3, 224, 224) and r50.num_classes == 1000 and r50.points.shape == (2, 3, 224, 224)
    norm = r50.model[0]
    assert isinstance(norm, Normalize)
    assert torch.allclose(norm.mean.flatten(), torch.tensor(bench.IMAGENET_MEAN))
    assert torch.allclose(norm.std.flatten(), torch.tensor(bench.IMAGENET_STD))
    assert sum(p.numel() for p in r50.model.parameters()) == 25_557_032  # torchvision's ResNet-50
    r110 = bench.random_workload("resnet110", 1)
    cifar = DATASET_INFO["cifar10"]
    assert r110.input_shape == (3, 32, 32) and r110.num_classes == 10
    assert torch.allclose(r110.model[0].mean.flatten(), torch.tensor(cifar.mean))
    with torch.inference_mode():
        assert r110.model(r110.points).shape == (1, 10)
    with pytest.raises(InvalidArgument, match="random-weight models"):
        bench.random_workload("vgg", 1)


def test_knn_synthetic_timing_through_the_cli(tmp_path, capsys):
    out = tmp_path / "knn.json"
    assert main(["bench", "--device", "cpu", "--knn-synthetic", "300,20", "--repeats", "1", "--threads", "1",
                 "--out", str(out), "--quiet"]) == 0
    data = json.loads(out.read_text())
    knn = data["knn_synthetic"]
    assert data["models"] == [] and knn["device"] == "cpu"
    assert (knn["train_points"], knn["test_points"], knn["dim"], knn["k"]) == (300, 20, 3072, 20)
    assert knn["seconds"] == pytest.approx(20 * knn["seconds_per_point"]) and knn["training_mean_seconds"] > 0
    assert "kNN sigma(x), synthetic: 20 points against 300 x 3,072" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--knn-synthetic", "10,5"], "TRAIN must be in 20"),
    (["--knn-synthetic", "100,5", "--model", "digits"], "leave out --model"),
    (["--budget", "0"], "--budget"),
    (["--batch-size", "0"], "--batch-size"),
    (["--variants", "fast-bf16+fast-fp16"], "sets autocast twice"),
])
def test_bench_refuses_bad_new_options_in_one_line(extra, message, capsys, tmp_path):
    try:
        code = main(["bench", "--device", "cpu", "--n", "10", "--out", str(tmp_path / "x.json"), "--db",
                     str(tmp_path / "r.db"), *extra])
    except SystemExit as exc:  # argparse's own errors exit from inside main
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_batch_size_option_sets_every_variant_but_auto(tmp_path):
    out = tmp_path / "b.json"
    assert main(["bench", "--device", "cpu", "--model", "resnet20", "--allow-cpu-resnet", "--n", "24", "--points", "1",
                 "--repeats", "1", "--variants", "default,batch-auto", "--batch-size", "12", "--ceiling-batches", "6",
                 "--solver-points", "0", "--threads", "1", "--out", str(out), "--db", str(tmp_path / "r.db"),
                 "--quiet"]) == 0
    (mod,) = json.loads(out.read_text())["models"]
    assert mod["engine"]["default"]["batch_size"] == 12 and mod["engine"]["default"]["options"]["batch_size"] == 12
    assert mod["engine"]["default"]["ceiling_same_options"] > 0
    assert mod["engine"]["batch-auto"]["options"]["batch_size"] == "auto"
    assert set(mod["ceiling"]["by_batch"]) == {"contiguous@6", "channels_last@6"}


def _model_entry(rows: dict, best_ceiling: float = 200_000.0) -> dict:
    """A bench model entry with engine rows {name: (autocast, s/point, vs_reference, vs own ceiling)}."""
    engine = {name: {"options": {"autocast": fast}, "images_per_s": 100_100 / s, "seconds_per_point_n100k": s,
                     "vs_reference": ref, "vs_ceiling_same_options": own}
              for name, (fast, s, ref, own) in rows.items()}
    engine["cuda-graphs"] = {"error": "not measured", "options": {"autocast": None}}
    return {"engine": engine, "ceiling": {"best_over_options": {"images_per_s": best_ceiling, "variant": "fast-fp16"}}}


def test_speed_goals_judge_the_best_variant_of_each_kind():
    from smoothviz.bench import speed_goals

    cifar = _model_entry({"default": (None, 1.2, 4.0, 0.95), "channels_last": (None, 0.8, 6.0, 0.92),
                          "fast-fp16": ("fp16", 0.25, 19.0, 0.85)})
    imagenet = _model_entry({"default": (None, 30.0, 2.0, 0.9), "fast-fp16": ("fp16", 11.0, 5.0, 0.9)})
    goals = {g["goal"]: g for g in speed_goals(cifar, imagenet)}
    fp32 = goals["CIFAR-10 ResNet-110 fp32/tf32 s/point (n=1e5)"]
    assert (fp32["value"], fp32["met"]) == (0.8, True) and "channels_last" in fp32["detail"] and "1.2" in fp32["detail"]
    fast = goals["CIFAR-10 ResNet-110 fast mode s/point (n=1e5)"]
    assert (fast["value"], fast["met"]) == (0.25, True)
    vs_ref = goals["CIFAR-10 ResNet-110 engine vs reference loop"]
    assert (vs_ref["value"], vs_ref["met"]) == (6.0, True), "the fp32 variants only"
    own = goals["CIFAR-10 ResNet-110 engine vs its own ceiling"]
    assert (own["value"], own["met"]) == (0.85, False) and "fast-fp16" in own["detail"]
    ceiling = goals["CIFAR-10 ResNet-110 best ceiling over all options, s/point"]
    assert ceiling["met"] is None and ceiling["value"] == pytest.approx(seconds_per_point(200_000.0))
    r50 = goals["ImageNet ResNet-50 fast mode s/point (n=1e5)"]
    assert (r50["value"], r50["met"]) == (11.0, False)
    missing = speed_goals(None, None)
    assert all(g["met"] is None and g["value"] is None for g in missing) and len(missing) == 5
