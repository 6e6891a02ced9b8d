"""Pure mask geometry: mask <-> polygons, RLE, area and tight boxes.

Coordinates are continuous image coordinates where pixel ``(row r, col c)`` covers the square
``[c, c + 1) x [r, r + 1)``, the COCO convention. Polygons trace the pixel *boundary* (not pixel
centres), so rasterizing them again gives back the mask they came from.
"""

from __future__ import annotations

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from pipeline.types import CropMask

#: Default simplification tolerance in pixels. The outline runs a quarter pixel inside the mask's edge,
#: so every pixel centre lies at least 0.25 px from it: a tolerance below that keeps each centre on its
#: side, and rasterizing the simplified polygon gives back the same pixels (tested). 0.24 px removes
#: the half-pixel staircase steps of diagonal edges, about a third of all vertices of round objects.
SIMPLIFY_TOLERANCE = 0.24


def mask_to_polygons(mask: CropMask, *, tolerance: float = SIMPLIFY_TOLERANCE) -> list[np.ndarray]:
    """Outline a mask as polygons, one per connected part, each hole bridged into its part.

    A hole is joined to its outer outline by a zero-width cut, so each polygon still rasterizes to
    the part *with* its hole (even-odd and non-zero fill rules both leave the hole empty).

    Args:
        mask: the mask.
        tolerance: Douglas-Peucker tolerance in pixels; 0 keeps every boundary corner.

    Returns:
        float64 arrays (K, 2) of (x, y) image coordinates, K >= 3, largest part first.
    """
    if mask.area == 0:
        return []
    bits = mask.bits.view(np.uint8)
    up = np.repeat(np.repeat(bits, 2, axis=0), 2, axis=1)
    up = cv2.copyMakeBorder(up, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    contours, hierarchy = cv2.findContours(up, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    offset = np.array([mask.x0, mask.y0], dtype=np.float64)
    # Contour point c of the padded 2x grid is the centre of 2x-pixel (c - 1): (c - 1 + 0.5) / 2 in image units.
    to_image = [(c.reshape(-1, 2).astype(np.float64) - 0.5) / 2 + offset for c in contours]
    if tolerance > 0:
        to_image = [_simplify(p, tolerance) for p in to_image]
    parts = []
    for i, (_, _, child, parent) in enumerate(hierarchy[0]):
        if parent != -1:
            continue
        poly = to_image[i]
        while child != -1:
            poly = _bridge(poly, to_image[child])
            child = hierarchy[0][child][0]
        if len(poly) >= 3:
            parts.append(poly)
    parts.sort(key=lambda p: -abs(_signed_area(p)))
    return parts


def merge_polygons(parts: list[np.ndarray]) -> np.ndarray:
    """Join several polygons into one by zero-width bridges between nearest vertices.

    This is the form YOLO-seg label lines need (one polygon per instance), following the idea of
    Ultralytics' ``merge_multi_segment``: walk each part fully and return along the same bridge.

    Args:
        parts: float arrays (K_i, 2) of (x, y).

    Returns:
        float64 array (K, 2); empty (0, 2) when ``parts`` is empty.
    """
    if not parts:
        return np.zeros((0, 2))
    merged = parts[0]
    for part in parts[1:]:
        merged = _bridge(merged, part)
    return merged


def polygons_to_mask(polygons: list[np.ndarray], hw: tuple[int, int]) -> np.ndarray:
    """Rasterize polygons the way COCO tools do (pycocotools), union of all parts.

    Args:
        polygons: float arrays (K, 2) of (x, y) image coordinates.
        hw: (H, W) of the image.

    Returns:
        bool array (H, W).
    """
    flat = [p.reshape(-1).astype(np.float64).tolist() for p in polygons if len(p) >= 3]
    if not flat:
        return np.zeros(hw, dtype=bool)
    rles = mask_utils.frPyObjects(flat, hw[0], hw[1])
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def mask_to_rle(mask: CropMask, hw: tuple[int, int]) -> dict:
    """COCO compressed RLE of a mask in an image of size ``hw`` (H, W); ``counts`` is a str (JSON-ready)."""
    rle = mask_utils.encode(np.asfortranarray(mask.full(hw), dtype=np.uint8))
    return {"size": [int(hw[0]), int(hw[1])], "counts": rle["counts"].decode("ascii")}


def rle_to_mask(rle: dict) -> CropMask:
    """Decode a COCO RLE (compressed str/bytes counts or uncompressed list counts) to a ``CropMask``."""
    h, w = rle["size"]
    counts = rle["counts"]
    if isinstance(counts, list):
        encoded = mask_utils.frPyObjects(rle, h, w)
    else:
        encoded = {"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return CropMask.from_full(mask_utils.decode(encoded).astype(bool))


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks of one shape; 1.0 when both are empty."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _simplify(poly: np.ndarray, tolerance: float) -> np.ndarray:
    if len(poly) <= 4:
        return poly
    # Vertices are multiples of 0.25 px, exact in float32 for images up to 4 million pixels across.
    out = cv2.approxPolyDP(poly.astype(np.float32).reshape(-1, 1, 2), tolerance, closed=True)
    return out.reshape(-1, 2).astype(np.float64)


def _bridge(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """``outer`` walked to its vertex nearest ``inner``, then all of ``inner``, then back and on."""
    d = ((outer[:, None, :] - inner[None, :, :]) ** 2).sum(-1)
    i, j = np.unravel_index(np.argmin(d), d.shape)
    inner_loop = np.concatenate([inner[j:], inner[: j + 1]])
    return np.concatenate([outer[: i + 1], inner_loop, outer[i:]])


def _signed_area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
