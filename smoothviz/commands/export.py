"""``smoothviz export``: write a run's per-point results as a reference-code log or CSV, or its
certified-accuracy table with error bars as CSV.

The reference-code log has the same six columns for every run. The CSV has the store's result
columns, and for a sequential run also how each point stopped (``store.SEQUENTIAL_COLUMNS``:
samples used, c_A and its votes, upper bound, stop reason). ``--format table-csv`` writes one row
per radius of ``--radii``: the certified count and accuracy with the ``--ci`` interval over the
test points (``low``, ``high``; Clopper-Pearson or ``--ci-method bootstrap``), and with ``--hp``
the high-probability accuracy by the reference formula and the exact binomial bound
(``smoothviz.tradeoffs.interval_table``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from smoothviz.commands._args import (
    add_db_argument,
    open_probability,
    parse_radii,
    positive_int,
)

NAME = "export"
HELP = "Export a run: --format cohen (tab-separated log of the reference code), csv, or table-csv (with error bars)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="run id or unique run name")
    parser.add_argument("--format", choices=("cohen", "csv", "table-csv"), default="cohen")
    parser.add_argument("--out", type=Path, default=None,
                        help="output file, written whole or not at all (default: standard output)")
    table = parser.add_argument_group("table-csv")
    table.add_argument("--radii", default="0,0.25,0.5,0.75,1.0", help="radii of the table (default 0,0.25,0.5,0.75,1.0)")
    table.add_argument("--ci", type=open_probability, default=0.95, metavar="LEVEL",
                       help="confidence level of the interval over the test points (default 0.95)")
    table.add_argument("--ci-method", choices=("clopper-pearson", "bootstrap"), default="clopper-pearson")
    table.add_argument("--n-boot", type=positive_int, default=2000, metavar="B", help="bootstrap resamples")
    table.add_argument("--hp", default=None, metavar="[ALPHA,]RHO",
                       help="add the high-probability certified accuracy (see table --hp)")
    table.add_argument("--use", choices=("radius", "naive"), default="radius",
                       help="sound radius (default) or the naive one (no guarantee for input-dependent sigma)")
    add_db_argument(parser)


def _table_writer(args: argparse.Namespace, radii: list[float], hp):
    """The writer of ``--format table-csv``: the run's interval table as CSV."""
    from smoothviz.commands.table import interval_report

    def write(store, run_id: int, f) -> None:
        import pandas as pd

        run = store.run(run_id)
        column = "naive_radius" if args.use == "naive" else "radius"
        report = interval_report(run, store.results(run_id), radii, column, args.ci, args.ci_method, args.n_boot, hp)
        frame = pd.DataFrame(report["rows"])
        frame.insert(0, "run", run_id)
        frame.insert(1, "name", run["name"])
        frame["level"], frame["method"], frame["use"] = args.ci, args.ci_method, column
        frame.to_csv(f, index=False, lineterminator="\n")

    return write


def run(args: argparse.Namespace) -> int:
    from smoothviz.commands.table import parse_hp
    from smoothviz.outputs import check_output_path, write_output
    from smoothviz.store import Store, export_cohen_log, export_csv

    if args.format == "table-csv":
        writer = _table_writer(args, parse_radii(args.radii), parse_hp(args.hp) if args.hp is not None else None)
    else:
        writer = export_cohen_log if args.format == "cohen" else export_csv
    if args.out is not None:
        check_output_path(args.out)  # before the store is read
    with Store(args.db, create=False) as store:
        run_id = store.resolve_run(args.run)
        if args.out is None:
            writer(store, run_id, sys.stdout)
            return 0
        write_output(args.out, lambda f: writer(store, run_id, f))
    print(f"run {run_id}: wrote {args.out}", file=sys.stderr)
    return 0
