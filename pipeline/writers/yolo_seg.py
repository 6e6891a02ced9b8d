"""YOLO-seg label lines: ``class x1 y1 x2 y2 ...`` with coordinates normalised to [0, 1]."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from pipeline import fsio


def to_yolo_line(class_id: int, polygon: np.ndarray, hw: tuple[int, int]) -> str:
    """One YOLO-seg line for one instance.

    Args:
        class_id: index into data.yaml's names.
        polygon: float (K, 2) of (x, y) pixel coordinates, K >= 3; several parts must already be
            merged into one polygon (``pipeline.masks.merge_polygons``).
        hw: (H, W) of the image.

    Returns:
        ``"<class> <x1> <y1> ..."`` with 6 decimals (1e-6 of the image: sub-pixel up to 100k pixels).
    """
    if len(polygon) < 3:
        raise ValueError(f"a YOLO-seg polygon needs at least 3 points, got {len(polygon)}")
    xy = np.clip(np.asarray(polygon, dtype=np.float64) / [hw[1], hw[0]], 0.0, 1.0)
    return " ".join([str(int(class_id)), *(f"{v:.6f}" for v in xy.reshape(-1))])


def write_label_file(path: Path, lines: Iterable[str]) -> None:
    """Write a label file atomically; no lines gives an empty file (image checked, no objects)."""
    text = "".join(f"{line}\n" for line in lines)
    fsio.write_text(path, text)


def read_label_file(path: Path) -> list[tuple[int, np.ndarray]]:
    """Parse a YOLO-seg label file into ``(class_id, polygon)`` pairs, polygon float (K, 2) normalised."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        values = line.split()
        if values:
            out.append((int(values[0]), np.array(values[1:], dtype=np.float64).reshape(-1, 2)))
    return out
