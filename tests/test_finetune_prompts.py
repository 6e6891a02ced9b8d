"""Prompt sampling for fine-tuning: jittered boxes stay in the image, clicks land where the prediction is wrong."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.finetune.prompts import NEGATIVE, NO_CLICK, POSITIVE, jitter_boxes, sample_clicks

HW = (40, 60)


@pytest.mark.parametrize(
    "box",
    [
        [0, 0, 60, 40],  # the whole image: every outward move is clipped
        [0, 0, 5, 4],  # at the top-left corner
        [55, 36, 60, 40],  # at the bottom-right corner
        [20, 10, 21, 11],  # one pixel: edges may cross before the 1-pixel floor
        [10, 5, 50, 30],  # inside, away from the border
    ],
)
def test_jittered_boxes_stay_inside_the_image_and_near_the_box(box):
    rng = np.random.default_rng(0)
    boxes = np.array([box] * 500, dtype=np.float32)
    fraction = 0.1
    out = jitter_boxes(boxes, HW, rng, fraction=fraction)
    assert out.dtype == np.float32 and out.shape == boxes.shape
    assert (out[:, [0, 2]] >= 0).all() and (out[:, [0, 2]] <= HW[1]).all()
    assert (out[:, [1, 3]] >= 0).all() and (out[:, [1, 3]] <= HW[0]).all()
    assert (out[:, 2] - out[:, 0] >= 1 - 1e-5).all() and (out[:, 3] - out[:, 1] >= 1 - 1e-5).all()
    w, h = box[2] - box[0], box[3] - box[1]
    limit = 2 * fraction * np.array([max(w, 1), max(h, 1)] * 2) + 0.5  # 2 std, plus the 1-pixel re-centring
    assert (np.abs(out - boxes) <= limit).all()
    assert len(np.unique(out, axis=0)) > 1 or w >= HW[1]  # it does move the edges


def test_jitter_moves_edges_by_the_given_fraction_of_the_side():
    rng = np.random.default_rng(1)
    boxes = np.tile([[100, 100, 200, 150]], (4000, 1)).astype(np.float32)  # 100 wide, 50 high
    shift = jitter_boxes(boxes, (1000, 1000), rng, fraction=0.05) - boxes
    std = shift.std(axis=0)
    # N(0, (0.05 side)^2) clipped at 2 std has std 0.959 x 0.05 x side: 4.80 px for x edges, 2.40 px for y edges
    np.testing.assert_allclose(std, [4.80, 2.40, 4.80, 2.40], rtol=0.05)
    assert np.abs(shift[:, [0, 2]]).max() <= 10 + 1e-4 and np.abs(shift[:, [1, 3]]).max() <= 5 + 1e-4


def test_jitter_is_reproducible_and_zero_jitter_only_clips():
    boxes = np.array([[-5, 3, 70, 20], [10, 10, 30, 30]], dtype=np.float32)
    a = jitter_boxes(boxes, HW, np.random.default_rng(7), fraction=0.05)
    b = jitter_boxes(boxes, HW, np.random.default_rng(7), fraction=0.05)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(
        jitter_boxes(boxes, HW, np.random.default_rng(7), fraction=0.0), [[0, 3, 60, 20], [10, 10, 30, 30]]
    )


def _masks(pred_rows: list[str], gt_rows: list[str]) -> tuple[np.ndarray, np.ndarray]:
    pred = np.array([[c == "#" for c in r] for r in pred_rows])[None]
    gt = np.array([[c == "#" for c in r] for r in gt_rows])[None]
    return pred, gt


def test_clicks_are_positive_in_missed_pixels_and_negative_in_false_positives():
    pred, gt = _masks(
        [".....", ".###.", ".###.", ".....", "....."],
        [".....", "..###", "..###", "..###", "....."],
    )
    missed = gt[0] & ~pred[0]
    wrong = pred[0] & ~gt[0]
    rng = np.random.default_rng(0)
    drawn = {POSITIVE: set(), NEGATIVE: set()}
    for _ in range(400):
        xy, labels = sample_clicks(pred, gt, rng)
        col, row = int(xy[0, 0]), int(xy[0, 1])
        assert xy[0, 0] == col and xy[0, 1] == row  # pixel indices (column, row)
        if labels[0] == POSITIVE:
            assert missed[row, col]
        else:
            assert labels[0] == NEGATIVE and wrong[row, col]
        drawn[int(labels[0])].add((row, col))
    # every error pixel gets drawn (uniform over the error region: 5 missed, 2 wrong pixels)
    assert drawn[POSITIVE] == set(zip(*np.nonzero(missed), strict=True))
    assert drawn[NEGATIVE] == set(zip(*np.nonzero(wrong), strict=True))


@pytest.mark.parametrize(
    "pred_rows, gt_rows, expected",
    [
        ([".#.", "...", "..."], [".#.", "...", "..."], NO_CLICK),  # no error: no click
        (["...", "...", "..."], ["...", ".#.", "..."], POSITIVE),  # only missed pixels
        (["##.", "...", "..."], ["...", "...", "..."], NEGATIVE),  # only false positives
    ],
)
def test_click_label_follows_the_kind_of_error(pred_rows, gt_rows, expected):
    pred, gt = _masks(pred_rows, gt_rows)
    xy, labels = sample_clicks(np.concatenate([pred, pred]), np.concatenate([gt, gt]), np.random.default_rng(3))
    assert labels.tolist() == [expected, expected]
    if expected == NO_CLICK:
        assert xy.tolist() == [[0, 0], [0, 0]]


def test_clicks_refuse_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(N, h, w\) bool arrays"):
        sample_clicks(np.zeros((1, 3, 3), bool), np.zeros((1, 3, 4), bool), np.random.default_rng(0))
