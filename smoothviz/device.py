"""Turn a device specification ("auto", "cpu", "cuda", "cuda:N") into a ``torch.device``.

torch is imported only when a device is resolved, so argument definitions can use the help text.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re
from typing import TYPE_CHECKING

from smoothviz.errors import InvalidArgument

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES_HELP = "auto (cuda if available, else cpu), cpu, cuda or cuda:N"


def resolve_device(spec: str = "auto") -> torch.device:
    """The device named by ``spec``; ``auto`` picks the first CUDA device when there is one.

    Raises InvalidArgument for an unknown spec or a CUDA device that this machine does not have.
    """
    import torch

    text = (spec or "auto").strip().lower()
    if text == "auto":
        return torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if match is None:
        raise InvalidArgument(f"--device {spec!r}: expected {DEVICE_CHOICES_HELP}")
    index = int(match.group(1) or 0)
    if not torch.cuda.is_available():
        raise InvalidArgument(f"--device {spec!r}: CUDA is not available on this machine")
    count = torch.cuda.device_count()
    if index >= count:
        raise InvalidArgument(f"--device {spec!r}: this machine has {count} CUDA device(s)")
    return torch.device("cuda", index)


# glibc mallopt parameters (malloc.h): M_TRIM_THRESHOLD = -1, M_MMAP_THRESHOLD = -3.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_cpu_buffers(limit_bytes: int = 1 << 28) -> bool:
    """Let glibc reuse freed batch-sized buffers instead of returning them to the OS each time.

    PyTorch's CPU allocator frees every activation back to malloc; buffers above glibc's mmap
    threshold are mapped and unmapped per forward pass, so each batch pays fresh page faults
    (about a quarter of the CPU time of a digits certification went to the kernel). Raising
    the mmap and trim thresholds keeps them in the heap. Returns False where this is not glibc.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok_mmap = mallopt(_M_MMAP_THRESHOLD, int(limit_bytes))
    ok_trim = mallopt(_M_TRIM_THRESHOLD, int(2 * limit_bytes))
    return bool(ok_mmap and ok_trim)
