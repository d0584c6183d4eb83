"""``smoothviz predict``: PREDICT of Cohen et al. (abstains unless a binomial test is significant)."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

import torch

from smoothviz.certify import DEFAULT_N, make_classifier, predict_points, select_split
from smoothviz.commands._args import positive_int
from smoothviz.commands.certify import add_point_arguments, resolve_points, speed_options
from smoothviz.data import load_dataset
from smoothviz.device import keep_cpu_buffers, resolve_device
from smoothviz.models import load_checkpoint
from smoothviz.progress import ProgressBar, format_seconds
from smoothviz.sigma import build_sigma

NAME = "predict"
HELP = "Predict with the smoothed classifier (PREDICT of Cohen et al.: abstain at level alpha)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_point_arguments(parser)
    parser.add_argument("--n", type=positive_int, default=DEFAULT_N, help=f"samples per point (default {DEFAULT_N})")
    parser.add_argument("--out", type=Path, default=None,
                        help="write the reference code's predict log (idx label predict correct time)")


def run(args: argparse.Namespace) -> int:
    keep_cpu_buffers()
    dataset_name, spec, checkpoint, _meta, indices = resolve_points(args)
    device = resolve_device(args.device)
    ds = load_dataset(dataset_name)
    model, _ = load_checkpoint(checkpoint, device=device, expected_dataset=ds.name)
    sigma_fn = build_sigma(spec, ds.train_x, device=device)
    xs, ys = select_split(ds, args.split)
    select = torch.tensor(indices, dtype=torch.int64)
    bar = None if args.quiet else ProgressBar("points")
    t0 = time.perf_counter()
    classify, batch_size = make_classifier(model, speed_options(args), device, args.batch_size, ds.input_shape)
    try:
        results = predict_points(
            classify, xs[select], ys[select], indices, sigma_fn, args.n, args.alpha, ds.num_classes,
            batch_size, device, args.seed, progress=bar,
        )
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("w", encoding="utf-8") as f:
            f.write("idx\tlabel\tpredict\tcorrect\ttime\n")
            for r in results:
                f.write(f"{r.idx}\t{r.label}\t{r.predict}\t{int(r.correct)}\t{dt.timedelta(seconds=r.seconds)}\n")
        print(f"wrote {args.out}", file=sys.stderr)
    m = len(results)
    accuracy = sum(r.correct for r in results) / m
    abstained = sum(r.predict == -1 for r in results) / m
    print(f"{m} points ({ds.name}, {spec}, n={args.n}, alpha={args.alpha:g}) in {format_seconds(seconds)}: "
          f"accuracy {accuracy:.3f}, abstention {abstained:.1%}")
    return 0
