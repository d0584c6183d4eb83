"""``smoothviz predict``: PREDICT of Cohen et al. (abstains unless a binomial test is significant).

Like ``certify``, everything (the output file included) is checked before any sample is drawn.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

from smoothviz import cost, launch
from smoothviz.commands.certify import (
    DEFAULT_N,
    add_point_arguments,
    print_warnings,
    resolve_points,
    sample_count,
    speed_options,
)
from smoothviz.outputs import check_output_path

NAME = "predict"
HELP = "Predict with the smoothed classifier (PREDICT of Cohen et al.: abstain at level alpha)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_point_arguments(parser)
    parser.add_argument("--n", "--num-samples", dest="n", type=sample_count, default=DEFAULT_N,
                        help=f"samples per point, at most {cost.N_MAX:,} (default {DEFAULT_N:,}); spell it "
                             "--num-samples under torchrun, which reads --n as its own --nnodes")
    parser.add_argument("--out", type=Path, default=None,
                        help="write the reference code's predict log (idx label predict correct time)")
    launch.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if launch.requested(args) or args.rendezvous is not None:
        return launch.launch(NAME, args, add_arguments)
    if launch.distributed_world() is not None:
        from smoothviz.commands import _torchrun

        return _torchrun.predict(args, _predict)
    return _predict(args, predict_here)


def predict_here(prepared, run: dict, progress) -> list:
    """PREDICT of every point of a prepared run in this process (``run``: its n, alpha and seed)."""
    from smoothviz.certify import predict_points

    xs, ys, sigmas = prepared.inputs(prepared.indices)
    ds, engine = prepared.dataset, prepared.engine
    return predict_points(engine.classify, xs, ys, prepared.indices, prepared.sigma_fn, run["n"], run["alpha"],
                          ds.num_classes, engine.batch_size, prepared.device, run["seed"], progress=progress,
                          sigmas=sigmas)


def _predict(args: argparse.Namespace, predict) -> int:
    """The verb in this process; ``predict(prepared, run, progress)`` computes the results
    (``predict_here``, or under torchrun the points spread over every rank)."""
    from smoothviz.certify import prepare_run
    from smoothviz.device import keep_cpu_buffers
    from smoothviz.knn_reference import remember_statistics
    from smoothviz.outputs import write_output
    from smoothviz.progress import ProgressBar, format_seconds
    from smoothviz.store import file_sha256

    keep_cpu_buffers()
    out = check_output_path(args.out) if args.out is not None else None
    points = resolve_points(args)
    spec, checkpoint, indices = points.sigma_spec, points.checkpoint, points.indices
    options = {**speed_options(args), **points.description}
    run = dict(dataset=points.dataset, split=args.split, checkpoint=checkpoint, sigma_spec=spec, indices=indices,
               options=options, device=args.device, batch_size=args.batch_size, n=args.n, alpha=args.alpha,
               seed=args.seed)
    prepared = prepare_run(run, trust_code=points.trust_code)
    ds, engine = prepared.dataset, prepared.engine
    _key, rate = cost.engine_rate(file_sha256(checkpoint) or "", engine, ds.input_shape, ds.num_classes,
                                  prepared.device, options, cost.rates_file())
    estimate = cost.estimate_certify(len(indices), 0, args.n, rate)
    cost.refuse_long(estimate, "this prediction", args.allow_long, "--n or --points")
    remember_statistics(prepared.sigma_fn)
    print_warnings(estimate, prepared.sigma_warning)
    bar = None if args.quiet else ProgressBar("points")
    t0 = time.perf_counter()
    try:
        results = predict(prepared, run, bar)
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    if out is not None:
        def write(f) -> None:
            f.write("idx\tlabel\tpredict\tcorrect\ttime\n")
            for r in results:
                f.write(f"{r.idx}\t{r.label}\t{r.predict}\t{int(r.correct)}\t{dt.timedelta(seconds=r.seconds)}\n")

        write_output(out, write)
        print(f"wrote {out}", file=sys.stderr)
    m = len(results)
    accuracy = sum(r.correct for r in results) / m
    abstained = sum(r.predict == -1 for r in results) / m
    print(f"{cost.plural(m, 'point')} ({ds.name}, {spec}, n={args.n}, alpha={args.alpha:g}) in "
          f"{format_seconds(seconds)}: accuracy {accuracy:.3f}, abstention {abstained:.1%}")
    return 0
