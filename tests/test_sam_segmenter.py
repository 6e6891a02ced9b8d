"""The SAM stage on real Ultralytics SAM code: one encoding per image, every box answered by its own prompt."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.sam import Segmenter, Upsampler
from pipeline.types import CropMask, Instances
from tests.checkpoints import make_plain_sam_checkpoint, make_sam_checkpoint
from tests.helpers import assert_mask_matches_logits


@pytest.mark.parametrize("hw", [(480, 640), (640, 480), (333, 517), (8, 8), (37, 1500), (1023, 1025)])
def test_upsampler_matches_ultralytics_postprocess(hw):
    """Same logits and masks as Ultralytics' SAM postprocess (scale_masks), incl. its mid-pixel path."""
    from ultralytics.utils import ops

    h, w = hw
    logits = torch.randn(4, 256, 256, generator=torch.Generator().manual_seed(0)) * 3 - 1
    gain = min(1024 / h, 1024 / w)
    ratio = [round(o * gain) * 256 / 1024 / o for o in hw]
    ref = ops.scale_masks(logits[None], hw, (ratio, (0, 0)), padding=False)[0]
    up = Upsampler(hw)
    for k in range(len(logits)):
        assert (up.full(logits[k]) - ref[k]).abs().max() < 1e-3
        mine, theirs = up(logits[k]).full(hw), (ref[k] > 0).numpy()
        assert np.logical_and(mine, theirs).sum() / np.logical_or(mine, theirs).sum() >= 0.999


def test_upsampler_window_is_exact_for_a_small_object():
    """A blob in one corner: the windowed mask equals the full-image computation, and is small."""
    hw = (4000, 6000)
    logits = torch.full((256, 256), -5.0)
    logits[10:14, 20:25] = 4.0
    up = Upsampler(hw)
    crop = up(logits)
    assert crop.shape[0] * crop.shape[1] < 200 * 200  # not 24 megapixels
    assert_mask_matches_logits(crop.full(hw), up.full(logits), 0.0)


def test_upsampler_empty_logits_give_empty_mask():
    up, logits = Upsampler((50, 60)), torch.full((256, 256), -1.0)
    assert up(logits).shape == (0, 0)
    assert [m.shape for m in up.at_thresholds(logits, (0.0, 1.0))] == [(0, 0), (0, 0)]


@pytest.mark.parametrize("hw", [(480, 640), (1000, 1500)])
def test_upsampler_thresholds_from_one_window(hw):
    """Each mask of at_thresholds is the full-image computation thresholded there; one threshold = __call__."""
    logits = torch.randn(256, 256, generator=torch.Generator().manual_seed(1)) * 2 - 3
    up = Upsampler(hw)
    full = up.full(logits)
    thresholds = (1.0, 0.0, -1.0, 5.0)
    for t, mask in zip(thresholds, up.at_thresholds(logits, thresholds), strict=True):
        assert_mask_matches_logits(mask.full(hw), full, t)
    single = up.at_thresholds(logits, (0.0,))[0]
    assert (single.xyxy, single.area) == (up(logits).xyxy, up(logits).area)
    with pytest.raises(ValueError, match="at least one threshold"):
        up.at_thresholds(logits, ())


def _stability_as_separate_calls(up: Upsampler, logits: torch.Tensor, t: float) -> float:
    from pipeline.quality import stability_score

    return stability_score(*up.at_thresholds(logits, (t + 1.0, t - 1.0)))


@pytest.mark.parametrize("profile", ["ultralytics", "medsam"])
@pytest.mark.parametrize(
    "case",
    [
        "random",  # windows of t and t - 1 differ: two products, as two calls make them
        "flat",  # every logit 8: the same window, one product serves both
        "band",  # logits in (t - 1, t] only: an empty mask, a stability window
        "negative",  # nothing above t - 1: empty mask, stability 1
    ],
)
def test_mask_and_stability_equal_the_separate_calls_exactly(case, profile):
    """The SAM stage's one call gives the same bits as ``__call__`` and the same score as ``at_thresholds``."""
    from pipeline.sam.profiles import MEDSAM, ULTRALYTICS

    g = torch.Generator().manual_seed(2)
    logits = {
        "random": torch.randn(256, 256, generator=g) * 3 - 2,
        "flat": torch.full((256, 256), 8.0),
        "band": torch.full((256, 256), -0.5),
        "negative": torch.full((256, 256), -3.0),
    }[case]
    hw = (333, 517)
    up = Upsampler(hw, profile=MEDSAM if profile == "medsam" else ULTRALYTICS)
    mask, stability = up.mask_and_stability(logits, 0.0)
    alone = up(logits, threshold=0.0)
    assert (mask.x0, mask.y0, mask.shape) == (alone.x0, alone.y0, alone.shape)
    assert np.array_equal(mask.bits, alone.bits)
    assert stability == _stability_as_separate_calls(up, logits, 0.0)
    assert 0.0 <= stability <= 1.0 and (case != "negative" or stability == 1.0)


