"""Helpers of benchmarks/gpu_check.sh: the environment, and the summary of one run's results.

``python benchmarks/gpu_check.py env PATH`` prints the environment and writes it as JSON to PATH
(``cuda_available`` decides the check's mode); ``summary RESULTS STEPS ENV``
reads the results folder (the CUDA tests' JUnit XML and the bench JSON files), the steps' record
and the environment JSON, writes RESULTS/summary.json and prints the table of goals. Only the
standard library and torch are needed (no streamlit, no plotly).
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

# The files gpu_check.sh writes into the results folder (log.txt besides).
TESTS_XML = "cuda-tests.xml"
BENCH_FILES = {
    "cifar10-resnet110": "bench-cifar10-resnet110.json",
    "imagenet-resnet50": "bench-imagenet-resnet50.json",
    "cifar10-resnet110-compile": "bench-cifar10-resnet110-compile.json",
    "imagenet-resnet50-compile": "bench-imagenet-resnet50-compile.json",
}
KNN_FILE = "knn-sigma.json"
SUMMARY_FILE = "summary.json"
OPTIONAL_PACKAGES = ("pytest", "numpy", "scipy", "torchvision", "pandas", "streamlit", "plotly")


def environment() -> dict:
    """Python, torch, CUDA and the GPU, CPU cores, and which optional packages import."""
    import torch

    info: dict = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": sys.executable, "python_version": platform.python_version(), "platform": platform.platform(),
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "packages": {name: _version(name) for name in OPTIONAL_PACKAGES},
    }
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        props = torch.cuda.get_device_properties(0)
        info.update({
            "device_count": torch.cuda.device_count(), "gpu": torch.cuda.get_device_name(0),
            "capability": list(torch.cuda.get_device_capability(0)), "multiprocessors": props.multi_processor_count,
            "gpu_memory_total_bytes": int(total), "gpu_memory_free_bytes": int(free),
            "cudnn": torch.backends.cudnn.version(), "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        })
    if shutil.which("nvidia-smi"):
        try:
            query = "name,driver_version,memory.total,memory.used,clocks.sm,clocks.max.sm,temperature.gpu,power.draw"
            out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20, check=False)
            info["nvidia_smi"] = out.stdout.strip() or out.stderr.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            info["nvidia_smi"] = f"failed: {exc}"
    return info


def _version(name: str) -> str | None:
    """The installed version of ``name``, None where it is not installed (nothing is imported)."""
    if importlib.util.find_spec(name) is None:
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "installed (version unknown)"


def tests_summary(path: Path) -> dict:
    """Counts, skip reasons, failures and recorded properties of a pytest JUnit XML file."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        return {"found": False, "error": f"{type(exc).__name__}: {exc}"}
    cases = list(root.iter("testcase"))
    failed = [c for c in cases if c.find("failure") is not None]
    errors = [c for c in cases if c.find("error") is not None]
    skipped = [c for c in cases if c.find("skipped") is not None]
    properties: dict[str, int] = {}
    for prop in root.iter("property"):
        try:
            properties[prop.get("name", "")] = properties.get(prop.get("name", ""), 0) + int(prop.get("value", "0"))
        except ValueError:
            continue
    return {
        "found": True, "tests": len(cases), "passed": len(cases) - len(failed) - len(errors) - len(skipped),
        "failures": len(failed), "errors": len(errors), "skipped": len(skipped),
        "failed": [f"{c.get('classname')}::{c.get('name')}" for c in failed + errors],
        "skip_reasons": sorted({(c.find("skipped").get("message") or "").strip() for c in skipped}),
        "properties": properties,
    }


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _first_model(result: dict | None) -> dict | None:
    return result["models"][0] if result and result.get("models") else None


def _with_compile(main: dict | None, compiled: dict | None) -> dict | None:
    """A model's main bench entry with the compile run's variants added (each row keeps the ratios
    to its own run's reference loop and ceilings, which that run measured alongside)."""
    if main is None or compiled is None:
        return main
    merged = dict(main)
    merged["engine"] = {**main.get("engine", {}),
                        **{f"{name} (compile run)": row for name, row in compiled.get("engine", {}).items()}}
    return merged


def read_steps(path: Path) -> list[dict]:
    """The steps' record: one tab-separated line per step (name, status, exit code, seconds, limit)."""
    steps = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            parts = line.split("\t")
            if len(parts) == 5:
                name, status, rc, seconds, limit = parts
                code = int(rc) if rc.lstrip("-").isdigit() else None
                steps.append({"step": name, "status": status, "exit_code": code, "seconds": float(seconds),
                              "limit_s": int(limit) if limit.isdigit() else None})
    return steps


