"""Which points of a split to certify: index lists such as ``0-9,15`` or an even spread."""

from __future__ import annotations

import numpy as np

from smoothviz.errors import InvalidArgument


def parse_indices(text: str, size: int) -> list[int]:
    """Indices from text like ``0-9,15,20`` (sorted, unique, each in [0, size))."""
    out: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        lo_text, dash, hi_text = part.partition("-")
        try:
            lo = int(lo_text)
            hi = int(hi_text) if dash else lo
        except ValueError:
            raise InvalidArgument(f"--indices: {part!r} is not an index or a range a-b") from None
        if lo > hi:
            raise InvalidArgument(f"--indices: range {part!r} runs backwards")
        if lo < 0 or hi >= size:
            raise InvalidArgument(f"--indices: {part!r} is outside the split (0 to {size - 1})")
        out.update(range(lo, hi + 1))
    if not out:
        raise InvalidArgument("--indices: no index given")
    return sorted(out)


def evenly_spaced(points: int, size: int) -> list[int]:
    """``points`` indices spread evenly over [0, size) (all of them when points >= size)."""
    if points >= size:
        return list(range(size))
    return sorted({int(i) for i in np.linspace(0, size - 1, points).round()})
