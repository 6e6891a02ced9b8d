"""Random-weight checkpoints of the real architectures for benchmarks (no downloads, see tests/checkpoints.py)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.checkpoints import make_sam_checkpoint, make_yolo_checkpoint  # noqa: E402

__all__ = ["make_sam_checkpoint", "make_yolo_checkpoint", "ROOT"]
