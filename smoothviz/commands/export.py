"""``smoothviz export``: write a run's per-point results as a reference-code log or CSV."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from smoothviz.store import DEFAULT_DB, Store, export_cohen_log, export_csv

NAME = "export"
HELP = "Export a run: --format cohen (tab-separated log of the reference code) or csv."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="run id or unique run name")
    parser.add_argument("--format", choices=("cohen", "csv"), default="cohen")
    parser.add_argument("--out", type=Path, default=None, help="output file (default: standard output)")
    parser.add_argument("--db", type=Path, default=DEFAULT_DB, help=f"results database (default {DEFAULT_DB})")


def run(args: argparse.Namespace) -> int:
    store = Store(args.db)
    run_id = store.resolve_run(args.run)
    writer = export_cohen_log if args.format == "cohen" else export_csv
    writer(store, run_id, args.out if args.out is not None else sys.stdout)
    if args.out is not None:
        print(f"run {run_id}: wrote {args.out}", file=sys.stderr)
    return 0
