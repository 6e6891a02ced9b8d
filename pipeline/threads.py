"""How many CPU threads the model stages use, despite what importing Ultralytics changes.

Importing Ultralytics sets ``OMP_NUM_THREADS=1`` when it is unset, and its ``select_device`` calls
``torch.set_num_threads(os.cpu_count() - 1)`` whenever a model is set up on the CPU: one thread on a
2-core machine, which makes every model call up to 2x slower. So ``OMP_NUM_THREADS`` is read when
this module is imported (``pipeline`` imports it first), and stages run their PyTorch calls inside
``torch_threads()``. ``SAMLABEL_THREADS`` overrides both.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

# The user's value, not the one Ultralytics writes on import. Ultralytics writes "1" only when the variable is
# unset, so once it is imported any other value is still the user's, and "1" is taken as Ultralytics'.
_OMP_BEFORE_ULTRALYTICS = os.environ.get("OMP_NUM_THREADS")
if "ultralytics" in sys.modules and _OMP_BEFORE_ULTRALYTICS == "1":
    _OMP_BEFORE_ULTRALYTICS = None


def default_threads() -> int:
    """``SAMLABEL_THREADS``, else the user's ``OMP_NUM_THREADS``, else the number of CPUs this process may use."""
    for value in (os.environ.get("SAMLABEL_THREADS", ""), _OMP_BEFORE_ULTRALYTICS or ""):
        if value.strip().isdigit() and int(value) > 0:
            return int(value)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@contextmanager
def torch_threads(n: int | None = None) -> Iterator[None]:
    """Run the block with ``n`` PyTorch CPU threads (default: ``default_threads()``)."""
    import torch

    wanted = n or default_threads()
    before = torch.get_num_threads()
    if before != wanted:
        torch.set_num_threads(wanted)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
