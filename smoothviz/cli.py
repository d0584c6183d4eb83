"""``python -m smoothviz <verb>``: one argparse front end over the library.

Verbs live in ``smoothviz.commands`` (one module each, the module named after the verb, except
``import`` in ``import_log``). Only the chosen verb's module is imported; the list of verbs that
``--help`` prints is read from each module's ``NAME`` and ``HELP`` constants without importing it,
so neither starts torch. User errors (``SmoothvizError``) and argument errors exit with code 2 and
a single line, never a traceback.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import os
import pkgutil
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import NoReturn

from smoothviz import __version__, commands
from smoothviz.errors import SmoothvizError


class _OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (exit 2), without the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _module_names() -> list[str]:
    """Names of the verb modules in ``smoothviz.commands``, without importing them."""
    return sorted(i.name for i in pkgutil.iter_modules(commands.__path__) if not i.name.startswith("_"))


def _load(module_name: str) -> ModuleType:
    return importlib.import_module(f"{commands.__name__}.{module_name}")


def _summary(module_name: str) -> ModuleType | SimpleNamespace:
    """The verb's NAME and HELP read from its source as literals; the imported module when they
    are not plain literals (or the source cannot be read)."""
    try:
        source = Path(commands.__path__[0], f"{module_name}.py").read_text(encoding="utf-8")
        found = {}
        for node in ast.parse(source).body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) \
                    and node.targets[0].id in ("NAME", "HELP"):
                found[node.targets[0].id] = ast.literal_eval(node.value)
        if isinstance(found.get("NAME"), str) and isinstance(found.get("HELP"), str):
            return SimpleNamespace(NAME=found["NAME"], HELP=found["HELP"], add_arguments=lambda parser: None)
    except (OSError, SyntaxError, ValueError):
        pass
    return _load(module_name)


def _wanted_modules(argv: Sequence[str]) -> list[ModuleType | SimpleNamespace]:
    """The chosen verb's module alone when the first word names one (by module name, or by the
    NAME a module declares, e.g. ``import`` in import_log), else a summary of every verb (enough
    for the verb list of ``--help`` and for argparse to refuse an unknown verb)."""
    names = _module_names()
    first = next((a for a in argv if not a.startswith("-")), None)
    if first in names:
        return [_load(first)]
    summaries = {name: _summary(name) for name in names}
    for name, summary in summaries.items():
        if first is not None and summary.NAME == first:
            return [summary if isinstance(summary, ModuleType) else _load(name)]
    return list(summaries.values())


def build_parser(argv: Sequence[str] = ()) -> tuple[argparse.ArgumentParser, dict[str, ModuleType]]:
    """The top-level parser with a sub-parser per verb; only the verb ``argv`` names is imported
    and given its arguments (without one, parsing can only print help or refuse)."""
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
        verbs[mod.NAME] = mod  # type: ignore[assignment]
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
