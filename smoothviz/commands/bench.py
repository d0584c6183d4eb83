"""``smoothviz bench``: the engine against the forward ceiling and the reference loop, side by side.

Without ``--model`` it benchmarks the shipped digits and fashion-mnist checkpoints (and, on a
CUDA device, a CIFAR ResNet-110 with random weights); ``--model resnet50`` is torchvision's
ImageNet ResNet-50 with random weights. ``--knn-synthetic`` times kNN sigma(x) alone on synthetic
data. ``--budget`` bounds the time the models take. Prints a table and writes JSON; the
engine's default rate of each checkpoint is recorded next to the results store, where
``certify`` and the dashboard's estimates find it. The output file, the models, the memory of the
largest batch and the duration are checked before anything is measured.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from smoothviz import cost
from smoothviz.commands._args import add_db_argument, bounded_int
from smoothviz.device import DEVICE_CHOICES_HELP
from smoothviz.errors import CheckpointError, InvalidArgument
from smoothviz.outputs import check_output_path

if TYPE_CHECKING:
    import torch

    from smoothviz.bench import BenchModel

NAME = "bench"
HELP = "Benchmark certification speed: forward ceiling, reference loop and engine options (table + JSON)."

SHIPPED = ("digits", "fashion-mnist")
RANDOM_ARCHS = ("resnet110", "resnet20", "resnet50")  # smoothviz.bench.RANDOM_ARCHS, without importing torch
DEFAULT_SIGMA = 0.25
DEFAULT_OUT_DIR = Path("benchmarks/results")
# Bounds of one benchmark's size (a benchmark measures; it is not a workload).
MAX_N = 10_000_000
MAX_POINTS = 1000
MAX_REPEATS = 100
MAX_SOLVER_POINTS = 1_000_000
MAX_THREADS = 1024
MAX_BATCH_SIZE = 1 << 20
MAX_BUDGET_S = 86_400.0
MAX_KNN_TRAIN = 200_000
MAX_KNN_TEST = 100_000
KNN_K = 20


def _seconds(text: str) -> float:
    """An argparse type: seconds, a number in (0, MAX_BUDGET_S]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= MAX_BUDGET_S:
        raise argparse.ArgumentTypeError(f"{text}: expected seconds in (0, {MAX_BUDGET_S:,.0f}]")
    return value


