"""Words for people: counts with their noun in agreement (shared by the CLI, the library and the pages)."""

from __future__ import annotations


def plural(count: int, noun: str, plural_noun: str | None = None) -> str:
    """``count`` and ``noun`` in agreement, with thousands separators: ``1 point``, ``1,437 points``."""
    word = noun if count == 1 else (plural_noun or f"{noun}s")
    return f"{count:,} {word}"
