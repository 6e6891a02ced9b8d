"""YOLO label lines: ``class xc yc w h`` (boxes) or ``class x1 y1 x2 y2 ...`` (segments), normalised to [0, 1]."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from pipeline import fsio


def parse_line(line: str) -> tuple[int, np.ndarray] | None:
    """One label line as ``(class_id, coords)``, coords float64 (K,); ``None`` for a blank line.

    Class ids are read the way Ultralytics reads them, as numbers (``"1"`` or ``"1.0"``).

    Raises:
        ValueError: not numbers, a class id that is not a whole number, or non-finite coordinates;
            the message says which.
    """
    values = line.split()
    if not values:
        return None
    try:
        number = float(values[0])
        coords = np.array([float(v) for v in values[1:]], dtype=np.float64)
    except (ValueError, OverflowError):
        raise ValueError(f"malformed line {line.strip()[:60]!r}") from None
    if not np.isfinite(number) or number != int(number):
        raise ValueError(f"malformed line {line.strip()[:60]!r}")
    if not np.isfinite(coords).all():
        raise ValueError("non-finite coordinates")
    return int(number), coords


def to_line(class_id: int, polygon: np.ndarray, hw: tuple[int, int]) -> str:
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


def to_text(lines: Iterable[str]) -> str:
    """A label file's text: one line each; no lines gives an empty file (image checked, no objects)."""
    return "".join(f"{line}\n" for line in lines)


def write_label_file(path: Path, lines: Iterable[str]) -> None:
    """Write a label file atomically."""
    fsio.write_text(path, to_text(lines))


def read_label_file(path: Path) -> list[tuple[int, np.ndarray]]:
    """A YOLO-seg label file as ``(class_id, polygon)`` pairs, polygon float (K, 2) normalised (strict)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8-sig").splitlines():
        parsed = parse_line(line)
        if parsed is not None:
            out.append((parsed[0], parsed[1].reshape(-1, 2)))
    return out


def label_path(labels_dir: Path, image_rel: str) -> Path:
    """The label file of an image at ``image_rel`` below its images folder (same relative path, ``.txt``)."""
    return labels_dir / Path(image_rel).with_suffix(".txt")


def labels_dir_for(images_dir: Path) -> Path:
    """Ultralytics' rule: the label folder is the image folder with its last ``images`` part made ``labels``."""
    parts = list(images_dir.parts)
    if "images" in parts:
        i = len(parts) - 1 - parts[::-1].index("images")
        parts[i] = "labels"
        return Path(*parts)
    return images_dir.parent / "labels"
