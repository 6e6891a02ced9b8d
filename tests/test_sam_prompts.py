"""The prompt API (set_image once, predict many): every prompt kind on both runtimes, answers that follow the prompt."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.sam import Prediction, Segmenter
from pipeline.sam.prompts import Prompts, input_scale, prepare_prompts
from tests.helpers import assert_mask_matches_logits

HW = (480, 640)
POINTS = np.array([[[100, 120], [300, 200]], [[500, 400], [50, 60]], [[320, 240], [600, 50]]], float)
LABELS = np.array([[1, 0], [1, 1], [0, 1]])
BOXES = np.array([[10, 20, 200, 300], [300, 100, 600, 470], [0, 0, 640, 480]], float)


def _kinds(earlier: torch.Tensor) -> dict[str, dict]:
    """predict() keyword arguments of each prompt kind; ``earlier`` are low-res logits (3, 256, 256) to feed back."""
    return {
        "points": dict(points=POINTS, point_labels=LABELS),
        "box+points": dict(boxes=BOXES, points=POINTS[:, :1], point_labels=LABELS[:, :1]),
        "points+mask": dict(points=POINTS, point_labels=LABELS, mask_input=earlier),
        "box+mask": dict(boxes=BOXES, mask_input=earlier),
        "multimask": dict(points=POINTS[:, :1], point_labels=np.ones((3, 1)), multimask=True),
        "box multimask": dict(boxes=BOXES, multimask=True),
        "boxes": dict(boxes=BOXES),  # the ONNX box decoder's fast path
    }


KINDS = list(_kinds(torch.zeros(3, 256, 256)))


@pytest.fixture(scope="module")
def segmenters(plain_mobile_sam, sam_cache):
    return {
        "torch": Segmenter(plain_mobile_sam, device="cpu", runtime="torch"),
        "onnx": Segmenter(plain_mobile_sam, device="cpu", runtime="onnx", cache_dir=sam_cache),
    }


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).integers(0, 255, (*HW, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def embedding(segmenters, image):
    """The torch encoder's embedding: both runtimes decode the same features, so the decoders are compared."""
    return segmenters["torch"].set_image(image)


@pytest.fixture(scope="module")
def kinds(segmenters, embedding):
    earlier = segmenters["torch"].predict(embedding, points=POINTS, point_labels=LABELS).logits[:, 0]
    return _kinds(earlier)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else np.logical_and(a, b).sum() / union


@pytest.mark.parametrize("kind", KINDS)
def test_onnx_answers_as_torch(segmenters, embedding, kinds, kind):
    ref, fast = (segmenters[r].predict(embedding, **kinds[kind]) for r in ("torch", "onnx"))
    k = 3 if "multimask" in kind else 1
    assert ref.logits.shape == fast.logits.shape == (3, k, 256, 256) and ref.scores.shape == fast.scores.shape == (3, k)
    assert ref.logits.dtype == fast.logits.dtype == torch.float32 and fast.scores.dtype == np.float32
    assert (ref.logits - fast.logits).abs().max() < 1e-4
    assert np.abs(ref.scores - fast.scores).max() < 1e-4
    for i in range(3):
        for j in range(k):
            assert _iou(ref.mask(i, j).full(HW), fast.mask(i, j).full(HW)) >= 0.999


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
@pytest.mark.parametrize("kind", KINDS)
def test_each_prompt_answered_on_its_own(segmenters, embedding, kinds, kind, runtime):
    """Prompts decoded together = each decoded alone, and different prompts get different answers:
    a dropped, repeated or permuted prompt fails."""
    seg, kw = segmenters[runtime], kinds[kind]
    together = seg.predict(embedding, **kw)
    for i in range(3):
        alone = seg.predict(
            embedding, **{k: v[i : i + 1] if isinstance(v, (np.ndarray, torch.Tensor)) else v for k, v in kw.items()}
        )
        assert (alone.logits[0] - together.logits[i]).abs().max() < 1e-4
        assert np.abs(alone.scores[0] - together.scores[i]).max() < 1e-5
    for i, j in [(0, 1), (1, 2), (0, 2)]:
        assert (together.logits[i] - together.logits[j]).abs().max() > 0.1
        assert np.abs(together.scores[i] - together.scores[j]).min() > 1e-3


def test_mask_input_changes_the_answer(segmenters, embedding, kinds):
    seg = segmenters["torch"]
    with_mask = seg.predict(embedding, **kinds["points+mask"])
    without = seg.predict(embedding, points=POINTS, point_labels=LABELS)
    assert (with_mask.logits - without.logits).abs().max() > 0.1


def test_end_to_end_masks_agree_across_runtimes(segmenters, image):
    """Each runtime with its own encoder: the image-size masks of a box + point prompt agree."""
    preds = [
        seg.predict(seg.set_image(image), boxes=BOXES, points=POINTS[:, :1], point_labels=LABELS[:, :1])
        for seg in segmenters.values()
    ]
    assert (preds[0].logits - preds[1].logits).abs().max() < 1e-2
    for i in range(3):
        assert _iou(preds[0].mask(i).full(HW), preds[1].mask(i).full(HW)) >= 0.99


