from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.masks import (
    SIMPLIFY_TOLERANCE,
    RleError,
    checked_rle_to_mask,
    join_rings,
    mask_iou,
    mask_to_polygons,
    mask_to_rle,
    merge_polygons,
    polygons_to_mask,
    rle_to_mask,
)
from pipeline.types import CropMask


def _mask(hw, *cells):
    m = np.zeros(hw, bool)
    for r, c in cells:
        m[r, c] = True
    return m


@pytest.mark.parametrize(
    "mask, expected",
    [
        # one pixel at row 1, col 2: the outline runs a quarter pixel inside its square [2, 3] x [1, 2]
        (_mask((4, 5), (1, 2)), [[[2.25, 1.25], [2.25, 1.75], [2.75, 1.75], [2.75, 1.25]]]),
        # a 2 x 3 block at the image corner
        (
            np.pad(np.ones((2, 3), bool), ((0, 2), (0, 2))),
            [[[0.25, 0.25], [0.25, 1.75], [2.75, 1.75], [2.75, 0.25]]],
        ),
        # empty mask: no polygon
        (np.zeros((3, 3), bool), []),
    ],
)
def test_polygons_exact(mask, expected):
    polys = mask_to_polygons(CropMask.from_full(mask))
    assert [p.tolist() for p in polys] == expected


def test_two_part_mask_gives_two_polygons_and_one_merged_polygon():
    m = np.zeros((4, 6), bool)
    m[0:2, 0:2] = True  # part 1: 4 px
    m[2:4, 4:6] = True  # part 2: 5 px with the pixel at (3, 3)
    m[3, 3] = True
    parts = mask_to_polygons(CropMask.from_full(m))
    assert len(parts) == 2
    assert mask_iou(polygons_to_mask(parts, m.shape), m) == 1.0
    merged = merge_polygons(parts)
    # the larger part first, a bridge to the nearest vertex of the other, around it and back
    # (fmt: skip: two rows as the outline reads, the bridge and the small part, then the rest of the large part)
    assert merged.tolist() == [
        [3.25, 3.25], [1.75, 1.75], [1.75, 0.25], [0.25, 0.25], [0.25, 1.75], [1.75, 1.75],
        [3.25, 3.25], [3.25, 3.75], [5.75, 3.75], [5.75, 2.25], [4.25, 2.25], [4.25, 2.75],
    ]  # fmt: skip
    assert mask_iou(polygons_to_mask([merged], m.shape), m) == 1.0


def _fragmented_mask(seed: int = 0) -> np.ndarray:
    """A mask like SAM's on noise: hundreds of specks and holes inside a few large blobs."""
    rng = np.random.default_rng(seed)
    noise = cv2.resize(rng.standard_normal((48, 64)).astype(np.float32), (320, 240), interpolation=cv2.INTER_LINEAR)
    return (noise + 0.3 * rng.standard_normal((240, 320)).astype(np.float32)) > 0.2


@pytest.mark.parametrize("candidates", [None, 64])  # 64: bridges chosen among every k-th vertex of long outlines
def test_fragmented_mask_round_trips_exactly(candidates, monkeypatch):
    if candidates:
        monkeypatch.setattr("pipeline.masks.BRIDGE_CANDIDATES", candidates)
    m = _fragmented_mask()
    count, _ = cv2.connectedComponents(m.astype(np.uint8), connectivity=8)
    inverse, _ = cv2.connectedComponents((~m).astype(np.uint8), connectivity=4)
    assert count - 1 > 100 and inverse - 1 > 100  # the case that used to take minutes: many parts and holes
    parts = mask_to_polygons(CropMask.from_full(m))
    assert len(parts) == count - 1
    assert mask_iou(polygons_to_mask(parts, m.shape), m) == 1.0
    merged = merge_polygons(parts)
    assert len(merged) == sum(len(p) for p in parts) + 2 * (len(parts) - 1)
    assert mask_iou(polygons_to_mask([merged], m.shape), m) == 1.0


def test_bridges_are_the_shortest_spanning_tree():
    m = np.zeros((6, 20), bool)
    m[0:5, 0:6] = True  # A, the largest: sides 5.5 and 4.5
    m[1:3, 12:14] = True  # B: sides 1.5, 6.5 px right of A
    m[1:3, 17:19] = True  # C: sides 1.5, 3.5 px right of B, 11.5 px right of A
    merged = merge_polygons(mask_to_polygons(CropMask.from_full(m)))
    steps = np.hypot(*np.diff(np.vstack([merged, merged[:1]]), axis=0).T)  # the ring closes on itself
    # the sides of A, and two bridges each walked there and back: A-B between nearest corners
    # (6.5 across, 1 down) and B-C (3.5 across); no A-C bridge (>= 11.5)
    expected = [3.5, 3.5, 4.5, 4.5, 5.5, 5.5, np.hypot(6.5, 1.0), np.hypot(6.5, 1.0)]
    assert np.sort(steps[steps > 1.5]).tolist() == pytest.approx(expected)
    assert mask_iou(polygons_to_mask([merged], m.shape), m) == 1.0


