"""``smoothviz certify``: CERTIFY test points with a checkpoint and sigma(x); results go to the store.

Rerunning the same command resumes the run it created (same configuration, same store) and
certifies only the points still missing; ``--run ID`` executes or resumes a run already in the
store (the dashboard creates runs that way).

Everything is checked before the store is touched (dataset, checkpoint against the data, sigma(x)
on the chosen points, indices, device, options, the memory of a batch and the time the run will
take), so a refused command leaves no run, no row and no new database file behind. Only the
standard library and light smoothviz modules are imported here; the engine loads in ``run``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from smoothviz import cost
from smoothviz.commands._args import add_db_argument, open_probability, positive_int
from smoothviz.device import DEVICE_CHOICES_HELP
from smoothviz.errors import CheckpointError, InvalidArgument

NAME = "certify"
HELP = "Certify test points (CERTIFY of Cohen et al. with constant or input-dependent sigma) into the store."

DEFAULT_N0 = 100
DEFAULT_N = 100_000
DEFAULT_ALPHA = 0.001


def parse_radii(text: str) -> list[float]:
    """Radii from ``0,0.25,0.5``; InvalidArgument names a bad entry."""
    try:
        radii = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise InvalidArgument(f"--radii {text!r}: expected comma-separated numbers") from None
    if not radii or any(not math.isfinite(r) or r < 0 for r in radii):
        raise InvalidArgument(f"--radii {text!r}: expected finite radii >= 0")
    return radii


def seed_arg(text: str) -> int:
    """A seed: an integer from 0 to cost.SEED_MAX."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= value <= cost.SEED_MAX:
        raise argparse.ArgumentTypeError(f"{value} is outside 0 to {cost.SEED_MAX}")
    return value


def sample_count(text: str) -> int:
    """A number of noisy samples per point: an integer from 1 to cost.N_MAX."""
    value = positive_int(text)
    if value > cost.N_MAX:
        raise argparse.ArgumentTypeError(f"{value} exceeds {cost.N_MAX:,} samples per point")
    return value


def batch_size_arg(text: str) -> int | str:
    """An integer >= 1 or 'auto'."""
    return "auto" if text.strip().lower() == "auto" else positive_int(text)


