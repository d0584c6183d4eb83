"""Argument types shared by the verbs: they reject bad values with a message naming the value."""

from __future__ import annotations

import argparse
import math
from pathlib import Path


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
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


def positive_int(text: str) -> int:
    """An integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def add_db_argument(parser: argparse.ArgumentParser) -> None:
    """``--db``: the results database; absent means ``$SMOOTHVIZ_DB``, else the default file.

    Open it with ``Store(args.db, create=...)``: ``None`` resolves to ``store.default_db()``.
    """
    parser.add_argument("--db", type=Path, default=None,
                        help="results database (default: $SMOOTHVIZ_DB, else runs/smoothviz.db)")
