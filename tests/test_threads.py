"""Model stages keep every CPU even though importing Ultralytics sets OMP_NUM_THREADS=1."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
import os, sys
if "--ultralytics-first" in sys.argv:
    import ultralytics
import pipeline, ultralytics, torch
from pipeline.threads import default_threads, torch_threads
from ultralytics.utils.torch_utils import select_device
select_device("cpu")  # sets torch to cpu_count - 1 threads
with torch_threads():
    inside = torch.get_num_threads()
print(default_threads(), inside, os.environ.get("OMP_NUM_THREADS"))
"""


def _probe(*args: str, **env: str) -> list[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "SAMLABEL_THREADS")}
    cmd = [sys.executable, "-c", PROBE, *args]
    out = subprocess.run(cmd, env={**base, **env}, capture_output=True, text=True, check=True)
    return out.stdout.split()[-3:]


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="needs sched_getaffinity")
def test_threads_survive_the_ultralytics_import():
    cpus = str(len(os.sched_getaffinity(0)))
    assert _probe() == [cpus, cpus, "1"]  # Ultralytics wrote OMP_NUM_THREADS=1; we keep every CPU
    assert _probe(OMP_NUM_THREADS="1")[:2] == ["1", "1"]  # the user's own setting is honoured
    assert _probe(OMP_NUM_THREADS="1", SAMLABEL_THREADS="3")[:2] == ["3", "3"]
    # Ultralytics imported before pipeline (a notebook): its "1" is not the user's, any other value is
    assert _probe("--ultralytics-first")[:2] == [cpus, cpus]
    assert _probe("--ultralytics-first", OMP_NUM_THREADS="3")[:2] == ["3", "3"]
