"""``smoothviz export``: write a run's per-point results as a reference-code log or CSV.

The reference-code log has the same six columns for every run. The CSV has the store's result
columns, and for a sequential run also how each point stopped (``store.SEQUENTIAL_COLUMNS``:
samples used, c_A and its votes, upper bound, stop reason).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from smoothviz.commands._args import add_db_argument

NAME = "export"
HELP = "Export a run: --format cohen (tab-separated log of the reference code) or csv."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="run id or unique run name")
    parser.add_argument("--format", choices=("cohen", "csv"), default="cohen")
    parser.add_argument("--out", type=Path, default=None,
                        help="output file, written whole or not at all (default: standard output)")
    add_db_argument(parser)


def run(args: argparse.Namespace) -> int:
    from smoothviz.outputs import check_output_path, write_output
    from smoothviz.store import Store, export_cohen_log, export_csv

    if args.out is not None:
        check_output_path(args.out)  # before the store is read
    writer = export_cohen_log if args.format == "cohen" else export_csv
    with Store(args.db, create=False) as store:
        run_id = store.resolve_run(args.run)
        if args.out is None:
            writer(store, run_id, sys.stdout)
            return 0
        write_output(args.out, lambda f: writer(store, run_id, f))
    print(f"run {run_id}: wrote {args.out}", file=sys.stderr)
    return 0