def _knn_sizes(text: str) -> tuple[int, int]:
    """An argparse type: TRAIN,TEST point counts for --knn-synthetic."""
    parts = [t.strip() for t in text.split(",")]
    try:
        train, test = (int(t) for t in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected TRAIN,TEST (two integers)") from None
    if not KNN_K <= train <= MAX_KNN_TRAIN or not 1 <= test <= MAX_KNN_TEST:
        raise argparse.ArgumentTypeError(f"{text!r}: TRAIN must be in {KNN_K} to {MAX_KNN_TRAIN:,} "
                                         f"(k = {KNN_K}) and TEST in 1 to {MAX_KNN_TEST:,}")
    return train, test


def _int_list(text: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected integers >= 1")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help=DEVICE_CHOICES_HELP)
    parser.add_argument("--model", action="append", default=None, metavar="MODEL",
                        help="checkpoint path, a shipped dataset (digits, fashion-mnist), resnet110/resnet20 "
                             "(CIFAR shape, random weights) or resnet50 (torchvision's ImageNet ResNet-50, "
                             "3x224x224, random weights); repeatable (default: digits and fashion-mnist, "
                             "plus resnet110 on CUDA)")
    parser.add_argument("--n", type=bounded_int(1, MAX_N), default=None,
                        help=f"noisy samples per point in each timed call, at most {MAX_N:,} "
                             "(default 10000 on CPU, 100000 on CUDA)")
    parser.add_argument("--points", type=bounded_int(1, MAX_POINTS), default=2,
                        help=f"test points sampled together, at most {MAX_POINTS} (default 2)")
    parser.add_argument("--repeats", type=bounded_int(1, MAX_REPEATS), default=3,
                        help=f"timed repeats, at most {MAX_REPEATS}; medians are reported (default 3)")
    parser.add_argument("--variants", default=None,
                        help="comma-separated engine variants, each a name or names joined by '+' that combine "
                             "their options (fast-fp16+channels_last); an unknown name lists them (default: on "
                             "CPU all but channels_last, fast-fp16 and cuda-graphs; on CUDA all but contiguous)")
    parser.add_argument("--batch-size", type=bounded_int(1, MAX_BATCH_SIZE), default=None,
                        help="the engine's batch size in every variant but batch-auto (default: the engine's "
                             "default for the device and model)")
    parser.add_argument("--ceiling-batches", type=_int_list, default=None,
                        help="batch sizes tried for the forward ceiling (default 64,256,1024,4096 on CPU and "
                             "the engine's batch for each model; on CUDA that batch B and B/8, B/2, 2B)")
    parser.add_argument("--threads", type=bounded_int(1, MAX_THREADS), default=None,
                        help="CPU threads (default: all cores allowed)")
    parser.add_argument("--solver-points", type=bounded_int(0, MAX_SOLVER_POINTS), default=1000,
                        help="points for the radius-solver timing at dimension 3072 (0 skips it; default 1000)")
    parser.add_argument("--no-knn", action="store_true", help="skip the kNN sigma(x) timing")
    parser.add_argument("--knn-synthetic", type=_knn_sizes, default=None, metavar="TRAIN,TEST",
                        help=f"time only kNN sigma(x) (k={KNN_K}) of TEST points against TRAIN training points, "
                             "synthetic uniform inputs of CIFAR-10's dimension 3072 (no --model)")
    parser.add_argument("--budget", type=_seconds, default=None, metavar="SECONDS",
                        help="time the models may take together: variants not prepared by half of it are "
                             "skipped (listed with the reason), timed rounds stop before overrunning it")
    parser.add_argument("--allow-cpu-resnet", action="store_true",
                        help="allow resnet110/resnet20/resnet50 on a CPU (slow: use a small --n and --batch-size)")
    parser.add_argument("--allow-long", action="store_true",
                        help="run even when the estimate exceeds a day (otherwise refused)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"JSON file (default {DEFAULT_OUT_DIR}/bench-DEVICE-TIME.json)")
    add_db_argument(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def _shipped_checkpoint(dataset: str) -> Path:
    """The shipped constant-sigma checkpoint of ``dataset`` (sigma 0.25 preferred)."""
    from smoothviz.models import list_checkpoints

    found = [(p, m) for p, m in list_checkpoints(("assets",), dataset=dataset)
             if str(m.get("sigma", "")).startswith("constant:")]
    if not found:
        raise CheckpointError(f"no shipped constant-sigma checkpoint for {dataset!r} in assets/")
    found.sort(key=lambda pm: abs(float(pm[1]["sigma"].split(":")[1]) - DEFAULT_SIGMA))
    return found[0][0]


def _points(x: torch.Tensor, count: int) -> torch.Tensor:
    import torch

    idx = torch.linspace(0, x.shape[0] - 1, min(count, x.shape[0])).round().long()
    return x[idx]


def _from_checkpoint(path: Path, points: int) -> BenchModel:
    from smoothviz.bench import BenchModel
    from smoothviz.data import load_dataset
    from smoothviz.models import load_checkpoint, read_checkpoint
    from smoothviz.store import file_sha256

    dataset = read_checkpoint(path)["meta"]["dataset"]
    ds = load_dataset(dataset)
    model, meta = load_checkpoint(path, expected_dataset=ds.name)
    spec = str(meta.get("sigma") or "")
    sigma = float(spec.split(":")[1]) if spec.startswith("constant:") else DEFAULT_SIGMA
    return BenchModel(
        name=f"{meta['dataset']} {meta['arch']}", model=model, input_shape=tuple(ds.input_shape),
        num_classes=ds.num_classes, points=_points(ds.test_x, points), sigma=sigma, source=str(path),
        train_x=ds.train_x,
        extra={"dataset": meta["dataset"], "arch": meta["arch"], "checkpoint_sha256": file_sha256(path)},
    )


def resolve_models(specs: list[str] | None, device: torch.device, points: int, allow_cpu_resnet: bool) -> list[BenchModel]:
    """BenchModels for the ``--model`` arguments (or the defaults for ``device``)."""
    if specs is None:
        specs = list(SHIPPED) + (["resnet110"] if device.type == "cuda" else [])
    models = []
    for spec in specs:
        if spec in RANDOM_ARCHS:
            if device.type != "cuda" and not allow_cpu_resnet:
                raise InvalidArgument(f"--model {spec}: on a CPU this is very slow; add --allow-cpu-resnet and a small --n")
            from smoothviz.bench import random_workload

            models.append(random_workload(spec, points))
        elif spec in SHIPPED:
            models.append(_from_checkpoint(_shipped_checkpoint(spec), points))
        else:
            models.append(_from_checkpoint(Path(spec), points))
    return models


def _check_and_estimate(models: list[BenchModel], device: torch.device, n: int, args: argparse.Namespace,
                        variants: dict, cache: Path) -> cost.Estimate:
    """Refuse batches that cannot fit in memory; the benchmark's duration at each model's engine rate.

    Each model's rate (``cost.engine_rate``: recorded, else measured now) is also kept in its
    ``extra["estimate_rate"]``, so the results compare it with the engine's measured throughput.
    """
    import math

    import torch

    from smoothviz.bench import default_ceiling_batches, planned_samples
    from smoothviz.certify import engine_classifier
    from smoothviz.speed import measure_memory_per_sample

    seconds, samples = 0.0, 0
    threads = torch.get_num_threads() if device.type == "cpu" else 1
    for bm in models:
        batches = args.ceiling_batches or default_ceiling_batches(device, bm.model, bm.input_shape)
        probe = measure_memory_per_sample(bm.model, bm.input_shape, device)
        cost.check_memory(bm.input_shape, max(batches), device, probe.bytes_per_sample, threads, "--ceiling-batches")
        # every ceiling setting keeps its input batch (one per thread) until the timing ends
        formats = 2 if len(bm.input_shape) == 3 else 1
        cost.check_memory(bm.input_shape, sum(batches) * formats * threads, device,
                          math.prod(bm.input_shape) * 4, 1, "--ceiling-batches")
        engine = engine_classifier(bm.model, {}, device, args.batch_size, bm.input_shape)
        _, rate = cost.engine_rate(bm.extra.get("checkpoint_sha256") or "", engine, bm.input_shape,
                                   bm.num_classes, device, {}, cache)
        # kept in the results, so the bench shows how far the estimates' rate is from the engine's
        bm.extra["estimate_rate"] = {"samples_per_s": rate.samples_per_second, "source": rate.source}
        planned = planned_samples(bm, device, n, args.repeats, variants, args.ceiling_batches)
        samples += planned
        seconds += planned / rate.samples_per_second
    text = (f"{cost.duration_text(seconds)} ({cost.plural(samples, 'noisy sample')} over "
            f"{cost.plural(len(models), 'model')} at each one's engine rate)")
    return cost.Estimate(seconds, text)


def _record_rates(result: dict, device: torch.device, cache: Path) -> None:
    """Each checkpoint's default engine rate, for certify's and the dashboard's estimates."""
    for mod in result["models"]:
        default = mod["engine"].get("default", {})
        sha = mod.get("checkpoint_sha256")
        if sha and "images_per_s" in default:
            cost.record_rate(cost.rate_key(sha, device, default["batch_size"], {}), default["images_per_s"],
                             "bench", cache)


def _variants(args: argparse.Namespace, device: torch.device) -> dict:
    """The engine variants to measure, with ``--batch-size`` in every one that sets no batch size."""
    from dataclasses import replace

    from smoothviz.bench import engine_variants, variant_options

    if args.variants is None:
        variants = engine_variants(device)
    else:
        names = [v.strip() for v in args.variants.split(",") if v.strip()]
        variants = {v: variant_options(v) for v in names}
    if args.batch_size is not None:
        variants = {k: v if v.batch_size is not None else replace(v, batch_size=args.batch_size)
                    for k, v in variants.items()}
    return variants


def _command_line() -> str:
    """The command as typed, when it is this verb's (recorded in the JSON)."""
    if len(sys.argv) > 1 and sys.argv[1] == NAME:
        return "python -m smoothviz bench " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    return ""


def run(args: argparse.Namespace) -> int:
    from smoothviz.bench import default_ceiling_batches, format_table, run_bench, run_knn_synthetic
    from smoothviz.device import keep_cpu_buffers, resolve_device
    from smoothviz.outputs import write_output
    from smoothviz.speed import set_cpu_threads

    out = check_output_path(args.out) if args.out is not None else None
    if args.knn_synthetic is not None and args.model is not None:
        raise InvalidArgument("--knn-synthetic times kNN sigma(x) alone: leave out --model")
    device = resolve_device(args.device)
    keep_cpu_buffers()  # as certify and predict do, so the engine is timed as it runs there
    threads = set_cpu_threads(args.threads)
    log = None if args.quiet else (lambda msg: print(f"bench: {msg}", file=sys.stderr, flush=True))
    if args.knn_synthetic is not None:
        train, test = args.knn_synthetic
        if log:
            log(f"kNN sigma(x): {test:,} synthetic points against {train:,} training points on {device}")
        result = run_knn_synthetic(train, test, device, args.repeats, _command_line())
    else:
        variants = _variants(args, device)
        if args.ceiling_batches is None and args.batch_size is not None:
            args.ceiling_batches = list(default_ceiling_batches(device, engine_batch=args.batch_size))
        n = args.n or (100_000 if device.type == "cuda" else 10_000)
        models = resolve_models(args.model, device, args.points, args.allow_cpu_resnet)
        cache = cost.rates_file(args.db)
        estimate = _check_and_estimate(models, device, n, args, variants, cache)
        cost.refuse_long(estimate, "this benchmark", args.allow_long, "--n, --points or --repeats")
        if log:
            log(f"estimate: {estimate.text}" + (f"; budget {args.budget:,.0f} s" if args.budget else ""))
        result = run_bench(models, device, n, args.repeats, variants, args.ceiling_batches,
                           knn=not args.no_knn, solver_points=args.solver_points, log=log, command=_command_line(),
                           budget_s=args.budget)
    result["machine"]["threads"] = threads
    if out is None:
        DEFAULT_OUT_DIR.mkdir(parents=True, exist_ok=True)
        out = DEFAULT_OUT_DIR / f"bench-{device.type}-{datetime.now():%Y%m%d-%H%M%S}.json"
    write_output(out, lambda fh: fh.write(json.dumps(result, indent=2, default=str) + "\n"))
    if result["models"]:
        _record_rates(result, device, cache)
    print(format_table(result))
    print(f"\nJSON written to {out}")
    return 0
