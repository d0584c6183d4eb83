"""``smoothviz runs``: list the runs in the store with their status and progress."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from smoothviz.store import DEFAULT_DB, Store

NAME = "runs"
HELP = "List the runs in the results store (id, name, dataset, sigma, n, status, points done)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", type=Path, default=DEFAULT_DB, help=f"results database (default {DEFAULT_DB})")
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    df = Store(args.db).runs()
    if args.json:
        print(json.dumps(json.loads(df.to_json(orient="records")), indent=2))
        return 0
    if not len(df):
        print(f"no runs in {args.db}")
        return 0
    cols = ["id", "name", "kind", "dataset", "sigma_spec", "n", "alpha", "status", "points", "created"]
    df = df.assign(points=[f"{d}/{t}" for d, t in zip(df["done"], df["total"])])
    df["n"] = [("-" if v != v or v is None else str(int(v))) for v in df["n"]]
    df["alpha"] = [("-" if v != v or v is None else f"{v:g}") for v in df["alpha"]]
    print(df[cols].fillna("-").to_string(index=False))
    return 0