def test_prediction_masks_at_other_thresholds(segmenters, embedding):
    pred = segmenters["torch"].predict(embedding, boxes=BOXES)
    assert isinstance(pred, Prediction) and len(pred) == 3
    for i in range(3):
        hi, mid, lo = pred.masks_at(i, (pred.threshold + 1.0, pred.threshold, pred.threshold - 1.0))
        assert mid.area == pred.mask(i).area and hi.area <= mid.area <= lo.area and lo.area > 0
        full_hi, full_lo = hi.full(HW), lo.full(HW)
        assert not (full_hi & ~full_lo).any()  # the +1 mask lies inside the -1 mask: stability = hi.area / lo.area
        up = pred.upsampler.full(pred.logits[i, 0])
        assert_mask_matches_logits(full_lo, up, pred.threshold - 1.0)
    assert [m.area for m in pred.masks()] == [pred.mask(i).area for i in range(3)]


def test_no_prompts_give_an_empty_prediction(segmenters, embedding):
    pred = segmenters["onnx"].predict(embedding, boxes=np.zeros((0, 4)), multimask=True)
    assert pred.logits.shape == (0, 3, 256, 256) and pred.scores.shape == (0, 3) and pred.masks() == []


def test_an_embedding_of_another_model_is_refused(segmenters, embedding):
    import dataclasses

    other = dataclasses.replace(embedding, arch="sam2_t")
    with pytest.raises(ValueError, match="expected an ImageEmbedding from this mobile_sam segmenter, got sam2_t"):
        segmenters["torch"].predict(other, boxes=BOXES)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "expected boxes or points (mask_input refines one of them), got no prompt"),
        ({"mask_input": np.zeros((1, 256, 256))}, "got mask_input alone"),
        ({"boxes": np.zeros((2, 5))}, "boxes: expected shape (N, 4), got (2, 5)"),
        ({"boxes": [1, 2, 3, 4]}, "boxes: expected shape (N, 4), got (4,)"),
        ({"boxes": [[0, 0, np.nan, 1]]}, "boxes: expected finite values"),
        ({"boxes": [["a", 0, 1, 1]]}, "boxes: expected a float array of shape (N, 4), got list"),
        ({"points": np.zeros((2, 2))}, "points: expected shape (N, P, 2), got (2, 2)"),
        ({"points": np.zeros((2, 0, 2)), "point_labels": np.zeros((2, 0))}, "at least one point per prompt"),
        ({"points": np.zeros((2, 3, 2))}, "point_labels: expected int (N, P) with points"),
        ({"points": np.zeros((2, 3, 2)), "point_labels": np.ones(3)}, "point_labels: expected shape (2, 3)"),
        ({"points": np.zeros((1, 2, 2)), "point_labels": [[1, 2]]}, "expected 1 (positive), 0 (negative) or -1"),
        ({"boxes": np.zeros((1, 4)), "point_labels": [[1]]}, "point_labels: expected None without points"),
        (
            {"boxes": np.zeros((2, 4)), "points": np.zeros((3, 1, 2)), "point_labels": np.ones((3, 1))},
            "same number of prompts N in every argument, got 2 boxes, 3 points",
        ),
        (
            {"boxes": np.zeros((2, 4)), "mask_input": np.zeros((2, 1, 256, 256))},
            "mask_input: expected shape (N, 256, 256), got (2, 1, 256, 256)",
        ),
    ],
)
def test_bad_prompts_say_expected_and_got(kwargs, message):
    with pytest.raises(ValueError) as e:
        prepare_prompts(HW, **kwargs)
    assert message in str(e.value)


def test_bad_multimask_value(segmenters, embedding):
    with pytest.raises(ValueError, match="multimask: expected True or False, got 3"):
        segmenters["torch"].predict(embedding, boxes=BOXES, multimask=3)


def test_prompts_in_encoder_input_pixels():
    r = input_scale(HW)
    assert r == 1.6  # 1024 / 640
    p = prepare_prompts(HW, boxes=BOXES, points=POINTS[:, :1], point_labels=LABELS[:, :1])
    assert torch.equal(p.boxes, torch.tensor(BOXES, dtype=torch.float32) * r)
    assert p.labels.dtype == torch.int32 and p.n == 3 and not p.box_only


def test_box_corners_and_padding_as_points():
    """SAM-1 order: points, then corners (labels 2, 3), padding point (-1) only without a box; SAM2: corners first."""
    pts, labels = torch.tensor([[[1.0, 2.0]]]), torch.tensor([[1]], dtype=torch.int32)
    box = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    coords, lab = Prompts(boxes=box, points=pts, labels=labels).as_points(box_first=False, pad=True)
    assert coords.tolist() == [[[1, 2], [10, 20], [30, 40]]] and lab.tolist() == [[1, 2, 3]]
    coords, lab = Prompts(boxes=box, points=pts, labels=labels).as_points(box_first=True, pad=False)
    assert coords.tolist() == [[[10, 20], [30, 40], [1, 2]]] and lab.tolist() == [[2, 3, 1]]
    coords, lab = Prompts(points=pts, labels=labels).as_points(box_first=False, pad=True)
    assert coords.tolist() == [[[1, 2], [0, 0]]] and lab.tolist() == [[1, -1]]
