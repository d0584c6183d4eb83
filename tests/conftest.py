"""Shared pytest configuration."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from hypothesis import settings

os.environ.setdefault("PYTHONHASHSEED", "0")

# The gate (make test) draws the same hypothesis examples on every run, so a submission passes or
# fails reproducibly; SMOOTHVIZ_HYPOTHESIS=explore draws fresh ones (a search for new edge cases).
settings.register_profile("gate", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("SMOOTHVIZ_HYPOTHESIS", "gate"))


def _processes_mentioning(text: str) -> list[int]:
    """Pids (other than ours) whose command line contains ``text``; empty where /proc is absent."""
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and int(entry.name) != os.getpid():
            pids.append(int(entry.name))
    return pids


def pytest_sessionfinish(session, exitstatus):
    """Stop background jobs that a failed test left running (they all work under pytest's tmp dir)."""
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None:
        return
    base = str(factory.getbasetemp())
    for pid in _processes_mentioning(base):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


@pytest.fixture
def one_thread():
    """Small tensors: one torch thread is fastest on a shared 2-core machine; restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
