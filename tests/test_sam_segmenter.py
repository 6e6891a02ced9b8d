from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.sam import Segmenter, Upsampler
from pipeline.types import CropMask, Instances
from tests.checkpoints import make_sam_checkpoint


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
    assert np.array_equal(crop.full(hw), (up.full(logits) > 0).numpy())


def test_upsampler_empty_logits_give_empty_mask():
    assert Upsampler((50, 60))(torch.full((256, 256), -1.0)).shape == (0, 0)


@pytest.fixture(scope="module")
def mobile_sam(tmp_path_factory):
    return make_sam_checkpoint(tmp_path_factory.mktemp("w") / "mobile_sam.pt", mask_logit=8.0, score=0.9)


def test_real_mobile_sam_one_encoding_all_boxes_in_order(mobile_sam):
    """Real Ultralytics SAM code on a random checkpoint rigged to answer 'whole image, score 0.9'."""
    seg = Segmenter(str(mobile_sam), device="cpu", batch=2)  # 5 boxes -> 3 decoder calls
    encodes = []
    original = seg.predictor.get_im_features
    seg.predictor.get_im_features = lambda im: encodes.append(im.shape) or original(im)
    rgb = np.random.default_rng(0).integers(0, 255, (120, 200, 3), dtype=np.uint8)
    kept = CropMask(np.ones((2, 2), bool), x0=5, y0=5)
    inst = Instances(
        xyxy=[
            [0, 0, 50, 50],
            [10, 10, 20, 30],
            [100, 50, 199, 119],
            [5, 5, 6, 6],
            [0, 0, 200, 120],
            [1, 1, 3, 3],
        ],
        class_id=[2, 0, 1, 1, 0, 2],
        masks=(None, None, None, None, None, kept),  # an instance that already has a mask is left alone
        source_id=[10, 11, 12, 13, 14, 15],
    )
    out = seg(rgb, inst)
    assert encodes == [(1, 3, 1024, 1024)]  # one image-encoder pass for all boxes
    assert out.class_id.tolist() == inst.class_id.tolist() and out.source_id.tolist() == inst.source_id.tolist()
    for m in out.masks[:5]:
        assert m.xyxy == (0, 0, 200, 120) and m.bits.all()
    assert out.masks[5] is kept
    assert np.allclose(out.mask_score[:5], 0.9, atol=1e-5) and np.isnan(out.mask_score[5])


def test_segmenter_skips_images_with_nothing_to_segment(mobile_sam):
    seg = Segmenter(str(mobile_sam), device="cpu")
    seg.predictor.get_im_features = lambda im: pytest.fail("encoded an image with nothing to segment")
    inst = Instances(xyxy=[[0, 0, 2, 2]], class_id=[0], masks=(CropMask(np.ones((1, 1), bool)),))
    assert seg(np.zeros((10, 10, 3), np.uint8), inst) is inst
    assert seg(np.zeros((10, 10, 3), np.uint8), Instances.empty()).masks == ()


@pytest.mark.slow
def test_real_sam2_tiny(tmp_path):
    seg = Segmenter(str(make_sam_checkpoint(tmp_path / "sam2_t.pt", score=0.8)), device="cpu")
    out = seg(np.zeros((90, 160, 3), np.uint8), Instances(xyxy=[[0, 0, 80, 80], [50, 10, 150, 80]], class_id=[1, 0]))
    assert all(m.bits.all() and m.xyxy == (0, 0, 160, 90) for m in out.masks)
    assert np.allclose(out.mask_score, 0.8, atol=1e-4)
