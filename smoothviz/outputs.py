"""Files the verbs write (exports, checkpoints, predictions, benchmark JSON): checked before any
work starts, written atomically, and every failure reported in one line.

A target is refused when it is a directory, a device or other special file (``/dev/full``), or
lies in a folder that does not exist; the bytes go to a temporary file beside the target that
replaces it only once complete, so an interrupted or failed write (disk full, ``/proc``) leaves
the previous file, or none, never half of one.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from smoothviz.errors import InvalidArgument

STDOUT = "-"


def check_output_path(path: str | Path, what: str = "--out") -> Path:
    """``path`` as a writable target, else InvalidArgument naming ``what`` and the reason."""
    p = Path(path)
    if str(p) == "" or str(p).endswith(os.sep):
        raise InvalidArgument(f"{what} {str(path)!r}: a file name is needed, not a folder")
    try:
        st = p.stat()
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise InvalidArgument(f"{what} {p}: cannot be used ({exc.strerror})") from None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise InvalidArgument(f"{what} {p}: is a directory; give a file name")
        if not stat.S_ISREG(st.st_mode):
            raise InvalidArgument(f"{what} {p}: is a device or special file, not a regular file")
    parent = p.parent
    if not parent.is_dir():
        raise InvalidArgument(f"{what} {p}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InvalidArgument(f"{what} {p}: folder {parent} is not writable")
    # access() says yes to root in folders where nothing can be created (/proc): a probe file,
    # removed at once, asks the filesystem itself.
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".probe", dir=parent)
    except OSError as exc:
        raise InvalidArgument(f"{what} {p}: cannot write there ({exc.strerror})") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return p


def output_path_arg(text: str) -> Path:
    """argparse type for an output file (``check_output_path`` as an argument error)."""
    try:
        return check_output_path(text, "file")
    except InvalidArgument as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("file ")) from None


@contextlib.contextmanager
def atomic_output(path: str | Path, mode: str = "w", what: str = "--out") -> Iterator[IO]:
    """A file object whose contents replace ``path`` only when the block completes.

    ``mode`` is ``"w"`` (text, UTF-8, ``\\n`` line ends) or ``"wb"``. Any OSError while writing
    (disk full, a read-only folder) becomes one InvalidArgument line and the target is untouched.
    """
    target = check_output_path(path, what)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise InvalidArgument(f"{what} {target}: cannot write there ({exc.strerror})") from None
    try:
        if "b" in mode:
            fh = os.fdopen(fd, mode)
        else:
            fh = os.fdopen(fd, mode, encoding="utf-8", newline="")
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise InvalidArgument(f"{what} {target}: writing failed ({exc.strerror or exc})") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_output(path: str | Path, write: Callable[[IO], None], mode: str = "w", what: str = "--out") -> None:
    """Call ``write(file)`` on an atomic output for ``path`` (see ``atomic_output``)."""
    with atomic_output(path, mode, what) as fh:
        write(fh)
