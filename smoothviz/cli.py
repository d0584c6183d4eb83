"""``python -m smoothviz <verb>``: one argparse front end over the library.

Verbs live in ``smoothviz.commands`` (one module each, the module named after the verb, except
``import`` in ``import_log``). Only the chosen verb's module is imported, so light verbs such as
``bound`` start without loading torch. User errors (``SmoothvizError``) and argument errors exit
with code 2 and a single line, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import NoReturn

from smoothviz import __version__, commands
from smoothviz.errors import SmoothvizError

# Verbs whose name is a Python keyword live in a module with another name.
_MODULE_OF_VERB = {"import": "import_log"}


class _OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (exit 2), without the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _module_names() -> list[str]:
    """Names of the verb modules in ``smoothviz.commands``, without importing them."""
    return sorted(i.name for i in pkgutil.iter_modules(commands.__path__) if not i.name.startswith("_"))


def _load(module_name: str) -> ModuleType:
    return importlib.import_module(f"{commands.__name__}.{module_name}")


def _wanted_modules(argv: Sequence[str]) -> list[ModuleType]:
    """The chosen verb's module alone when the first word names one, else every verb module."""
    names = _module_names()
    first = next((a for a in argv if not a.startswith("-")), None)
    module = _MODULE_OF_VERB.get(first, first) if first else None
    if module in names:
        return [_load(module)]
    return [_load(n) for n in names]


def build_parser(argv: Sequence[str] = ()) -> tuple[argparse.ArgumentParser, dict[str, ModuleType]]:
    """The top-level parser with a sub-parser per verb (only the one ``argv`` names, if any)."""
    parser = _OneLineParser(
        prog="smoothviz",
        description="Certified robustness by randomized smoothing (constant and input-dependent sigma).",
    )
    parser.add_argument("--version", action="version", version=f"smoothviz {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_OneLineParser)
    sub.required = True
    verbs: dict[str, ModuleType] = {}
    for mod in sorted(_wanted_modules(argv), key=lambda m: m.NAME):
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        verbs[mod.NAME] = mod
    return parser, verbs


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the verb, and turn user errors into exit code 2 with one line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, verbs = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        return int(verbs[args.verb].run(args) or 0)
    except SmoothvizError as exc:
        print(f"smoothviz {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"smoothviz {args.verb}: interrupted", file=sys.stderr)
        return 130
