"""Keep PyTorch's CPU thread count while our stages run.

Ultralytics' ``select_device`` calls ``torch.set_num_threads(os.cpu_count() - 1)`` whenever a model
is set up on the CPU: one thread on a 2-core machine, which makes every PyTorch op up to 2x slower.
Stages run their model calls inside ``torch_threads()``, which restores the count PyTorch chose at
start-up (its default, one per physical core) for the duration of the call.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

_DEFAULT_THREADS = torch.get_num_threads()


@contextmanager
def torch_threads(n: int | None = None) -> Iterator[None]:
    """Run the block with ``n`` PyTorch CPU threads (default: PyTorch's own start-up choice)."""
    wanted = n or _DEFAULT_THREADS
    before = torch.get_num_threads()
    if before != wanted:
        torch.set_num_threads(wanted)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
