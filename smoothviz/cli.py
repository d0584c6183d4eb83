"""``python -m smoothviz <verb>``: one argparse front end over the library.

Verbs live in ``smoothviz.commands`` (one module each, the module named after the verb, except
``import`` in ``import_log``). Only the chosen verb's module is imported, so light verbs such as
``bound`` start without loading torch. User errors (``SmoothvizError``) and argument errors exit
with code 2 and a single line, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
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


_MAX_MESSAGE = 400


def one_line(text: object) -> str:
    """A message as one line of at most a few hundred characters (a 50 MB field is not echoed)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= _MAX_MESSAGE else flat[: _MAX_MESSAGE - 1] + "…"


def _silence_stdout() -> None:
    """After a closed pipe (``smoothviz runs | head``): send further output nowhere, quietly."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the verb, and turn user errors into exit code 2 with one line.

    A reader that closes the pipe early ends the verb quietly (exit 141, as a shell reports
    SIGPIPE); anything unexpected is still one line, with the traceback behind SMOOTHVIZ_DEBUG=1.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, verbs = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        code = int(verbs[args.verb].run(args) or 0)
        sys.stdout.flush()
        return code
    except SmoothvizError as exc:
        print(f"smoothviz {args.verb}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"smoothviz {args.verb}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _silence_stdout()
        return 141
    except MemoryError:
        print(f"smoothviz {args.verb}: error: out of memory; use fewer points or a smaller batch size",
              file=sys.stderr)
        return 2
    except Exception as exc:  # the last net: a bug still reaches the user as one line
        if os.environ.get("SMOOTHVIZ_DEBUG"):
            raise
        print(f"smoothviz {args.verb}: internal error: {type(exc).__name__}: {one_line(exc)} "
              "(please report it; SMOOTHVIZ_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1
