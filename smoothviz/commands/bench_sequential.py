"""``smoothviz bench-sequential``: sequential (anytime-valid) against fixed-n CERTIFY, side by side.

On the shipped constant-sigma checkpoints (digits, fashion-mnist) and the same test points:
the fixed-n run, fixed-radius sequential runs at each ``--radii`` entry and radius-mode runs
capped at the fixed run's ceiling with each ``--tolerances`` entry (``smoothviz.sequential_bench``
says what is measured). Prints a table and writes JSON; nothing goes to the results store. The
output file and the duration (the fixed runs, at the recorded or a freshly measured rate) are
checked before anything is certified.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from smoothviz import cost
from smoothviz.commands._args import add_db_argument, non_negative, open_probability, parse_radii, positive_int, seed_arg
from smoothviz.device import DEVICE_CHOICES_HELP
from smoothviz.errors import InvalidArgument
from smoothviz.outputs import check_output_path

NAME = "bench-sequential"
HELP = "Benchmark sequential against fixed-n certification on the shipped models (samples, accuracy, time)."

SHIPPED = {"digits": "assets/digits-cnn-constant-0.25.pt",
           "fashion-mnist": "assets/fashion-mnist-lenet-constant-0.25.pt"}
DEFAULT_POINTS = {"digits": 90, "fashion-mnist": 30}
DEFAULT_OUT_DIR = Path("benchmarks/results")
MAX_POINTS = 10_000

T = TypeVar("T")


def _names(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in names if t not in allowed]
    if not names or bad:
        raise InvalidArgument(f"{what} {text!r}: expected a comma-separated list of {', '.join(allowed)}")
    return names


def _numbers(text: str, flag: str, parse: Callable[[str], T]) -> list[T]:
    """The comma-separated values of ``flag``, each read by the argparse type ``parse``; a bad one is refused."""
    try:
        return [parse(t) for t in text.split(",") if t.strip()]
    except argparse.ArgumentTypeError as exc:
        raise InvalidArgument(f"{flag} {text!r}: {exc}") from None


def _counts(text: str) -> list[int]:
    values = _numbers(text, "--points", positive_int)
    if not values or max(values) > MAX_POINTS:
        raise InvalidArgument(f"--points {text!r}: expected point counts from 1 to {MAX_POINTS:,}, one per model")
    return values


def _tolerances(text: str) -> list[float]:
    values = _numbers(text, "--tolerances", non_negative)
    if not values:
        raise InvalidArgument(f"--tolerances {text!r}: expected comma-separated numbers >= 0")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", default="digits,fashion-mnist",
                        help="shipped models to compare: digits, fashion-mnist (default both)")
    parser.add_argument("--points", default=None,
                        help="test points per model, evenly spaced over its test split, one count per model "
                             f"(default {DEFAULT_POINTS['digits']} digits, {DEFAULT_POINTS['fashion-mnist']} "
                             "fashion-mnist)")
    parser.add_argument("--n", type=positive_int, default=100_000, help="the fixed run's n and the sequential budget")
    parser.add_argument("--n0", type=positive_int, default=100, help="selection samples per point (default 100)")
    parser.add_argument("--alpha", type=open_probability, default=0.001, help="failure probability (default 0.001)")
    parser.add_argument("--radii", default="0.25,0.5", help="fixed-radius runs at these radii (default 0.25,0.5)")
    parser.add_argument("--cs", default="mixture",
                        help="confidence sequences, comma-separated: mixture (= betting), union (default mixture)")
    parser.add_argument("--tolerances", default="0",
                        help="radius-mode tolerances, comma-separated (default 0); max-radius is the ceiling")
    parser.add_argument("--seed", type=seed_arg, default=0, help=f"seed from 0 to {cost.SEED_MAX} (default 0)")
    parser.add_argument("--device", default="auto", help=DEVICE_CHOICES_HELP)
    parser.add_argument("--batch-size", type=positive_int, default=None, help="noisy samples per forward pass")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"JSON output (default {DEFAULT_OUT_DIR}/sequential-DEVICE-TIME.json)")
    parser.add_argument("--allow-long", action="store_true", help="run even when the estimate exceeds a day")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    add_db_argument(parser)


def _command_line() -> str:
    return "python -m smoothviz " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def format_table(result: dict) -> str:
    """The comparison as text: one block per model, one line per run."""
    lines = []
    for model in result["models"]:
        radii = list(model["runs"]["fixed"]["certified_accuracy"])
        lines.append(f"{model['dataset']} [{model['checkpoint']}], {len(model['indices'])} points, "
                     f"batch {model['batch_size']}, {model['threads']} thread(s), ceiling {model['ceiling']:.3f}")
        head = f"  {'run':<44}" + "".join(f"{'acc@' + r:>9}" for r in radii) + \
            f"{'ACR':>7}{'samples/pt':>12}{'x fewer':>9}{'wall s':>9}{'x faster':>9}{'fill':>6}"
        lines.append(head)
        for name, run in model["runs"].items():
            cells = "".join(f"{run['certified_accuracy'][r]:>9.3f}" for r in radii)
            ratio = f"{run['sample_ratio']:>9.1f}" if "sample_ratio" in run else f"{'-':>9}"
            faster = f"{run['time_ratio']:>9.1f}" if "time_ratio" in run else f"{'-':>9}"
            fill = f"{run['batch_fill']:>6.2f}" if run["batch_fill"] is not None else f"{'-':>6}"
            lines.append(f"  {name:<44}{cells}{run['acr']:>7.3f}{run['samples_per_point']:>12,.0f}{ratio}"
                         f"{run['seconds']:>9.1f}{faster}{fill}")
        lines.append(f"  oracle bound, radius mode: ACR at 98% of the fixed run needs >= 1/"
                     f"{model['oracle_ratio_at_98_percent_acr']:.2f} of its samples")
        oracle = ", ".join(f"R={r}: {v:.1f}x" for r, v in model["oracle_fixed_radius_ratio"].items())
        lines.append(f"  oracle bound, fixed radius (fewer samples than the fixed run at most): {oracle}")
        lines.append("")
    return "\n".join(lines).rstrip()


def run(args: argparse.Namespace) -> int:
    from smoothviz import sequential_bench as sb
    from smoothviz.certify import prepare_run
    from smoothviz.data import load_dataset
    from smoothviz.device import keep_cpu_buffers, resolve_device
    from smoothviz.models import read_checkpoint
    from smoothviz.outputs import write_output
    from smoothviz.points import evenly_spaced
    from smoothviz.store import file_sha256

    out = check_output_path(args.out) if args.out is not None else None
    models = _names(args.models, tuple(SHIPPED), "--models")
    counts = _counts(args.points) if args.points is not None else [DEFAULT_POINTS[m] for m in models]
    if len(counts) != len(models):
        raise InvalidArgument(f"--points {args.points!r}: give one count per model ({len(models)})")
    radii = parse_radii(args.radii)
    methods = _names(args.cs, ("mixture", "betting", "union"), "--cs")
    tolerances = _tolerances(args.tolerances)
    if args.n0 > args.n:
        raise InvalidArgument(f"--n0 {args.n0} must not exceed --n {args.n}")
    if args.n > cost.N_MAX:
        raise InvalidArgument(f"--n {args.n} exceeds {cost.N_MAX:,} samples per point")
    seed = args.seed
    device = str(resolve_device(args.device))
    keep_cpu_buffers()
    cases, seconds, texts = [], 0.0, []
    for name, points in zip(models, counts, strict=True):
        size = int(load_dataset(name).test_x.shape[0])
        case = sb.Case(name, SHIPPED[name], tuple(evenly_spaced(points, size)))
        spec = read_checkpoint(case.checkpoint)["meta"]["sigma"]
        prepared = prepare_run(dict(dataset=name, split="test", checkpoint=case.checkpoint, sigma_spec=spec,
                                    n0=args.n0, n=args.n, alpha=args.alpha, device=device,
                                    indices=list(case.indices), seed=seed, options={}, batch_size=args.batch_size))
        _, rate = cost.engine_rate(file_sha256(case.checkpoint) or "", prepared.engine, prepared.dataset.input_shape,
                                   prepared.dataset.num_classes, prepared.device, {}, cost.rates_file(args.db))
        estimate = cost.estimate_certify(len(case.indices), args.n0, args.n, rate)
        seconds += estimate.seconds
        texts.append(f"{name}: {estimate.text}")
        cases.append(case)
    total = cost.Estimate(seconds, "; ".join(texts))
    cost.refuse_long(total, "this benchmark's fixed-n runs", args.allow_long, "--n or --points")
    log = None if args.quiet else (lambda msg: print(f"bench-sequential: {msg}", file=sys.stderr, flush=True))
    if log:
        log(f"fixed-n runs alone: {cost.duration_text(seconds)} ({total.text}); each radius-mode run may "
            "take as long again (tolerance 0 uses the whole budget), the fixed-radius runs much less")
    before = sb.machine()
    result = {"command": _command_line(), "started": datetime.now().isoformat(timespec="seconds"),
              "n0": args.n0, "n": args.n, "alpha": args.alpha, "seed": seed, "radii": radii,
              "cs": methods, "tolerances": tolerances, "machine": before,
              "models": [sb.compare(case, args.n0, args.n, args.alpha, seed, radii, methods, tolerances, device,
                                    args.batch_size, log) for case in cases]}
    result["finished"] = datetime.now().isoformat(timespec="seconds")
    result["load_average_after"] = sb.machine()["load_average"]
    if out is None:
        DEFAULT_OUT_DIR.mkdir(parents=True, exist_ok=True)
        out = DEFAULT_OUT_DIR / f"sequential-{device.split(':')[0]}-{datetime.now():%Y%m%d-%H%M%S}.json"
    write_output(out, lambda fh: fh.write(json.dumps(result, indent=2) + "\n"))
    print(format_table(result))
    print(f"\nJSON written to {out}")
    return 0
