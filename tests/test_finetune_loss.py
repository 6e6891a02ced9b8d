"""SAM's training loss on hand-made masks: exact values for simple cases."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.finetune.loss import dice_loss, focal_loss, mask_iou, sam_loss

LN2 = math.log(2)


def _t(rows: list[str]) -> torch.Tensor:
    return torch.tensor([[1.0 if c == "#" else 0.0 for c in r] for r in rows])[None]


TARGET = _t([".....", ".###.", ".###.", ".....", "....."])


def test_a_perfect_prediction_costs_nothing():
    logits = torch.where(TARGET > 0, 30.0, -30.0)
    assert dice_loss(logits, TARGET).item() == pytest.approx(0.0, abs=1e-6)
    assert focal_loss(logits, TARGET).item() == pytest.approx(0.0, abs=1e-12)
    terms = sam_loss(logits, torch.tensor([1.0]), TARGET)
    assert terms.true_iou.item() == 1.0
    assert terms.total.item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(
    "target, alpha, expected",
    [
        (1.0, None, 0.25 * LN2),  # p = 0.5 on an object pixel: (1 - 0.5)^2 x ln 2
        (0.0, None, 0.25 * LN2),  # the same on a background pixel (no alpha: symmetric)
        (1.0, 0.25, 0.25 * 0.25 * LN2),  # alpha-balanced (SAM 2's code): object pixels weigh 0.25
        (0.0, 0.25, 0.75 * 0.25 * LN2),  # and background pixels 0.75
    ],
)
def test_focal_loss_of_an_undecided_prediction(target, alpha, expected):
    t = torch.full((1, 4, 4), target)
    assert focal_loss(torch.zeros(1, 4, 4), t, alpha=alpha).item() == pytest.approx(expected, rel=1e-6)


def test_focal_loss_is_the_mean_over_pixels_of_the_formula():
    logits = torch.tensor([[[2.0, -1.0], [0.5, -3.0]]])
    target = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    expected = 0.0
    for x, t in zip(logits.flatten().tolist(), target.flatten().tolist(), strict=True):
        p = 1 / (1 + math.exp(-x))
        p_t = p if t else 1 - p
        expected += (1 - p_t) ** 2 * -math.log(p_t)
    assert focal_loss(logits, target).item() == pytest.approx(expected / 4, rel=1e-6)


def test_focal_loss_of_a_confident_mistake():
    # logit 3 on a background pixel: p = sigmoid(3), (1 - p_t)^2 = p^2, BCE = log(1 + e^3)
    p = 1 / (1 + math.exp(-3))
    expected = p**2 * math.log(1 + math.exp(3))
    assert focal_loss(torch.full((1, 1, 1), 3.0), torch.zeros(1, 1, 1)).item() == pytest.approx(expected, rel=1e-6)


def test_dice_loss_values():
    # p = 0.5 everywhere on a 2 x 2 grid with one object pixel: 1 - (2 x 0.5 + 1) / (2 + 1 + 1) = 0.5
    assert dice_loss(torch.zeros(1, 2, 2), _t(["#.", ".."])).item() == pytest.approx(0.5)
    # nothing predicted where nothing is: (0 + 1) / (0 + 0 + 1) -> 0
    assert dice_loss(torch.full((1, 3, 3), -40.0), torch.zeros(1, 3, 3)).item() == pytest.approx(0.0, abs=1e-6)
    # everything predicted, nothing there: 1 - 1 / (9 + 1) = 0.9
    assert dice_loss(torch.full((1, 3, 3), 40.0), torch.zeros(1, 3, 3)).item() == pytest.approx(0.9)


def test_iou_of_the_thresholded_prediction_and_the_mse_term():
    pred = _t(["##...", "##...", ".....", ".....", "....."]) * 2 - 1  # logits: 4 pixels on (rows 0-1, cols 0-1)
    inter, union = 1, 4 + 6 - 1  # TARGET's 6 pixels (rows 1-2, cols 1-3) share pixel (1, 1)
    assert mask_iou(pred, TARGET).item() == pytest.approx(inter / union)
    assert mask_iou(torch.full((1, 2, 2), -1.0), torch.zeros(1, 2, 2)).item() == 1.0  # both empty
    terms = sam_loss(pred, torch.tensor([0.5]), TARGET)
    assert terms.iou_mse.item() == pytest.approx((0.5 - inter / union) ** 2)
    expected = 20 * terms.focal + terms.dice + terms.iou_mse
    assert terms.total.item() == pytest.approx(expected.item())


def test_soft_targets_weigh_cells_by_coverage():
    logits = torch.tensor([[[5.0, 5.0]]])
    target = torch.tensor([[[1.0, 0.5]]])
    # IoU: intersection 1 + 0.5, union 2 + 1.5 - 1.5
    assert mask_iou(logits, target).item() == pytest.approx(1.5 / 2)


def test_sam_loss_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="expected logits and target"):
        sam_loss(torch.zeros(2, 4, 4), torch.zeros(2), torch.zeros(2, 4, 5))