def test_mask_and_stability_multiplies_once_when_the_windows_agree(monkeypatch):
    up = Upsampler((480, 640))
    products = []
    original = up._product
    monkeypatch.setattr(up, "_product", lambda *a: products.append(a[1:]) or original(*a))
    up.mask_and_stability(torch.full((256, 256), 8.0), 0.0)
    assert len(products) == 1
    logits = torch.full((256, 256), -3.0)
    logits[100:120, 100:120] = 4.0
    logits[99, 100:120] = -0.5  # above t - 1 only: the stability window is one low-res row taller
    products.clear()
    up.mask_and_stability(logits, 0.0)
    assert len(products) == 2 and products[0] != products[1]


def test_cpu_preprocess_is_ultralytics_bit_for_bit(plain_seg):
    """The encoder input made in numpy equals Ultralytics' ``Predictor.preprocess`` exactly (so do the masks)."""
    rng = np.random.default_rng(3)
    for hw in [(480, 640), (640, 480), (37, 1500), (1024, 1024)]:
        rgb = rng.integers(0, 255, (*hw, 3), dtype=np.uint8)
        theirs = plain_seg.reference.predictor.preprocess([np.ascontiguousarray(rgb[..., ::-1])])
        mine = plain_seg.reference.preprocess(rgb)
        assert mine.dtype == theirs.dtype and mine.is_contiguous()
        assert torch.equal(mine, theirs)


@pytest.fixture(scope="module")
def plain_seg(plain_mobile_sam):
    return Segmenter(plain_mobile_sam, device="cpu", batch=2)


def test_real_mobile_sam_one_encoding_each_box_its_own_answer(plain_seg):
    """6 boxes, 5 without a mask -> 3 decoder calls of 2; each mask and score is its own box's (a permuted,
    dropped or repeated box would fail: different boxes get different answers)."""
    seg = plain_seg
    encodes, embeddings = [], []
    original = seg.backend.encode
    seg.backend.encode = lambda im: encodes.append(tuple(im.shape)) or original(im)
    seg.set_image = lambda rgb: embeddings.append(Segmenter.set_image(seg, rgb)) or embeddings[-1]
    try:
        rgb = np.random.default_rng(0).integers(0, 255, (120, 200, 3), dtype=np.uint8)
        kept = CropMask(np.ones((2, 2), bool), x0=5, y0=5)
        xyxy = [[0, 0, 50, 50], [10, 10, 20, 30], [100, 50, 199, 119], [5, 5, 60, 90], [0, 0, 200, 120], [1, 1, 3, 3]]
        inst = Instances(
            xyxy=xyxy,
            class_id=[2, 0, 1, 1, 0, 2],
            masks=(None, None, None, None, None, kept),  # an instance that already has a mask is left alone
            source_id=[10, 11, 12, 13, 14, 15],
        )
        out = seg(rgb, inst)
        assert encodes == [(1, 3, 1024, 1024)]  # one image-encoder pass for all boxes
    finally:
        del seg.backend.encode, seg.set_image
    [emb] = embeddings
    assert out.class_id.tolist() == inst.class_id.tolist() and out.source_id.tolist() == inst.source_id.tolist()
    assert out.masks[5] is kept and np.isnan(out.mask_score[5])
    for i in range(5):
        alone = seg.predict(emb, boxes=[xyxy[i]])
        assert abs(alone.scores[0, 0] - out.mask_score[i]) < 1e-5
        a, b = alone.mask(0).full((120, 200)), out.masks[i].full((120, 200))
        assert np.logical_and(a, b).sum() >= 0.99 * np.logical_or(a, b).sum()
    scores = out.mask_score[:5]
    assert np.abs(scores[:, None] - scores[None, :])[~np.eye(5, dtype=bool)].min() > 1e-3


