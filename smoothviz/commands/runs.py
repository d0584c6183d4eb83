"""``smoothviz runs``: list the runs in the store with their status and progress."""

from __future__ import annotations

import argparse
import json

from smoothviz.commands._args import add_db_argument

NAME = "runs"
HELP = "List the runs in the results store (id, name, dataset, sigma, n0, n, status, points done, ranks)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_db_argument(parser)
    parser.add_argument("--json", action="store_true", help="print JSON (null where a run has no value)")


def _cell(value: object, spec: str = "") -> str:
    """A table cell: "-" for a missing value (None or NaN), else the value formatted."""
    if value is None or value != value:  # noqa: PLR0124 (NaN)
        return "-"
    return format(value, spec) if spec else str(value)


def run(args: argparse.Namespace) -> int:
    from smoothviz.store import Store

    with Store(args.db, create=False) as store:
        df = store.runs()
        where = store.path
    if args.json:
        print(json.dumps(json.loads(df.to_json(orient="records")), indent=2))
        return 0
    if not len(df):
        print(f"no runs in {where}")
        return 0
    table = df.assign(points=[f"{d}/{t}" for d, t in zip(df["done"], df["total"])])
    for col in ("n0", "n"):
        table[col] = [_cell(v) for v in table[col]]
    table["alpha"] = [_cell(v, "g") for v in table["alpha"]]
    table["ranks"] = [_cell(v) for v in table["world_size"]]  # processes of the last execution
    cols = ["id", "name", "kind", "dataset", "sigma_spec", "n0", "n", "alpha", "status", "points", "ranks", "created"]
    print(table[cols].fillna("-").to_string(index=False))
    return 0
