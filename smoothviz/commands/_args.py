"""Argument types shared by the verbs: they reject bad values with a message naming the value.

This module imports nothing heavy, so every verb can use it at module level.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

from smoothviz import cost
from smoothviz.errors import InvalidArgument


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{_short(text)} is not a number") from None
    if math.isnan(value):
        raise argparse.ArgumentTypeError("NaN is not allowed")
    return value


def probability(text: str) -> float:
    """A probability in (0, 1]."""
    value = _number(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is outside (0, 1]")
    return value


def open_probability(text: str) -> float:
    """A probability in (0, 1), e.g. a significance level alpha."""
    value = _number(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{value} is outside (0, 1)")
    return value


def positive(text: str) -> float:
    """A finite number > 0."""
    value = _number(text)
    if not (value > 0.0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{value} must be a finite number > 0")
    return value


def non_negative(text: str) -> float:
    """A finite number >= 0."""
    value = _number(text)
    if not (value >= 0.0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{value} must be a finite number >= 0")
    return value


_INT_DIGITS_MAX = 30  # longer integers are refused before int() (which stops at 4300 digits)

# The input dimensions smoothviz.bounds accepts (its DIM_MAX; a test keeps the two equal): a 4K RGB
# image has 2.5e7. Kept here as a number so that argument parsing loads no numpy or scipy.
DIM_MAX = 10**8


def _short(text: str, limit: int = 40) -> str:
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}… ({len(text):,} characters)"


def _integer(text: str) -> int:
    stripped = text.strip()
    if len(stripped) > _INT_DIGITS_MAX:
        raise argparse.ArgumentTypeError(f"{_short(text)} is not an integer of a usable size")
    try:
        return int(stripped)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{_short(text)} is not an integer") from None


INT_MAX = 2**63 - 1  # the largest integer the results store (SQLite) holds


def positive_int(text: str) -> int:
    """An integer from 1 to INT_MAX."""
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    if value > INT_MAX:
        raise argparse.ArgumentTypeError(f"{value} is larger than {INT_MAX} (2^63 - 1)")
    return value


def bounded_int(low: int, high: int, bounds: str | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high], refused naming ``bounds`` (default ``low to high``)."""
    span = bounds if bounds is not None else f"{low:,} to {high:,}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is outside {span}")
        return value

    return parse


seed_arg = bounded_int(0, cost.SEED_MAX, f"0 to {cost.SEED_MAX}")
"""A seed: an integer from 0 to cost.SEED_MAX (what every generator and the store take)."""


def sample_count(text: str) -> int:
    """A number of noisy samples per point: an integer from 1 to cost.N_MAX."""
    value = positive_int(text)
    if value > cost.N_MAX:
        raise argparse.ArgumentTypeError(f"{value} exceeds {cost.N_MAX:,} samples per point")
    return value


def batch_size_arg(text: str) -> int | str:
    """An integer >= 1 or 'auto'."""
    return "auto" if text.strip().lower() == "auto" else positive_int(text)


def dimension(text: str) -> int:
    """An input dimension: an integer from 1 to DIM_MAX."""
    value = _integer(text)
    if not 1 <= value <= DIM_MAX:
        raise argparse.ArgumentTypeError(f"{value} is outside 1 to {DIM_MAX:.0e} (the input dimension)")
    return value


def parse_radii(text: str) -> list[float]:
    """Radii from ``0,0.25,0.5`` (finite, >= 0); InvalidArgument names the bad entry."""
    radii = []
    for part in (t for t in text.split(",") if t.strip()):
        try:
            value = float(part)
        except ValueError:
            raise InvalidArgument(f"--radii: {_short(part.strip())} is not a number") from None
        if not math.isfinite(value) or value < 0:
            raise InvalidArgument(f"--radii: {_short(part.strip())} is not a finite radius >= 0")
        radii.append(value)
    if not radii:
        raise InvalidArgument(f"--radii {_short(text)}: expected comma-separated radii such as 0,0.25,0.5")
    return radii


def add_db_argument(parser: argparse.ArgumentParser) -> None:
    """``--db``: the results database; absent means ``$SMOOTHVIZ_DB``, else the default file.

    Open it with ``Store(args.db, create=...)``: ``None`` resolves to ``store.default_db()``.
    """
    parser.add_argument("--db", type=Path, default=None,
                        help="results database (default: $SMOOTHVIZ_DB, else runs/smoothviz.db)")
