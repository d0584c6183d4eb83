"""``smoothviz bench``: the engine against the forward ceiling and the reference loop, side by side.

Without ``--model`` it benchmarks the shipped digits and fashion-mnist checkpoints (and, on a
CUDA device, a CIFAR ResNet-110 with random weights). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from datetime import datetime
from pathlib import Path

import torch

from smoothviz.bench import VARIANT_NAMES, BenchModel, engine_variants, format_table, run_bench, variant_options
from smoothviz.commands._args import positive_int
from smoothviz.data import DATASET_INFO, load_dataset
from smoothviz.device import DEVICE_CHOICES_HELP, keep_cpu_buffers, resolve_device
from smoothviz.errors import CheckpointError, InvalidArgument
from smoothviz.models import build_model, list_checkpoints, load_checkpoint
from smoothviz.speed import set_cpu_threads

NAME = "bench"
HELP = "Benchmark certification speed: forward ceiling, reference loop and engine options (table + JSON)."

SHIPPED = ("digits", "fashion-mnist")
RANDOM_ARCHS = ("resnet110", "resnet20")
DEFAULT_SIGMA = 0.25


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
                        help="checkpoint path, a shipped dataset (digits, fashion-mnist) or resnet110/resnet20 "
                             "(CIFAR shape, random weights); repeatable (default: digits and fashion-mnist, "
                             "plus resnet110 on CUDA)")
    parser.add_argument("--n", type=positive_int, default=None,
                        help="noisy samples per point in each timed call (default 10000 on CPU, 100000 on CUDA)")
    parser.add_argument("--points", type=positive_int, default=2, help="test points sampled together (default 2)")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed repeats; medians are reported (default 3)")
    parser.add_argument("--variants", default=None,
                        help="comma-separated engine variants: " + ", ".join(VARIANT_NAMES)
                             + " (default: on CPU all but channels_last, fast-fp16 and cuda-graphs; "
                             "on CUDA all but contiguous)")
    parser.add_argument("--ceiling-batches", type=_int_list, default=None,
                        help="batch sizes tried for the forward ceiling (default 64,256,1024,4096 on CPU, "
                             "1024,4096,16384 on CUDA, and the engine's default batch for each model)")
    parser.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: all cores allowed)")
    parser.add_argument("--solver-points", type=int, default=1000,
                        help="points for the radius-solver timing at dimension 3072 (0 skips it; default 1000)")
    parser.add_argument("--no-knn", action="store_true", help="skip the kNN sigma(x) timing")
    parser.add_argument("--allow-cpu-resnet", action="store_true",
                        help="allow resnet110/resnet20 on a CPU (slow: use a small --n)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON file (default benchmarks/results/bench-DEVICE-TIME.json)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def _shipped_checkpoint(dataset: str) -> Path:
    """The shipped constant-sigma checkpoint of ``dataset`` (sigma 0.25 preferred)."""
    found = [(p, m) for p, m in list_checkpoints(("assets",), dataset=dataset)
             if str(m.get("sigma", "")).startswith("constant:")]
    if not found:
        raise CheckpointError(f"no shipped constant-sigma checkpoint for {dataset!r} in assets/")
    found.sort(key=lambda pm: abs(float(pm[1]["sigma"].split(":")[1]) - DEFAULT_SIGMA))
    return found[0][0]


def _points(x: torch.Tensor, count: int) -> torch.Tensor:
    idx = torch.linspace(0, x.shape[0] - 1, min(count, x.shape[0])).round().long()
    return x[idx]


def _from_checkpoint(path: Path, points: int) -> BenchModel:
    model, meta = load_checkpoint(path)
    ds = load_dataset(meta["dataset"])
    spec = str(meta.get("sigma") or "")
    sigma = float(spec.split(":")[1]) if spec.startswith("constant:") else DEFAULT_SIGMA
    return BenchModel(
        name=f"{meta['dataset']} {meta['arch']}", model=model, input_shape=tuple(ds.input_shape),
        num_classes=ds.num_classes, points=_points(ds.test_x, points), sigma=sigma, source=str(path),
        train_x=ds.train_x, extra={"dataset": meta["dataset"], "arch": meta["arch"]},
    )


def _random_resnet(arch: str, points: int) -> BenchModel:
    info = DATASET_INFO["cifar10"]
    torch.manual_seed(0)
    model = build_model(arch, info.input_shape, info.num_classes).eval()
    x = torch.rand((points, *info.input_shape), generator=torch.Generator().manual_seed(0))
    return BenchModel(
        name=f"cifar10-shape {arch}", model=model, input_shape=tuple(info.input_shape),
        num_classes=info.num_classes, points=x, sigma=DEFAULT_SIGMA, source="random weights",
        extra={"dataset": "cifar10 (shape only)", "arch": arch},
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
            models.append(_random_resnet(spec, points))
        elif spec in SHIPPED:
            models.append(_from_checkpoint(_shipped_checkpoint(spec), points))
        else:
            models.append(_from_checkpoint(Path(spec), points))
    return models


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    keep_cpu_buffers()  # as certify and predict do, so the engine is timed as it runs there
    threads = set_cpu_threads(args.threads)
    if args.variants is None:
        variants = engine_variants(device)
    else:
        names = [v.strip() for v in args.variants.split(",") if v.strip()]
        variants = {v: variant_options(v) for v in names}
    n = args.n or (100_000 if device.type == "cuda" else 10_000)
    models = resolve_models(args.model, device, args.points, args.allow_cpu_resnet)
    log = None if args.quiet else (lambda msg: print(f"bench: {msg}", file=sys.stderr, flush=True))
    command = "python -m smoothviz bench " + " ".join(shlex.quote(a) for a in sys.argv[2:]) \
        if len(sys.argv) > 1 and sys.argv[1] == NAME else ""
    result = run_bench(models, device, n, args.repeats, variants, args.ceiling_batches,
                       knn=not args.no_knn, solver_points=args.solver_points, log=log, command=command)
    result["machine"]["threads"] = threads
    out = args.out or Path("benchmarks/results") / f"bench-{device.type}-{datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(format_table(result))
    print(f"\nJSON written to {out}")
    return 0