def test_join_rings_without_a_triangulation():
    # all vertices on one line: no Delaunay triangulation exists, the rings are still joined
    rings = [np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]]), np.array([[9.0, 0.0], [8.0, 0.0], [7.0, 0.0]])]
    joined = join_rings(rings)
    assert joined.tolist() == [[0, 0], [1, 0], [2, 0], [7, 0], [9, 0], [8, 0], [7, 0], [2, 0]]


def test_hole_is_kept_in_polygon_form():
    m = np.zeros((7, 7), bool)
    m[1:6, 1:6] = True
    m[3, 3] = False  # one-pixel hole
    parts = mask_to_polygons(CropMask.from_full(m))
    assert len(parts) == 1  # the hole is bridged into its part, not a separate object
    back = polygons_to_mask(parts, m.shape)
    assert not back[3, 3]
    assert np.array_equal(back, m)


def test_crop_offsets_are_applied():
    m = np.zeros((30, 40), bool)
    m[10:13, 20:24] = True
    crop = CropMask.from_full(m)
    assert (crop.x0, crop.y0, crop.shape) == (20, 10, (3, 4))
    assert crop.xyxy == (20, 10, 24, 13)
    assert crop.area == 12
    assert np.array_equal(polygons_to_mask(mask_to_polygons(crop), m.shape), m)


def _random_shapes(rng, n):
    for k in range(n):
        m = np.zeros((160, 200), np.uint8)
        size = int(rng.integers(8, 120))
        cx, cy = int(rng.integers(30, 170)), int(rng.integers(30, 130))
        if k % 3 == 0:
            cv2.circle(m, (cx, cy), size // 2, 1, -1)
        elif k % 3 == 1:
            axes = (size // 2, max(4, size // 4))
            cv2.ellipse(m, (cx, cy), axes, float(rng.integers(0, 180)), 0, 360, 1, -1)
        else:
            pts = rng.integers(0, size, (6, 2)) + [cx - size // 2, cy - size // 2]
            cv2.fillPoly(m, [pts.astype(np.int32)], 1)
            cv2.circle(m, (cx, cy), max(1, size // 6), 0, -1)  # punch a hole
        if m.sum():
            yield m.astype(bool)


@pytest.mark.parametrize("tolerance", [0.0, SIMPLIFY_TOLERANCE])
def test_round_trip_through_pycocotools(tolerance):
    """Objects of 8 px and up: mask -> polygons -> pycocotools raster gives the same pixels."""
    rng = np.random.default_rng(0)
    ious = [
        mask_iou(polygons_to_mask(mask_to_polygons(CropMask.from_full(m), tolerance=tolerance), m.shape), m)
        for m in _random_shapes(rng, 300)
    ]
    assert min(ious) >= 0.99
    assert np.mean(ious) == 1.0


def test_simplification_reduces_vertices():
    m = np.zeros((200, 200), np.uint8)
    cv2.circle(m, (100, 100), 60, 1, -1)
    crop = CropMask.from_full(m.astype(bool))
    full = sum(map(len, mask_to_polygons(crop, tolerance=0)))
    simple = sum(map(len, mask_to_polygons(crop)))
    assert simple < 0.8 * full


def test_rle_round_trip_and_uncompressed_counts():
    m = np.zeros((5, 6), bool)
    m[1:4, 2:5] = True
    m[2, 3] = False
    rle = mask_to_rle(CropMask.from_full(m), m.shape)
    assert isinstance(rle["counts"], str)
    assert np.array_equal(rle_to_mask(rle).full(m.shape), m)
    # uncompressed counts (column-major runs), as some tools write them
    runs, flat, value, n = [], m.T.reshape(-1), False, 0
    for v in flat:
        if v != value:
            runs.append(n)
            value, n = v, 0
        n += 1
    runs.append(n)
    assert np.array_equal(rle_to_mask({"size": [5, 6], "counts": runs}).full(m.shape), m)


# ----------------------------------------------------------------------------------------- untrusted RLE (review clients)


def test_mask_to_rle_decodes_back_through_the_checked_decoder():
    rng = np.random.default_rng(0)
    for _ in range(200):
        hw = tuple(int(v) for v in rng.integers(1, 30, 2))
        bits = rng.random((int(rng.integers(0, 25)), int(rng.integers(0, 25)))) < 0.5
        mask = CropMask(bits, int(rng.integers(0, 30)), int(rng.integers(0, 30)))  # may reach past the image
        rle = mask_to_rle(mask, hw)
        assert np.array_equal(checked_rle_to_mask(rle, hw).full(hw), mask.full(hw))


@pytest.mark.parametrize(
    "rle, message",
    [
        ({"size": [4, 4], "counts": "0"}, "cover 0 pixels"),
        ({"size": [4, 4], "counts": "44"}, "cover 8 pixels, the image has 16"),
        ({"size": [4, 4], "counts": "0\x7f"}, "alphabet"),
        ({"size": [4, 4], "counts": "0`"}, "ends inside a number"),
        ({"size": [4, 4], "counts": "04O"}, "negative"),  # a delta that takes a run below 0
        ({"size": [5, 4], "counts": "0`0"}, "size"),
        ({"size": [4, 4], "counts": [16]}, "string"),
        ({"size": [4, 4]}, "expected"),
        ("0`0", "expected"),
    ],
)
def test_rle_decode_checks_what_pycocotools_would_trust(rle, message):
    with pytest.raises(RleError, match=message):
        checked_rle_to_mask(rle, (4, 4))
