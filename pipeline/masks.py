"""Pure mask geometry: mask <-> polygons, RLE, area and tight boxes.

Coordinates are continuous image coordinates where pixel ``(row r, col c)`` covers the square
``[c, c + 1) x [r, r + 1)``, the COCO convention. Polygons trace the pixel *boundary* (not pixel
centres), so rasterizing them again gives back the mask they came from.
"""

from __future__ import annotations

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from pipeline.formats import coco
from pipeline.types import CropMask

#: Default simplification tolerance in pixels. The outline runs a quarter pixel inside the mask's edge,
#: so every pixel centre lies at least 0.25 px from it: a tolerance below that keeps each centre on its
#: side, and rasterizing the simplified polygon gives back the same pixels (tested). 0.24 px removes
#: the half-pixel staircase steps of diagonal edges, about a third of all vertices of round objects.
SIMPLIFY_TOLERANCE = 0.24

#: At most about this many outline vertices (plus three per ring) are triangulated to choose bridges.
BRIDGE_CANDIDATES = 8192


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
        rings = [to_image[i]]
        while child != -1:
            rings.append(to_image[child])
            child = hierarchy[0][child][0]
        poly = join_rings(rings)
        if len(poly) >= 3:
            parts.append(poly)
    parts.sort(key=lambda p: -abs(_signed_area(p)))
    return parts


def merge_polygons(parts: list[np.ndarray]) -> np.ndarray:
    """Join several polygons into one by zero-width bridges (see :func:`join_rings`).

    This is the form YOLO-seg label lines need (one polygon per instance), following the idea of
    Ultralytics' ``merge_multi_segment``: walk each part fully and return along the same bridge.

    Args:
        parts: float arrays (K_i, 2) of (x, y), the first one the largest.

    Returns:
        float64 array (K, 2); empty (0, 2) when ``parts`` is empty.
    """
    if not parts:
        return np.zeros((0, 2))
    return join_rings(parts)


def join_rings(rings: list[np.ndarray]) -> np.ndarray:
    """Join closed rings into one by zero-width bridges along a shortest spanning tree.

    Each ring is walked fully and the walk returns along the bridge it came by, so the joined
    polygon covers exactly the union of what the rings cover (a hole stays a hole) under both
    fill rules. The bridges are the minimum spanning tree of the rings under nearest-vertex
    distance: the closest pair of vertices across any split of the rings is an edge of the
    Delaunay triangulation of all vertices, so Kruskal's algorithm over the Delaunay edges that
    join different rings finds it in O(V log V). Beyond ``BRIDGE_CANDIDATES`` vertices only every
    k-th vertex of long rings is a candidate, so a bridge may start a few vertices from the nearest
    one. (Bridging each ring to the nearest vertex of everything joined so far costs
    O(rings^2 x vertices^2): minutes for one fragmented mask.)

    Args:
        rings: float arrays (K_i, 2) of (x, y); the first is where the walk starts.

    Returns:
        float64 array (K, 2) with K = sum(K_i) + 2 * (len(rings) - 1).
    """
    if len(rings) == 1:
        return np.asarray(rings[0], dtype=np.float64)
    sizes = np.array([len(r) for r in rings])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    points = np.concatenate(rings).astype(np.float64)
    owner = np.repeat(np.arange(len(rings)), sizes)
    parent = list(range(len(rings)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    neighbours: list[list[tuple[int, int, int]]] = [[] for _ in rings]  # ring -> (own vertex, ring, its vertex)

    def connect(a: np.ndarray, b: np.ndarray) -> None:
        """Kruskal over candidate vertex pairs (a[k], b[k]): the shortest first, skipping joined rings."""
        swap = owner[a] > owner[b]
        a, b = np.where(swap, b, a), np.where(swap, a, b)
        ra, rb = owner[a], owner[b]
        cross = ra != rb
        a, b, ra, rb = a[cross], b[cross], ra[cross], rb[cross]
        dist = ((points[a] - points[b]) ** 2).sum(-1)
        order = np.lexsort((dist, rb, ra))  # only the shortest pair of each two rings can be a bridge
        keep = np.ones(len(order), dtype=bool)
        keep[1:] = (ra[order][1:] != ra[order][:-1]) | (rb[order][1:] != rb[order][:-1])
        order = order[keep]
        for k in order[np.argsort(dist[order], kind="stable")]:
            i, j = root(int(ra[k])), root(int(rb[k]))
            if i != j:
                parent[i] = j
                va, vb = int(a[k] - starts[ra[k]]), int(b[k] - starts[rb[k]])
                neighbours[ra[k]].append((va, int(rb[k]), vb))
                neighbours[rb[k]].append((vb, int(ra[k]), va))

    # Candidates: every vertex, or on very long outlines every k-th (a bridge then ends within k vertices of
    # the nearest pair): triangulating costs ~8 us a vertex.
    stride = -(-len(points) // BRIDGE_CANDIDATES)
    pick = np.concatenate(
        [s + np.arange(0, n, max(1, min(stride, n // 3))) for s, n in zip(starts, sizes, strict=True)]
    )
    a, b = _delaunay_pairs(points[pick])
    connect(pick[a], pick[b])
    for ring in range(1, len(rings)):  # rings the triangulation missed (degenerate input): nearest vertex
        if root(ring) != root(0):
            from scipy.spatial import cKDTree

            joined = np.array([root(r) == root(0) for r in range(len(rings))])[owner]
            inside = np.flatnonzero(owner == ring)
            d, j = cKDTree(points[joined]).query(points[inside])
            k = int(np.argmin(d))
            connect(np.array([inside[k]]), np.array([np.flatnonzero(joined)[j[k]]]))
    return points[_walk(sizes, starts, neighbours)]


def _delaunay_pairs(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The edges of the Delaunay triangulation of ``points`` as index arrays (empty if degenerate)."""
    from scipy.spatial import Delaunay, QhullError

    try:
        tri = Delaunay(points).simplices  # duplicate vertices are left out: their twins stand in
    except (QhullError, ValueError):  # all collinear, or too few
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return tri[:, [0, 1, 2]].reshape(-1), tri[:, [1, 2, 0]].reshape(-1)


def _walk(sizes: np.ndarray, starts: np.ndarray, neighbours: list[list[tuple[int, int, int]]]) -> np.ndarray:
    """Point indices of the walk that starts at ring 0's vertex 0 and enters each tree child at its bridge."""
    out: list[np.ndarray] = []

    def visit(ring: int, start: int, came_from: int, closed: bool):
        n = int(sizes[ring])
        stops = sorted(((v - start) % n, child, cv) for v, child, cv in neighbours[ring] if child != came_from)
        done = 0
        for offset, child, cv in stops:
            out.append(starts[ring] + (start + np.arange(done, offset + 1)) % n)
            yield child, cv, ring  # walk the child ring, then come back to this vertex
            out.append(np.array([starts[ring] + (start + offset) % n]))
            done = offset + 1
        out.append(starts[ring] + (start + np.arange(done, n)) % n)
        if closed:
            out.append(np.array([starts[ring] + start]))

    stack = [visit(0, 0, -1, closed=False)]
    while stack:  # depth-first without recursion: a chain of thousands of rings is fine
        step = next(stack[-1], None)
        if step is None:
            stack.pop()
        else:
            child, cv, ring = step
            stack.append(visit(child, cv, ring, closed=True))
    return np.concatenate(out)


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
    return CropMask.from_full(mask_utils.decode(coco.to_rle(rle, h, w)).astype(bool))


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


def _signed_area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
