"""``smoothviz delete``: remove runs and their results from the store.

Every run is resolved and checked before anything is deleted: a missing run, or one that a live
process is still certifying, refuses the whole command. Without ``--yes`` it asks on a terminal
and refuses elsewhere (a script must say ``--yes``).
"""

from __future__ import annotations

import argparse
import sys

from smoothviz.commands._args import add_db_argument
from smoothviz.errors import InvalidArgument, RunBusy

NAME = "delete"
HELP = "Delete runs and their results from the store (asks first; --yes for scripts)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run id or unique run name (several allowed)")
    parser.add_argument("--yes", action="store_true", help="delete without asking")
    add_db_argument(parser)


def _confirmed(summary: str) -> bool:
    """Ask on the terminal; refuse in one line when there is none to ask on."""
    if not sys.stdin.isatty():
        raise InvalidArgument("refusing to delete without --yes: standard input is not a terminal")
    print(f"delete {summary}? [y/N] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline().strip().lower()
    return answer in ("y", "yes")


def run(args: argparse.Namespace) -> int:
    from smoothviz.store import Store, quote

    with Store(args.db, create=False) as store:
        ids = list(dict.fromkeys(store.resolve_run(ref) for ref in args.runs))
        infos = [store.run(run_id) for run_id in ids]
        for info in infos:
            if store.executing(info["id"]):
                raise RunBusy(f"run {info['id']} ({quote(info['name'])}) is being certified by process "
                              f"{info['pid']}; cancel it (or stop that process) first", info["id"])
        summary = ", ".join(f"run {i['id']} ({quote(i['name'])}, {i['done']} results)" for i in infos)
        if not args.yes and not _confirmed(summary):
            print("nothing deleted", file=sys.stderr)
            return 1
        for info in infos:
            store.delete_run(info["id"])
    print(f"deleted {summary}")
    return 0