def add_point_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments shared by certify and predict: data, model, sigma, points, engine, size."""
    parser.add_argument("--dataset", default=None, help="dataset (default: the checkpoint's)")
    parser.add_argument("--model", type=Path, default=None, help="checkpoint (.pt) to smooth")
    parser.add_argument("--sigma", default=None,
                        help="sigma function constant:S | knn:SIGMA_B,R,K[,m=M][,min=A][,max=B] "
                             "(default: the one the checkpoint was trained with)")
    parser.add_argument("--alpha", type=open_probability, default=DEFAULT_ALPHA,
                        help=f"failure probability in (0, 1) (default {DEFAULT_ALPHA})")
    parser.add_argument("--split", choices=("test", "train"), default="test")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--points", type=positive_int, default=None,
                       help="number of points, evenly spaced over the split (default: all)")
    group.add_argument("--indices", default=None, help="indices such as 0-99,150,200")
    parser.add_argument("--batch-size", type=batch_size_arg, default=None,
                        help="noisy samples per forward pass, or 'auto' from free device memory "
                             "(default 256 on CPU, 8192 on CUDA); it never changes the counts")
    parser.add_argument("--seed", type=seed_arg, default=0,
                        help=f"seed from 0 to {cost.SEED_MAX} (each point's noise derives from it and its index)")
    parser.add_argument("--device", default="auto", help=DEVICE_CHOICES_HELP)
    parser.add_argument("--allow-long", action="store_true",
                        help="run even when the estimate exceeds a day (otherwise refused)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    speedy = parser.add_argument_group("speed options (recorded with the run)")
    fast = speedy.add_mutually_exclusive_group()
    fast.add_argument("--autocast", choices=("bf16", "fp16"), default=None,
                      help="fast mode: evaluate the classifier under autocast; the certificate is then "
                           "for the classifier as evaluated in that precision, not for the fp32 model")
    fast.add_argument("--fast", action="store_const", const="bf16", dest="autocast",
                      help="the fast mode in bf16 (same as --autocast bf16; same caveat)")
    speedy.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="NHWC memory format, same noise draws (default: on for images on CPU)")
    speedy.add_argument("--compile", action="store_true", help="torch.compile the classifier")
    speedy.add_argument("--cuda-graphs", action="store_true", help="replay the forward pass as a CUDA graph")


def speed_options(args: argparse.Namespace) -> dict:
    """The run options the speed flags set (flags left out take the engine's defaults)."""
    from smoothviz.certify import engine_options

    options: dict = {}
    if args.autocast is not None:
        options["autocast"] = args.autocast
    if args.channels_last is not None:
        options["channels_last"] = bool(args.channels_last)
    for key in ("compile", "cuda_graphs"):
        if getattr(args, key):
            options[key] = True
    engine_options(options)
    return options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_point_arguments(parser)
    parser.add_argument("--n0", type=sample_count, default=DEFAULT_N0,
                        help=f"selection samples per point (default {DEFAULT_N0})")
    parser.add_argument("--n", type=sample_count, default=DEFAULT_N,
                        help=f"estimation samples per point, at most {cost.N_MAX:,} (default {DEFAULT_N:,})")
    parser.add_argument("--name", default=None, help="run name (default: checkpoint, sigma and n)")
    add_db_argument(parser)
    parser.add_argument("--run", default=None, metavar="RUN",
                        help="execute or resume this run of the store (id or name); other settings are ignored")
    parser.add_argument("--new", action="store_true",
                        help="always create a new run, even when an identical one could be resumed")
    parser.add_argument("--radii", default="0,0.25,0.5,0.75,1.0",
                        help="radii of the summary table (default 0,0.25,0.5,0.75,1.0)")


def resolve_points(args: argparse.Namespace) -> tuple[str, str, str, dict, list[int]]:
    """(dataset, canonical sigma spec, checkpoint path, checkpoint meta, indices) from the arguments."""
    from smoothviz.certify import select_split
    from smoothviz.data import canonical_name, load_dataset
    from smoothviz.models import read_checkpoint
    from smoothviz.points import evenly_spaced, parse_indices
    from smoothviz.sigma import canonical_spec, parse_sigma_spec

    if args.model is None:
        raise InvalidArgument("--model: a checkpoint is required (or --run RUN for certify)")
    meta = read_checkpoint(args.model)["meta"]
    dataset = canonical_name(args.dataset or meta["dataset"])
    if meta["dataset"] != dataset:
        raise CheckpointError(f"{args.model} was trained on {meta['dataset']!r}, not on {dataset!r}")
    spec_text = args.sigma or meta.get("sigma")
    if not spec_text:
        raise InvalidArgument("--sigma: the checkpoint records no sigma; give one")
    spec = canonical_spec(parse_sigma_spec(spec_text))
    ds = load_dataset(dataset)
    xs, _ = select_split(ds, args.split)
    size = int(xs.shape[0])
    if args.indices is not None:
        indices = parse_indices(args.indices, size)
    else:
        indices = evenly_spaced(args.points or size, size)
    return dataset, spec, str(args.model), meta, indices


def print_warnings(estimate: cost.Estimate, sigma_warning: str | None) -> None:
    """The time estimate and any warning about sigma(x), on stderr."""
    print(f"estimate: {estimate.text}", file=sys.stderr)
    if sigma_warning:
        print(f"warning: {sigma_warning}", file=sys.stderr)


def print_summary(store, run_id: int, radii: list[float], seconds: float | None = None, stream=None) -> None:
    """Run line, accuracy table at radii (sound, and naive when sigma varies), ACR, abstention."""
    import numpy as np

    from smoothviz import analysis
    from smoothviz.progress import format_seconds

    stream = stream or sys.stdout
    run = store.run(run_id)
    df = store.results(run_id)
    took = f", {format_seconds(seconds)} this session" if seconds is not None else ""
    print(f"run {run_id} ({run['name']}): {run['status']}, {run['done']}/{cost.plural(run['total'], 'point')}{took}",
          file=stream)
    if not len(df):
        return
    sound = analysis.accuracy_table(df, radii)
    naive = analysis.accuracy_table(df, radii, use="naive_radius")
    varies = bool(run.get("r")) and not np.allclose(df["radius"], df["naive_radius"])
    header = f"{'radius':>8}  {'certified accuracy':>18}" + (f"  {'naive (no guarantee)':>20}" if varies else "")
    print(header, file=stream)
    for (r, acc), nacc in zip(sound.itertuples(index=False), naive["certified_accuracy"]):
        line = f"{r:>8.3g}  {acc:>18.3f}" + (f"  {nacc:>20.3f}" if varies else "")
        print(line, file=stream)
    ceiling = analysis.run_ceiling(run)
    print(f"ACR {analysis.average_certified_radius(df):.3f}, abstention {analysis.abstention_rate(df):.1%}, "
          f"mean {df['seconds'].mean():.3g} s/point, ceiling {ceiling:.3f}", file=stream)


def _rate(prepared, options: dict, cache: Path) -> tuple[str, cost.Rate]:
    """The rate key of a prepared run and its recorded or freshly measured sampling rate."""
    from smoothviz.store import file_sha256

    ds = prepared.dataset
    return cost.engine_rate(file_sha256(prepared.checkpoint) or "", prepared.engine, ds.input_shape, ds.num_classes,
                            prepared.device, options, cache)


def _new_run(args: argparse.Namespace) -> tuple:
    """Check a new or resumable run completely, then open the store and create or find it.

    Returns (store, run id, prepared run, rate key, estimate). The store is opened only when its
    file exists (to find a run to resume) or once every check has passed (creating it).
    """
    from smoothviz.certify import prepare_run
    from smoothviz.device import resolve_device
    from smoothviz.sigma import parse_sigma_spec
    from smoothviz.store import Store, default_db

    if args.n0 > args.n:
        raise InvalidArgument(f"--n0 {args.n0} must not exceed --n {args.n}")
    dataset, spec, checkpoint, _meta, indices = resolve_points(args)
    options = speed_options(args)
    device = str(resolve_device(args.device))
    name = args.name or f"{Path(checkpoint).stem} {spec} n={args.n}"
    config = dict(
        name=name, dataset=dataset, split=args.split, checkpoint=checkpoint, sigma_spec=spec,
        n0=args.n0, n=args.n, alpha=args.alpha, device=device, indices=indices, seed=args.seed,
        options=options,
    )
    prepared = prepare_run({**config, "batch_size": args.batch_size})
    db = Path(args.db) if args.db is not None else default_db()
    key, rate = _rate(prepared, options, cost.rates_file(db))
    store = Store(db) if db.exists() else None
    try:
        run_id = None if store is None or args.new else store.find_run(**config)
        done = len(store.done_indices(run_id)) if run_id is not None else 0
        estimate = cost.estimate_certify(len(indices) - done, args.n0, args.n, rate)
        cost.refuse_long(estimate, "this certification", args.allow_long, "--n or --points")
        if store is None:
            store = Store(db)
        if run_id is None:
            params = parse_sigma_spec(spec)
            run_id = store.create_run(**config, sigma_params=params, r=float(params.get("r") or 0.0),
                                      batch_size=args.batch_size)
            print(f"run {run_id} created in {store.path}", file=sys.stderr)
        else:
            print(f"run {run_id}: resuming ({done} of {cost.plural(len(indices), 'point')} stored)", file=sys.stderr)
    except BaseException:
        if store is not None:
            store.close()
        raise
    return store, run_id, prepared, key, estimate


def _recorded_run(args: argparse.Namespace) -> tuple:
    """Check a run of the store before it executes (its record is left as it is when refused)."""
    from smoothviz.certify import check_executable, prepare_run
    from smoothviz.store import Store

    store = Store(args.db, create=False)
    try:
        run_id = store.resolve_run(args.run)
        run = store.run(run_id)
        check_executable(run)
        device = args.device if args.device != "auto" else None
        prepared = prepare_run(run, device, args.batch_size)
        key, rate = _rate(prepared, run["options"], cost.rates_file(store.path))
        remaining = len(run["indices"]) - len(store.done_indices(run_id))
        estimate = cost.estimate_certify(remaining, int(run["n0"]), int(run["n"]), rate)
    except BaseException:
        store.close()
        raise
    return store, run_id, prepared, key, estimate


def run(args: argparse.Namespace) -> int:
    from smoothviz.certify import run_certification
    from smoothviz.device import keep_cpu_buffers
    from smoothviz.progress import ProgressBar

    radii = parse_radii(args.radii)
    keep_cpu_buffers()
    store, run_id, prepared, key, estimate = (_recorded_run if args.run is not None else _new_run)(args)
    with store:
        print_warnings(estimate, prepared.sigma_warning)
        bar = None if args.quiet else ProgressBar("points")
        last: dict = {}

        def progress(info: dict) -> None:
            last.update(info)
            if bar is not None:
                bar(info)

        t0 = time.perf_counter()
        try:
            status = run_certification(store, run_id, progress=progress, prepared=prepared)
        finally:
            if bar is not None:
                bar.close()
            if last.get("elapsed", 0.0) >= cost.MIN_RECORD_SECONDS and last.get("samples"):
                cost.record_rate(key, last["samples"] / last["elapsed"], f"certify run {run_id}",
                                 cost.rates_file(store.path))
        print_summary(store, run_id, radii, time.perf_counter() - t0)
    return 0 if status == "done" else 1
