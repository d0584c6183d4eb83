"""``smoothviz import``: load a certification log of the reference smoothing code as a run."""

from __future__ import annotations

import argparse
from pathlib import Path

from smoothviz.commands._args import open_probability, positive_int
from smoothviz.data import canonical_name
from smoothviz.store import DEFAULT_DB, Store, import_cohen_log

NAME = "import"
HELP = "Import a tab-separated certification log (idx label predict radius correct time) as a run."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="log file of the reference code's certify.py")
    parser.add_argument("--name", required=True, help="run name")
    parser.add_argument("--dataset", required=True, help="dataset the log certified")
    parser.add_argument("--sigma", default=None, help="sigma used (a number or a spec such as constant:0.25)")
    parser.add_argument("--n", type=positive_int, default=None, help="estimation samples (for the ceiling)")
    parser.add_argument("--alpha", type=open_probability, default=None, help="alpha (for the ceiling)")
    parser.add_argument("--db", type=Path, default=DEFAULT_DB, help=f"results database (default {DEFAULT_DB})")


def run(args: argparse.Namespace) -> int:
    store = Store(args.db)
    run_id = import_cohen_log(store, args.file, args.name, canonical_name(args.dataset), args.sigma,
                              n=args.n, alpha=args.alpha)
    print(f"run {run_id}: imported {store.run(run_id)['done']} points from {args.file}")
    return 0
