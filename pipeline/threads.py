"""Keep PyTorch's CPU thread count while our stages run.

Ultralytics' ``select_device`` calls ``torch.set_num_threads(os.cpu_count() - 1)`` whenever a model
is set up on the CPU: one thread on a 2-core machine, which makes every PyTorch op up to 2x slower.
Stages run their model calls inside ``torch_threads()``, which uses ``OMP_NUM_THREADS`` when set and
otherwise every CPU this process may run on, for the duration of the call.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def default_threads() -> int:
    """``OMP_NUM_THREADS`` if set, else the number of CPUs this process may use."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@contextmanager
def torch_threads(n: int | None = None) -> Iterator[None]:
    """Run the block with ``n`` PyTorch CPU threads (default: ``default_threads()``)."""
    wanted = n or default_threads()
    before = torch.get_num_threads()
    if before != wanted:
        torch.set_num_threads(wanted)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
