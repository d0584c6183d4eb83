"""A small progress bar on stderr with rate and ETA (no dependency).

On a terminal it redraws one line in place; otherwise (logs, pipes, the dashboard's job runner)
it prints a plain line every few seconds so a log stays short.
"""

from __future__ import annotations

import math
import sys
import time
from typing import TextIO


def format_seconds(seconds: float | None) -> str:
    """``h:mm:ss`` for a duration; ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class ProgressBar:
    """Callable progress reporter taking the engine's dict ``{done, total, rate, eta}``.

    An optional ``fraction`` (work done, e.g. samples of a chunk not yet finished) moves the bar
    between completed items.
    """

    def __init__(
        self,
        unit: str = "points",
        stream: TextIO | None = None,
        width: int = 30,
        min_interval: float | None = None,
    ) -> None:
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.min_interval = min_interval if min_interval is not None else (0.1 if self.tty else 5.0)
        self._last = -math.inf
        self._open_line = False

    def line(self, info: dict) -> str:
        """The text of one progress line for ``info``."""
        done, total = int(info.get("done", 0)), int(info.get("total", 0))
        frac = info.get("fraction", done / total if total else 1.0)
        filled = int(round(self.width * frac))
        bar = "#" * filled + "-" * (self.width - filled)
        rate = info.get("rate")
        rate_text = f"{rate:.3g} {self.unit}/s" if rate else f"- {self.unit}/s"
        return (
            f"[{bar}] {done}/{total} {self.unit} ({100 * frac:.0f}%)  {rate_text}  "
            f"ETA {format_seconds(info.get('eta'))}"
        )

    def __call__(self, info: dict) -> None:
        now = time.monotonic()
        final = int(info.get("done", 0)) >= int(info.get("total", 0))
        if not final and now - self._last < self.min_interval:
            return
        self._last = now
        if self.tty:
            self.stream.write("\r" + self.line(info))
            self._open_line = True
            if final:
                self.close()
        else:
            self.stream.write(self.line(info) + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End an in-place line so later output starts on a fresh line."""
        if self._open_line:
            self.stream.write("\n")
            self.stream.flush()
            self._open_line = False
