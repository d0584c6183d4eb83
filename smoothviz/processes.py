"""Process liveness, shared by the job runner and the results store."""

from __future__ import annotations

import operator
import os
from pathlib import Path


def _as_pid(value: object) -> int | None:
    """``value`` as a process id (an int > 0, or a float holding one), else None."""
    if isinstance(value, bool):
        return None
    try:
        pid = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        if isinstance(value, float) and value.is_integer():
            pid = int(value)
        else:
            return None
    return pid if pid > 0 else None


def pid_alive(pid: object) -> bool:
    """True while ``pid`` is a live process; a zombie (exited, not yet reaped) counts as dead.

    Any value that is not a positive process id (None, NaN, a fraction, text, 0 or negative ids,
    which ``os.kill`` would read as process groups) is no live process.
    """
    number = _as_pid(pid)
    if number is None:
        return False
    try:
        os.kill(number, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    stat = Path(f"/proc/{number}/stat")
    try:
        state = stat.read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")