def test_setup_happens_at_construction(plain_mobile_sam, monkeypatch):
    """Ultralytics' select_device (which sets torch's thread count) runs while the segmenter is built, not
    during an image; building leaves torch's thread count as it was."""
    import ultralytics.models.sam.predict as sam_predict

    calls = []
    real = sam_predict.select_device
    monkeypatch.setattr(sam_predict, "select_device", lambda *a, **k: calls.append(1) or real(*a, **k))
    before = torch.get_num_threads()
    seg = Segmenter(plain_mobile_sam, device="cpu")
    assert calls == [1] and torch.get_num_threads() == before
    seg(np.zeros((30, 40, 3), np.uint8), Instances(xyxy=[[0, 0, 10, 10]], class_id=[0]))
    assert calls == [1] and torch.get_num_threads() == before


def test_segmenter_skips_images_with_nothing_to_segment(plain_seg):
    plain_seg.backend.encode = lambda im: pytest.fail("encoded an image with nothing to segment")
    try:
        inst = Instances(xyxy=[[0, 0, 2, 2]], class_id=[0], masks=(CropMask(np.ones((1, 1), bool)),))
        assert plain_seg(np.zeros((10, 10, 3), np.uint8), inst) is inst
        assert plain_seg(np.zeros((10, 10, 3), np.uint8), Instances.empty()).masks == ()
    finally:
        del plain_seg.backend.encode


def test_bad_image_is_a_value_error(plain_seg):
    with pytest.raises(ValueError, match=r"rgb: expected a uint8 \(H, W, 3\) image, got float64 \(4, 4\)"):
        plain_seg.set_image(np.zeros((4, 4)))


@pytest.mark.slow
def test_real_sam2_tiny(tmp_path):
    seg = Segmenter(str(make_sam_checkpoint(tmp_path / "sam2_t.pt", score=0.8)), device="cpu")
    out = seg(np.zeros((90, 160, 3), np.uint8), Instances(xyxy=[[0, 0, 80, 80], [50, 10, 150, 80]], class_id=[1, 0]))
    assert all(m.bits.all() and m.xyxy == (0, 0, 160, 90) for m in out.masks)
    assert np.allclose(out.mask_score, 0.8, atol=1e-4)


@pytest.mark.slow
def test_sam2_prompts_on_torch_and_features_of_an_outside_encoder(tmp_path):
    """SAM2: the prompt API on PyTorch (points, box + points, mask input, multimask); ``features()`` of the raw
    encoder output equals Ultralytics' get_im_features (what the ONNX encoder's output goes through)."""
    seg = Segmenter(make_plain_sam_checkpoint(tmp_path / "sam2_t.pt"), device="cpu")
    rgb = np.random.default_rng(0).integers(0, 255, (90, 160, 3), dtype=np.uint8)
    emb = seg.set_image(rgb)
    with torch.inference_mode():
        ref = seg.reference
        image = ref.preprocess(rgb)
        mine, theirs = ref.features(ref.image_encoder(image)), ref.predictor.get_im_features(image)
    # two code paths: equal up to float rounding (other CPUs round the last bits differently)
    torch.testing.assert_close(mine["image_embed"], theirs["image_embed"], rtol=0, atol=1e-5)
    for a, b in zip(mine["high_res_feats"], theirs["high_res_feats"], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    points, labels = np.array([[[20.0, 30.0]], [[120.0, 60.0]]]), np.array([[1], [1]])
    boxes = np.array([[0, 0, 80, 80], [50, 10, 150, 80]], float)
    multi = seg.predict(emb, points=points, point_labels=labels, multimask=True)
    assert multi.logits.shape == (2, 3, 256, 256) and multi.scores.shape == (2, 3)
    both = seg.predict(emb, boxes=boxes, points=points, point_labels=labels)
    again = seg.predict(emb, boxes=boxes, points=points, point_labels=labels, mask_input=both.logits[:, 0])
    assert both.logits.shape == again.logits.shape == (2, 1, 256, 256)
    alone = seg.predict(emb, boxes=boxes[1:], points=points[1:], point_labels=labels[1:])
    assert (alone.logits[0] - both.logits[1]).abs().max() < 1e-4 and (both.logits[0] - both.logits[1]).abs().max() > 0.1
    assert (again.logits - both.logits).abs().max() > 0.1