def summarize(results: Path, steps_file: Path, env_file: Path) -> dict:
    """Everything of one run in one dict: environment, steps, tests, goals and the kNN timing."""
    from smoothviz.bench import speed_goals

    env = _read_json(env_file) or {}
    run_mode = "cuda" if env.get("cuda_available") else "cpu"
    benches = {key: _read_json(results / name) for key, name in BENCH_FILES.items()}
    cifar = _with_compile(_first_model(benches["cifar10-resnet110"]),
                          _first_model(benches["cifar10-resnet110-compile"]))
    imagenet = _with_compile(_first_model(benches["imagenet-resnet50"]),
                             _first_model(benches["imagenet-resnet50-compile"]))
    goals = speed_goals(cifar, imagenet)
    tests = tests_summary(results / TESTS_XML)
    if tests.get("found"):
        clean = tests["failures"] == 0 and tests["errors"] == 0 and tests["tests"] > 0
        met = clean and tests["skipped"] == 0
        value = f"{tests['passed']}/{tests['tests']} passed, {tests['skipped']} skipped"
    else:
        met, value = None, "no results (see the log)"
    goals.append({"goal": "every CUDA test passes, none skipped", "value": value, "target": "all", "met": met,
                  "detail": "; ".join(tests.get("failed", [])[:5])})
    if run_mode != "cuda":
        for goal in goals:
            goal["met"] = None
            goal["detail"] = ("CPU mode: not GPU numbers, not judged; " + goal["detail"]).rstrip("; ")
    knn = (_read_json(results / KNN_FILE) or {}).get("knn_synthetic")
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "mode": run_mode,
        "environment": env, "steps": read_steps(steps_file), "tests": tests, "goals": goals, "knn_sigma": knn,
        "files": sorted(p.name for p in results.iterdir() if p.is_file()) + [SUMMARY_FILE],
    }


def _value_text(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def format_summary(summary: dict) -> str:
    """The steps and the goals as a plain-text table (what the log ends with)."""
    env = summary["environment"]
    where = env.get("gpu") or f"no GPU, {env.get('cpu_count')} CPU cores"
    lines = [f"GPU check summary: mode {summary['mode']}, {where}, torch {env.get('torch')}"]
    if summary["mode"] != "cuda":
        lines.append("CPU MODE: CUDA parts skipped, tiny sizes; these are not GPU numbers")
    lines.append("")
    lines.append(f"{'step':34}{'status':>12}{'seconds':>9}{'limit':>7}")
    for step in summary["steps"]:
        limit = "-" if step["limit_s"] is None else str(step["limit_s"])
        lines.append(f"{step['step']:34}{step['status']:>12}{step['seconds']:>9.1f}{limit:>7}")
    lines.append("")
    lines.append(f"{'goal':58}{'value':>26}{'target':>8}  verdict")
    for goal in summary["goals"]:
        verdict = {True: "met", False: "MISSED", None: "n/a"}[goal["met"]]
        target = "-" if goal["target"] is None else str(goal["target"])
        detail = f"  ({goal['detail']})" if goal["detail"] else ""
        lines.append(f"{goal['goal']:58}{_value_text(goal['value']):>26}{target:>8}  {verdict}{detail}")
    knn = summary.get("knn_sigma")
    if knn:
        lines.append(f"kNN sigma(x): {knn['test_points']:,} points against {knn['train_points']:,} x {knn['dim']:,} "
                     f"on {knn['device']}: {knn['seconds']:.3g} s ({knn['seconds_per_point'] * 1e3:.3g} ms/point); "
                     f"training mean {knn['training_mean_seconds']:.3g} s")
    tests = summary["tests"]
    if tests.get("skip_reasons"):
        lines.append("skipped tests: " + " | ".join(tests["skip_reasons"]))
    if tests.get("properties"):
        lines.append("recorded by the tests: " + ", ".join(f"{k} {v}" for k, v in sorted(tests["properties"].items())))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if argv[:1] == ["env"] and len(argv) == 2:
        try:
            info = environment()
        except ImportError as exc:
            print(f"gpu_check.py: torch does not import ({exc})", file=sys.stderr)
            return 1
        Path(argv[1]).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        for key, value in info.items():
            print(f"  {key}: {value}")
        return 0
    if argv[:1] == ["summary"] and len(argv) == 4:
        results = Path(argv[1])
        summary = summarize(results, Path(argv[2]), Path(argv[3]))
        (results / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
        print(format_summary(summary))
        return 0
    print("usage: gpu_check.py env PATH | summary RESULTS STEPS ENV", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
