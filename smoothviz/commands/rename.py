"""``smoothviz rename``: give a run a new, unique name."""

from __future__ import annotations

import argparse

from smoothviz.commands._args import add_db_argument
from smoothviz.errors import InvalidArgument, RunNameTaken

NAME = "rename"
HELP = "Rename a run (names stay unique; at most 120 characters, no control characters)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="run id or unique run name")
    parser.add_argument("new_name", metavar="NEW_NAME", help="the new name")
    add_db_argument(parser)


def run(args: argparse.Namespace) -> int:
    from smoothviz.store import Store, check_run_name, quote

    try:
        check_run_name(args.new_name)  # before the store is opened
    except InvalidArgument as exc:
        raise InvalidArgument(f"NEW_NAME: {exc}") from None
    with Store(args.db, create=False) as store:
        run_id = store.resolve_run(args.run)
        old = store.run(run_id)["name"]
        try:
            new = store.rename_run(run_id, args.new_name)
        except RunNameTaken as exc:
            raise InvalidArgument(f"NEW_NAME {quote(exc.name)}: run #{exc.run_id} already has this name") from None
    print(f"run {run_id}: renamed {quote(old)} to {quote(new)}")
    return 0
