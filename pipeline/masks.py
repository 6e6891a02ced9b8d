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


class CropMask:
    """A binary mask kept as its tight crop, run-length encoded, so memory follows the object's outline.

    A 6000 x 4000 mask covering half the image takes a few kilobytes here instead of 24 MB, so an
    image with hundreds of instances holds them all at little cost. ``bits`` decodes on demand.

    Args:
        bits: bool array (h, w), the mask inside its box; (0, 0) for an empty mask.
        x0: column of ``bits[:, 0]`` in the image, in pixels.
        y0: row of ``bits[0, :]`` in the image, in pixels.
    """

    __slots__ = ("_rle", "_shape", "_area", "x0", "y0")
    _rle: dict | None  # pycocotools compressed RLE of the crop; None when the crop is empty
    _shape: tuple[int, int]
    _area: int
    x0: int
    y0: int

    def __init__(self, bits: np.ndarray, x0: int = 0, y0: int = 0) -> None:
        bits = np.asarray(bits)
        if bits.dtype != np.bool_ or bits.ndim != 2:
            raise ValueError(f"CropMask.bits must be a 2-D bool array, got {bits.dtype} {bits.shape}")
        set_ = object.__setattr__
        set_(self, "x0", int(x0))
        set_(self, "y0", int(y0))
        set_(self, "_shape", (int(bits.shape[0]), int(bits.shape[1])))
        set_(self, "_rle", mask_utils.encode(np.asfortranarray(bits, dtype=np.uint8)) if bits.size else None)
        set_(self, "_area", int(mask_utils.area(self._rle)) if bits.size else 0)

    def __setattr__(self, name, value):
        raise AttributeError("CropMask is immutable")

    def __getstate__(self) -> tuple:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __setstate__(self, state: tuple) -> None:  # pickle (a Ray worker sends masks to the next stage)
        for name, value in zip(self.__slots__, state, strict=True):
            object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        return f"CropMask(shape={self._shape}, x0={self.x0}, y0={self.y0}, area={self._area})"

    @property
    def bits(self) -> np.ndarray:
        """bool array (h, w): the mask inside its box (decoded on each access)."""
        if self._rle is None:
            return np.zeros(self._shape, dtype=bool)
        return mask_utils.decode(self._rle).astype(bool)

    @property
    def shape(self) -> tuple[int, int]:
        """(h, w) of the crop."""
        return self._shape

    @classmethod
    def from_full(cls, mask: np.ndarray) -> CropMask:
        """Crop a full-image bool mask (H, W) to its tight box."""
        mask = np.asarray(mask, dtype=bool)
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if rows.size == 0:
            return cls(np.zeros((0, 0), dtype=bool))
        y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        return cls(mask[y0:y1, x0:x1], int(x0), int(y0))

    @property
    def area(self) -> int:
        """Number of mask pixels."""
        return self._area

    def to_json(self) -> dict | None:
        """The crop as JSON: ``{"x0", "y0", "h", "w", "counts"}`` (COCO compressed RLE of the crop); None if empty."""
        if self._rle is None:
            return None
        h, w = self._shape
        return {"x0": self.x0, "y0": self.y0, "h": h, "w": w, "counts": self._rle["counts"].decode("ascii")}

    @classmethod
    def from_json(cls, data: dict | None) -> CropMask:
        """Inverse of ``to_json`` (nothing is decoded: the RLE is kept as it is)."""
        if data is None:
            return cls(np.zeros((0, 0), dtype=bool))
        self = cls.__new__(cls)
        set_ = object.__setattr__
        h, w = int(data["h"]), int(data["w"])
        set_(self, "x0", int(data["x0"]))
        set_(self, "y0", int(data["y0"]))
        set_(self, "_shape", (h, w))
        set_(self, "_rle", {"size": [h, w], "counts": str(data["counts"]).encode("ascii")})
        set_(self, "_area", int(mask_utils.area(self._rle)))
        return self

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CropMask):
            return NotImplemented
        return self.xyxy == other.xyxy and self.to_json() == other.to_json()

    __hash__ = None  # type: ignore[assignment]

    @property
    def xyxy(self) -> tuple[int, int, int, int]:
        """Box (x_min, y_min, x_max, y_max) of the crop in pixel-edge coordinates: x_max is exclusive."""
        h, w = self._shape
        return self.x0, self.y0, self.x0 + w, self.y0 + h

    def full(self, hw: tuple[int, int]) -> np.ndarray:
        """The mask as a full bool array of shape ``hw`` (H, W); parts outside the image are dropped."""
        out = np.zeros(hw, dtype=bool)
        h, w = self._shape
        y1, x1 = min(self.y0 + h, hw[0]), min(self.x0 + w, hw[1])
        if y1 > self.y0 and x1 > self.x0:
            out[self.y0 : y1, self.x0 : x1] = self.bits[: y1 - self.y0, : x1 - self.x0]
        return out


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
    padded = cv2.copyMakeBorder(up, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    contours, hierarchy = cv2.findContours(padded, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
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
    return {"size": [int(hw[0]), int(hw[1])], "counts": full_rle(mask, hw)["counts"].decode("ascii")}


def full_rle(mask: CropMask, hw: tuple[int, int]) -> dict:
    """COCO compressed RLE of ``mask`` in an image of size ``hw`` (H, W), built from the crop's columns.

    Costs the crop's width times H, not H x W; parts outside the image are dropped.
    """
    h, w = hw
    x0, y0 = max(mask.x0, 0), max(mask.y0, 0)
    bits = mask.bits[y0 - mask.y0 : max(0, h - mask.y0), x0 - mask.x0 : max(0, w - mask.x0)]
    if bits.size == 0 or not bits.any():
        return mask_utils.frPyObjects({"counts": [h * w], "size": [h, w]}, h, w)
    strip = np.zeros((h, bits.shape[1]), dtype=np.uint8)
    strip[y0 : y0 + bits.shape[0]] = bits
    flat = strip.ravel(order="F")
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    if flat[0]:
        runs.insert(0, 0)  # RLE counts start with a run of zeros
    runs[0] += x0 * h  # the columns left of the crop
    tail = (w - x0 - bits.shape[1]) * h  # and right of it
    if not flat[-1]:
        runs[-1] += tail
    elif tail:
        runs.append(tail)
    return mask_utils.frPyObjects({"counts": runs, "size": [h, w]}, h, w)


def rle_to_mask(rle: dict) -> CropMask:
    """Decode a COCO RLE (compressed str/bytes counts or uncompressed list counts) to a ``CropMask``."""
    h, w = rle["size"]
    return CropMask.from_full(mask_utils.decode(coco.to_rle(rle, h, w)).astype(bool))


#: Longest counts string accepted (a 100-megapixel mask of one-pixel stripes stays well below).
MAX_RLE_COUNTS_CHARS = 4_000_000


class RleError(ValueError):
    """An RLE that is not a COCO compressed RLE of the image (``checked_rle_to_mask``); the message says what is wrong."""


def parse_rle_counts(counts: str) -> list[int]:
    """The run lengths of a COCO compressed RLE string (pycocotools' ``rleFrString``), checked.

    Each run is a little-endian base-32 number (5 bits a character, 0x20: more characters follow, 0x10 in
    the last one: negative), offset by 48; from the fourth run on, each is a difference to the run two
    before. Decoded with numpy: a mask of many runs costs microseconds, not a Python loop per character.

    Raises:
        RleError: a character outside the alphabet, a truncated or overlong number, or a negative run.
    """
    return _runs(counts).tolist()


def _runs(counts: str) -> np.ndarray:
    if not counts.isascii():
        p = next(i for i, ch in enumerate(counts) if not ch.isascii())
        raise RleError(f"counts: character {counts[p]!r} at {p} is not in the RLE alphabet ('0' to 'o')")
    c = np.frombuffer(counts.encode("ascii"), dtype=np.uint8).astype(np.int64) - 48
    if c.size == 0:
        return np.zeros(0, dtype=np.int64)
    bad = np.flatnonzero((c < 0) | (c >= 64))
    if bad.size:
        p = int(bad[0])
        raise RleError(f"counts: character {counts[p]!r} at {p} is not in the RLE alphabet ('0' to 'o')")
    more = (c & 0x20) != 0
    if more[-1]:
        raise RleError("counts: the string ends inside a number")
    ends = np.flatnonzero(~more)
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    if lengths.max() > 12:  # 60 bits: no image has that many pixels
        raise RleError("counts: a run longer than any image")
    k = np.arange(c.size) - np.repeat(starts, lengths)
    x = np.add.reduceat((c & 0x1F) << (5 * k), starts)
    negative = (c[ends] & 0x10) != 0
    x[negative] -= np.left_shift(1, 5 * lengths[negative])
    runs = x.copy()  # runs[i] = x[i] + runs[i - 2] from i = 3 on: running sums over each parity
    if runs.size > 3:
        runs[3::2] = x[1] + np.cumsum(x[3::2])
        if runs.size > 4:
            runs[4::2] = x[2] + np.cumsum(x[4::2])
    neg = np.flatnonzero(runs < 0)
    if neg.size:
        raise RleError(f"counts: run {int(neg[0])} has negative length {int(runs[neg[0]])}")
    return runs


def checked_rle_to_mask(rle: object, hw: tuple[int, int]) -> CropMask:
    """An untrusted RLE (a review client's) of an image of size ``hw`` (H, W) as a ``CropMask``, checked first.

    The string is checked before pycocotools sees it: older pycocotools releases decode without bounds
    checks, and ``area`` trusts the runs whatever they say.

    Raises:
        RleError: not ``{"size": [H, W], "counts": str}``, another size, or runs that do not cover the image.
    """
    if not isinstance(rle, dict) or set(rle) != {"size", "counts"}:
        raise RleError('expected {"size": [H, W], "counts": "<COCO compressed RLE>"}')
    size, counts = rle["size"], rle["counts"]
    if not isinstance(size, list) or size != [int(hw[0]), int(hw[1])]:
        raise RleError(f"size {size!r} is not the image's [{hw[0]}, {hw[1]}] (height, width)")
    if not isinstance(counts, str) or len(counts) > MAX_RLE_COUNTS_CHARS:
        raise RleError(f"counts: expected a COCO compressed RLE string of at most {MAX_RLE_COUNTS_CHARS} characters")
    total = int(_runs(counts).sum())
    if total != hw[0] * hw[1]:
        raise RleError(f"counts: the runs cover {total} pixels, the image has {hw[0] * hw[1]}")
    full = mask_utils.decode({"size": [int(hw[0]), int(hw[1])], "counts": counts.encode("ascii")})
    return CropMask.from_full(full.astype(bool))


def crop_intersection(a: CropMask, b: CropMask) -> int:
    """Pixels two masks share, from the overlap of their crops alone (no full-image arrays)."""
    ax0, ay0, ax1, ay1 = a.xyxy
    bx0, by0, bx1, by1 = b.xyxy
    x0, y0, x1, y1 = max(ax0, bx0), max(ay0, by0), min(ax1, bx1), min(ay1, by1)
    if x1 <= x0 or y1 <= y0 or a.area == 0 or b.area == 0:
        return 0
    wa = a.bits[y0 - ay0 : y1 - ay0, x0 - ax0 : x1 - ax0]
    wb = b.bits[y0 - by0 : y1 - by0, x0 - bx0 : x1 - bx0]
    return int(np.count_nonzero(wa & wb))


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
