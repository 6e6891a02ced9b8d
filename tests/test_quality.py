"""Quality signals and flags on hand-drawn masks: each signal's exact value, each flag at its threshold."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.quality import (
    FLAGS,
    SIGNALS,
    QualityThresholds,
    choose_candidate,
    compute_signals,
    flag,
    stability_from_logits,
    stability_score,
)
from pipeline.types import CropMask

HW = (10, 10)


def art(*rows: str, x0: int = 0, y0: int = 0) -> CropMask:
    """A mask from rows of '#' (set) and '.' (clear), placed with its top-left pixel at (x0, y0)."""
    return CropMask(np.array([[ch == "#" for ch in row] for row in rows]), x0, y0)


def square(x0: int, y0: int, size: int) -> CropMask:
    return CropMask(np.ones((size, size), dtype=bool), x0, y0)


def one(mask: CropMask | None, box, hw=HW, **kw) -> dict[str, float]:
    """Signals of a single instance, as plain numbers."""
    s = compute_signals([mask], np.array([box], dtype=float), hw, **kw)
    return {k: v[0].item() for k, v in s.items()}


SQ = square(2, 2, 4)  # pixels x 2..5, y 2..5: box (2, 2, 6, 6) in pixel-edge coordinates


@pytest.mark.parametrize(
    ("mask", "box", "expected"),
    [
        (SQ, (2, 2, 6, 6), 1.0),  # the box is the mask's tight box
        (SQ, (2, 2, 10, 6), 0.5),  # box twice as wide: 16 / 32
        (SQ, (0, 0, 8, 8), 0.25),  # 16 / 64
        (SQ, (2.5, 2, 6, 6), 0.875),  # half a pixel short on the left: 14 / 16
        (SQ, (6, 6, 9, 9), 0.0),  # disjoint
        # the crop is not tight (a ring of clear pixels): the tight box is still (2, 2, 6, 6)
        (art("......", ".####.", ".####.", ".####.", ".####.", "......", x0=1, y0=1), (2, 2, 6, 6), 1.0),
        # a box reaching past the image is clipped to it first: (6, 6, 14, 14) -> (6, 6, 10, 10)
        (square(6, 6, 4), (6, 6, 14, 14), 1.0),
    ],
)
def test_box_fit(mask, box, expected):
    assert one(mask, box)["box_fit"] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("box", "expected"),
    [
        ((2, 2, 6, 6), 0.0),  # all 16 pixels inside
        ((2, 2, 4, 6), 0.5),  # columns 2, 3 inside (centres 2.5, 3.5), columns 4, 5 outside
        ((2, 2, 4.5, 6), 0.25),  # column 4's centre 4.5 lies on the edge: inside (closed box)
        ((2, 2, 4.4, 6), 0.5),  # column 4's centre 4.5 > 4.4: outside
        ((2.5, 2, 6, 6), 0.0),  # column 2's centre 2.5 on the edge: inside
        ((2.6, 2.6, 6, 6), 7 / 16),  # column 2 and row 2 outside: 4 + 4 - 1 pixels
        ((7, 7, 9, 9), 1.0),  # no pixel inside
    ],
)
def test_outside_box_counts_pixel_centres(box, expected):
    assert one(SQ, box)["outside_box"] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("mask", "parts", "largest"),
    [
        (SQ, 1, 1.0),  # one square
        (art("##....", "##....", "....##", "....##"), 2, 0.5),  # two 2x2 squares apart
        (art("#.", ".#"), 1, 1.0),  # diagonal neighbours are one part (8-connectivity)
        (art("###...", "###..#", "###..."), 2, 0.9),  # 9 pixels and a speck
        (art("#.#.#.#", ".......", "#.#.#.#"), 8, 0.125),  # eight specks
    ],
)
def test_parts_and_largest_part(mask, parts, largest):
    s = one(mask, mask.xyxy)
    assert (s["parts"], s["largest_part"]) == (parts, pytest.approx(largest))


@pytest.mark.parametrize(
    ("masks", "expected"),
    [
        ([square(0, 0, 4), square(0, 0, 4)], [1.0, 1.0]),  # identical
        ([square(0, 0, 4), square(2, 0, 4)], [1 / 3, 1 / 3]),  # shifted by 2: 8 / (16 + 16 - 8)
        ([square(0, 0, 3), square(5, 5, 3)], [0.0, 0.0]),  # boxes apart
        (
            [art("#...", "....", "....", "...#"), art("....", ".#..", "..#.", "....")],
            [0.0, 0.0],
        ),  # boxes meet, pixels not
        # the largest IoU of each: A~C 1.0, B~A = B~C = 1/3
        ([square(0, 0, 4), square(2, 0, 4), square(0, 0, 4)], [1.0, 1 / 3, 1.0]),
        ([square(0, 0, 4)], [0.0]),  # alone
        ([square(0, 0, 4), None], [0.0, 0.0]),  # an empty mask overlaps nothing
    ],
)
def test_overlap_is_the_largest_iou_with_another_instance(masks, expected):
    boxes = np.array([m.xyxy if m is not None else (0, 0, 1, 1) for m in masks], dtype=float)
    assert compute_signals(masks, boxes, HW)["overlap"].tolist() == pytest.approx(expected)


def test_area_and_masks_clipped_to_the_image():
    # a 4x4 square at x 8..11 on a 10-wide image: only columns 8, 9 exist
    s = one(square(8, 2, 4), (8, 2, 10, 6))
    assert (s["area"], s["box_fit"], s["outside_box"]) == (8, 1.0, 0.0)
    assert one(SQ, (2, 2, 6, 6))["area"] == 16


@pytest.mark.parametrize("mask", [None, CropMask(np.zeros((0, 0), dtype=bool)), CropMask(np.zeros((3, 3), bool))])
def test_empty_mask_signals(mask):
    s = one(mask, (2, 2, 6, 6))
    assert (s["area"], s["parts"], s["box_fit"], s["overlap"]) == (0, 0, 0.0, 0.0)
    assert math.isnan(s["outside_box"]) and math.isnan(s["largest_part"])  # shares of no pixels
    assert flag({k: np.array([v]) for k, v in s.items()}) == [["empty"]]


def test_scores_pass_through_and_default_to_nan():
    s = compute_signals([SQ, SQ], np.array([[2, 2, 6, 6]] * 2, float), HW, mask_score=[0.9, np.nan], stability=[0.7, 1])
    assert s["mask_score"].tolist()[0] == 0.9 and math.isnan(s["mask_score"][1])
    assert s["stability_score"].tolist() == [0.7, 1.0]
    s = compute_signals([SQ], np.array([[2, 2, 6, 6]], float), HW)
    assert math.isnan(s["mask_score"][0]) and math.isnan(s["stability_score"][0])
    assert tuple(s) == SIGNALS
    assert s["parts"].dtype == np.int64 and s["area"].dtype == np.int64


def test_no_instances():
    s = compute_signals([], np.zeros((0, 4)), HW)
    assert all(v.shape == (0,) for v in s.values())
    assert flag(s) == []


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match=r"xyxy: expected shape \(2, 4\)"):
        compute_signals([SQ, SQ], np.zeros((1, 4)), HW)
    with pytest.raises(ValueError, match=r"mask_score: expected shape \(1,\)"):
        compute_signals([SQ], np.zeros((1, 4)), HW, mask_score=[0.5, 0.5])


# --------------------------------------------------------------------------------------------- flags

GOOD = {
    "mask_score": 0.9,
    "stability_score": 0.95,
    "box_fit": 0.9,
    "outside_box": 0.0,
    "parts": 1,
    "largest_part": 1.0,
    "overlap": 0.0,
    "area": 400,
}


@pytest.mark.parametrize(
    ("signal", "value", "expected"),
    [
        ("mask_score", 0.49, ["low_score"]),  # below 0.5
        ("mask_score", 0.5, []),  # at the threshold: no flag
        ("mask_score", math.nan, []),  # no SAM score: never a flag
        ("stability_score", 0.84, ["unstable"]),
        ("stability_score", 0.85, []),
        ("stability_score", math.nan, []),  # stability not computed
        ("outside_box", 0.11, ["leaks_box"]),
        ("outside_box", 0.1, []),
        ("box_fit", 0.49, ["underfills_box"]),
        ("box_fit", 0.5, []),
        ("largest_part", 0.79, ["fragmented"]),
        ("largest_part", 0.8, []),
        ("parts", 6, ["fragmented"]),  # more than 5 parts, even if one dominates
        ("parts", 5, []),
        ("overlap", 0.81, ["duplicate"]),
        ("overlap", 0.8, []),
        ("area", 15, ["tiny"]),
        ("area", 16, []),
        ("area", 0, ["empty"]),  # empty: only "empty"
    ],
)
def test_each_flag_fires_exactly_past_its_threshold(signal, value, expected):
    signals = {k: np.array([v], dtype=float) for k, v in {**GOOD, signal: value}.items()}
    assert flag(signals) == [expected]


def test_flags_come_in_fixed_order_and_thresholds_are_settable():
    bad = {"mask_score": 0.1, "stability_score": 0.1, "box_fit": 0.1, "outside_box": 0.9}
    bad |= {"parts": 9, "largest_part": 0.1, "overlap": 0.9, "area": 3}
    signals = {k: np.array([v], dtype=float) for k, v in bad.items()}
    assert flag(signals) == [[f for f in FLAGS if f != "empty"]]
    signals = {k: np.array([v], dtype=float) for k, v in GOOD.items()}
    assert flag(signals, QualityThresholds(min_mask_score=0.95, min_area=500)) == [["low_score", "tiny"]]


def test_flags_from_drawn_masks():
    masks = [
        square(0, 0, 5),  # good
        square(0, 0, 5),  # the same pixels as the first: duplicate (of each other)
        art("###...###", "###...###", "###...###", y0=6),  # two parts of 9 pixels: fragmented
        square(7, 0, 2),  # 4 pixels: tiny
        None,  # empty
    ]
    boxes = np.array([[0, 0, 5, 5], [0, 0, 5, 5], [0, 6, 9, 9], [7, 0, 9, 2], [1, 1, 3, 3]], float)
    out = flag(compute_signals(masks, boxes, HW, mask_score=[0.9, 0.3, 0.9, 0.9, 0.9]))
    assert out == [["duplicate"], ["low_score", "duplicate"], ["fragmented"], ["tiny"], ["empty"]]


# ----------------------------------------------------------------------------------------- stability


@pytest.mark.parametrize(
    ("hi", "lo", "expected"),
    [
        (square(3, 3, 2), square(2, 2, 4), 0.25),  # 4 of 16 pixels stay above +1
        (square(2, 2, 4), square(2, 2, 4), 1.0),  # nothing changes between -1 and +1
        (CropMask(np.zeros((0, 0), bool)), square(2, 2, 4), 0.0),  # nothing above +1
        (CropMask(np.zeros((0, 0), bool)), CropMask(np.zeros((0, 0), bool)), 1.0),  # both empty: stable by definition
        (art("##", "#."), art("###", "##.", "#..", x0=0, y0=0), 0.5),  # 3 of 6
    ],
)
def test_stability_score(hi, lo, expected):
    assert stability_score(hi, lo) == pytest.approx(expected)


def test_stability_from_logits():
    logits = np.array([[[2.0, 0.5], [-0.5, -2.0]], [[-5.0, -5.0], [-5.0, -5.0]]])
    # first: 1 pixel > +1, 3 pixels > -1; second: nothing above either threshold
    assert stability_from_logits(logits).tolist() == pytest.approx([1 / 3, 1.0])


# ------------------------------------------------------------------------------------- candidates

PROMPT = (0, 0, 10, 10)
CANDIDATES = [
    square(0, 0, 4),  # tight box (0, 0, 4, 4): fit 16 / 100
    square(0, 0, 10),  # fits the prompt exactly: 1.0
    CropMask(np.ones((8, 10), bool)),  # (0, 0, 10, 8): 0.8
]


@pytest.mark.parametrize(
    ("scores", "strategy", "expected"),
    [
        ([0.9, 0.7, 0.8], "score", 0),  # best predicted IoU
        ([0.9, 0.7, 0.8], "box-fit", 1),  # best box fit, whatever its score
        ([0.8, 0.8, 0.5], "score", 0),  # a tie on score: the lower index
        ([np.nan, 0.1, 0.2], "score", 2),  # NaN ranks last
    ],
)
def test_choose_candidate(scores, strategy, expected):
    assert choose_candidate(CANDIDATES, np.array(scores), PROMPT, strategy=strategy) == expected


def test_choose_candidate_box_fit_ties():
    ring = art("##########", *["#........#"] * 8, "##########")  # same tight box as a full square
    candidates = [square(0, 0, 4), square(0, 0, 10), ring]
    # boxes tie at 1.0: the better score wins
    assert choose_candidate(candidates, np.array([0.9, 0.6, 0.8]), PROMPT, strategy="box-fit") == 2
    # boxes and scores tie: the lower index
    assert choose_candidate(candidates, np.array([0.9, 0.8, 0.8]), PROMPT, strategy="box-fit") == 1


def test_choose_candidate_refuses_bad_input():
    with pytest.raises(ValueError, match="strategy must be 'score' or 'box-fit'"):
        choose_candidate(CANDIDATES, np.ones(3), PROMPT, strategy="area")
    with pytest.raises(ValueError, match=r"scores: expected shape \(3,\)"):
        choose_candidate(CANDIDATES, np.ones(2), PROMPT)
