"""Turn a device specification ("auto", "cpu", "cuda", "cuda:N") into a ``torch.device``."""

from __future__ import annotations

import re

import torch

from smoothviz.errors import InvalidArgument

DEVICE_CHOICES_HELP = "auto (cuda if available, else cpu), cpu, cuda or cuda:N"


def resolve_device(spec: str = "auto") -> torch.device:
    """The device named by ``spec``; ``auto`` picks the first CUDA device when there is one.

    Raises InvalidArgument for an unknown spec or a CUDA device that this machine does not have.
    """
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
