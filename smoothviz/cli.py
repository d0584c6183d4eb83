"""``python -m smoothviz <verb>``: one argparse front end over the library.

Verbs live in ``smoothviz.commands`` (one module each). User errors (``SmoothvizError``) and
argparse errors exit with code 2 and a one-line message, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence
from types import ModuleType

from smoothviz import __version__, commands
from smoothviz.errors import SmoothvizError


def _command_modules() -> list[ModuleType]:
    """Import every verb module in ``smoothviz.commands``, sorted by verb name."""
    mods = [
        importlib.import_module(f"{commands.__name__}.{info.name}")
        for info in pkgutil.iter_modules(commands.__path__)
        if not info.name.startswith("_")
    ]
    return sorted(mods, key=lambda m: m.NAME)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, ModuleType]]:
    """The top-level parser with one sub-parser per discovered verb."""
    parser = argparse.ArgumentParser(
        prog="smoothviz",
        description="Certified robustness by randomized smoothing (constant and input-dependent sigma).",
    )
    parser.add_argument("--version", action="version", version=f"smoothviz {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    verbs: dict[str, ModuleType] = {}
    for mod in _command_modules():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        verbs[mod.NAME] = mod
    return parser, verbs


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the verb, and turn user errors into exit code 2 with one line."""
    parser, verbs = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(verbs[args.verb].run(args) or 0)
    except SmoothvizError as exc:
        print(f"smoothviz {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"smoothviz {args.verb}: interrupted", file=sys.stderr)
        return 130
