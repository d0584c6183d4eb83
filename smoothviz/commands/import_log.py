"""``smoothviz import``: load a certification log of the reference smoothing code as a run.

The file and the options are checked completely before the store is opened, so a refused
import writes nothing (not even an empty store); the run and its rows go in as one transaction.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from smoothviz.commands._args import add_db_argument, open_probability, positive_int
from smoothviz.errors import DuplicateImport, InvalidArgument, RunNameTaken
from smoothviz.text import plural

NAME = "import"
HELP = "Import a tab-separated certification log (idx label predict radius correct time) as a run."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="log file of the reference code's certify.py")
    parser.add_argument("--name", required=True, help="run name (unique in the store)")
    parser.add_argument("--dataset", required=True, help="dataset the log certified (bounds its class labels)")
    parser.add_argument("--sigma", default=None, help="sigma used (a number or a spec such as constant:0.25)")
    parser.add_argument("--n", type=positive_int, default=None, help="estimation samples (for the ceiling)")
    parser.add_argument("--alpha", type=open_probability, default=None, help="alpha (for the ceiling)")
    add_db_argument(parser)


def run(args: argparse.Namespace) -> int:
    from smoothviz.data import DATASET_INFO, canonical_name
    from smoothviz.store import (
        Store,
        check_run_name,
        import_cohen_log,
        import_sigma,
        parse_cohen_log,
    )

    try:
        name = check_run_name(args.name)
    except InvalidArgument as exc:
        raise InvalidArgument(f"--name: {exc}") from None
    dataset = canonical_name(args.dataset)
    try:
        import_sigma(args.sigma)
    except InvalidArgument as exc:
        raise InvalidArgument(f"--sigma: {exc}") from None
    log = parse_cohen_log(args.file, num_classes=DATASET_INFO[dataset].num_classes)
    with Store(args.db) as store:
        try:
            run_id = import_cohen_log(store, log, name, dataset, args.sigma, n=args.n, alpha=args.alpha)
        except RunNameTaken as exc:
            raise InvalidArgument(f"--name {exc.name!r}: run #{exc.run_id} already has this name; "
                                  "choose another --name") from None
        except DuplicateImport as exc:
            raise DuplicateImport(f"{args.file}: already imported as run #{exc.run_id} "
                                  "(the same file content)", exc.run_id) from None
    print(f"run {run_id}: imported {plural(len(log.rows), 'point')} from {args.file}")
    return 0
