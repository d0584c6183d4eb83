"""benchmarks/gpu_check.sh: the whole check in CPU mode, its files and keys; its helpers; no streamlit."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
RUN_FILES = {"log.txt", "cuda-tests.xml", "bench-cifar10-resnet110.json", "bench-imagenet-resnet50.json",
             "knn-sigma.json", "summary.json"}
STEP_NAMES = ["environment", "cuda-tests", "bench-cifar10-resnet110", "bench-imagenet-resnet50", "knn-sigma",
              "bench-cifar10-resnet110-compile", "bench-imagenet-resnet50-compile"]


def _helpers():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    """One CPU-mode run of the script (GPU hidden, so it is CPU mode on any machine)."""
    results = tmp_path_factory.mktemp("gpu-check") / "results"
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_MODE": "cpu", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(["bash", str(SCRIPT), str(results)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900, check=False)
    return done, results


@pytest.mark.slow
def test_cpu_mode_runs_end_to_end_and_writes_every_file(cpu_run):
    done, results = cpu_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert {p.name for p in results.iterdir()} == RUN_FILES
    log = (results / "log.txt").read_text()
    assert log == done.stdout, "everything printed is in the log"
    assert "CPU MODE" in log and "not GPU numbers" in log and "GPU check summary: mode cpu" in log
    assert "CUDA is not available here" in log, "the skipped CUDA cases print their reason"

    summary = json.loads((results / "summary.json").read_text())
    assert summary["mode"] == "cpu" and summary["environment"]["cuda_available"] is False
    assert summary["environment"]["torch"] and "pytest" in summary["environment"]["packages"]
    steps = {s["step"]: s for s in summary["steps"]}
    assert list(steps) == STEP_NAMES
    assert all(steps[name]["status"] == "ok" and steps[name]["exit_code"] == 0 for name in STEP_NAMES[:5])
    assert all(steps[name]["limit_s"] and steps[name]["seconds"] <= steps[name]["limit_s"] for name in STEP_NAMES[:5])
    assert steps["bench-cifar10-resnet110-compile"]["status"] == "skipped"
    assert "inductor's C++ build" in log
    tests = summary["tests"]
    assert tests["found"] and tests["failures"] == tests["errors"] == 0
    assert tests["passed"] >= 5 and tests["skipped"] >= 5 and tests["passed"] + tests["skipped"] == tests["tests"]
    assert any("CUDA is not available" in r for r in tests["skip_reasons"])
    assert {"near_tie_label_flips_cpu", "near_ties_cpu"} <= set(tests["properties"])
    assert tests["properties"]["near_tie_label_flips_cpu"] == 0, "exact on the CPU"
    goals = summary["goals"]
    assert len(goals) == 7 and all(g["met"] is None and g["detail"].startswith("CPU mode") for g in goals)
    measured = {g["goal"]: g["value"] for g in goals}
    assert measured["CIFAR-10 ResNet-110 fp32/tf32 s/point (n=1e5)"] > 0
    assert measured["ImageNet ResNet-50 fast mode s/point (n=1e5)"] > 0
    assert summary["knn_sigma"]["train_points"] == 1000 and summary["knn_sigma"]["dim"] == 3072
    assert set(summary["files"]) == RUN_FILES

    for name, shape in (("bench-cifar10-resnet110.json", [3, 32, 32]), ("bench-imagenet-resnet50.json", [3, 224, 224])):
        data = json.loads((results / name).read_text())
        (mod,) = data["models"]
        assert mod["input_shape"] == shape and mod["source"] == "random weights"
        assert mod["engine"]["default"]["images_per_s"] > 0 and mod["engine"]["fast-bf16"]["images_per_s"] > 0
        assert mod["reference"]["images_per_s"] > 0 and mod["ceiling"]["images_per_s"] > 0
        assert data["settings"]["budget_s"] > 0 and data["machine"]["device"] == "cpu"
    r110 = json.loads((results / "bench-cifar10-resnet110.json").read_text())["models"][0]
    assert "CUDA" in r110["engine"]["cuda-graphs"]["error"]
    knn = json.loads((results / "knn-sigma.json").read_text())["knn_synthetic"]
    assert (knn["train_points"], knn["test_points"], knn["device"]) == (1000, 50, "cpu") and knn["seconds"] > 0


def test_usage_error_without_a_results_folder():
    done = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 2 and done.stderr.strip() == "usage: bash benchmarks/gpu_check.sh RESULTS_DIR"


def test_junit_and_steps_are_read_back(tmp_path):
    helpers = _helpers()
    xml = tmp_path / "t.xml"
    xml.write_text(textwrap.dedent("""\
        <testsuites><testsuite name="pytest" tests="4">
          <testcase classname="tests.test_cuda" name="a"><properties><property name="near_ties" value="3"/>
          </properties></testcase>
          <testcase classname="tests.test_cuda" name="b"><skipped message="no GPU here"/></testcase>
          <testcase classname="tests.test_cuda" name="c"><failure message="boom"/></testcase>
          <testcase classname="tests.test_cuda" name="d"><properties><property name="near_ties" value="2"/>
          </properties></testcase>
        </testsuite></testsuites>"""))
    got = helpers.tests_summary(xml)
    assert (got["tests"], got["passed"], got["failures"], got["errors"], got["skipped"]) == (4, 2, 1, 0, 1)
    assert got["failed"] == ["tests.test_cuda::c"] and got["skip_reasons"] == ["no GPU here"]
    assert got["properties"] == {"near_ties": 5}
    xml.write_text("<testsuites><testsuite")  # cut short, as a step killed mid-write leaves it
    assert helpers.tests_summary(xml)["found"] is False
    assert helpers.tests_summary(tmp_path / "absent.xml")["found"] is False
    steps = tmp_path / "steps.tsv"
    steps.write_text("cuda-tests\tok\t0\t41\t90\nknn-sigma\ttimed out\t124\t40\t40\nbroken line\n")
    assert helpers.read_steps(steps) == [
        {"step": "cuda-tests", "status": "ok", "exit_code": 0, "seconds": 41.0, "limit_s": 90},
        {"step": "knn-sigma", "status": "timed out", "exit_code": 124, "seconds": 40.0, "limit_s": 40}]


def test_the_compile_run_adds_its_variants_to_the_goals():
    helpers = _helpers()
    main = {"engine": {"default": {"x": 1}}, "ceiling": {}}
    merged = helpers._with_compile(main, {"engine": {"compile": {"x": 2}}})
    assert merged["engine"] == {"default": {"x": 1}, "compile (compile run)": {"x": 2}}
    assert main["engine"] == {"default": {"x": 1}}, "the main entry is left as it was"
    assert helpers._with_compile(None, {"engine": {}}) is None and helpers._with_compile(main, None) is main


BLOCKER = textwrap.dedent("""\
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in ("streamlit", "plotly"):
                raise ImportError("blocked " + name)
    sys.meta_path.insert(0, Block())
    import smoothviz.cli, smoothviz.bench, smoothviz.commands.bench
    sys.path.insert(0, "benchmarks")
    import gpu_check
    import pytest
    code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py"])
    assert not [m for m in sys.modules if m.split(".")[0] in ("streamlit", "plotly")]
    sys.exit(int(code))
""")


def test_nothing_the_check_runs_needs_streamlit_or_plotly():
    """The GPU machine has neither: the bench, the helpers and the CUDA tests' collection must not import them."""
    done = subprocess.run([sys.executable, "-c", BLOCKER], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "tests/test_cuda.py::" in done.stdout
