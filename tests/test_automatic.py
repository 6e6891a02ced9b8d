"""SAM's automatic mask generator (``--mode everything``): post-processing on hand-made masks and logits with
exact keeps, a rigged SAM whose answer depends on the point, and the mode end to end on a random-weight MobileSAM."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pipeline.config import GeneratorOptions, load_settings
from pipeline.errors import SamlabelError
from pipeline.masks import CropMask
from pipeline.sam.automatic import (
    MaskGenerator,
    Resampler,
    StabilityBound,
    Survivors,
    box_nms,
    clean_regions,
    crop_boxes,
    merge_crops,
    near_crop_edge,
    point_grid,
    remove_small_regions,
    select_candidates,
)
from pipeline.sam.segmenter import Prediction
from pipeline.sam.upsample import Upsampler
from pipeline.types import Instances

L = 16  # low-res logit side of the hand-made cases; a 64 x 64 image is exactly 4 x 4 pixels per logit
HW = (64, 64)


def _logits(cells: list[tuple[int, int, int, int]], inside: float = 10.0, outside: float = -10.0) -> torch.Tensor:
    """(L, L) logits: ``inside`` on the low-res cells (r0, c0, r1, c1) (exclusive ends), ``outside`` elsewhere."""
    out = torch.full((L, L), outside)
    for r0, c0, r1, c1 in cells:
        out[r0:r1, c0:c1] = inside
    return out


def _mask(hw, x0, y0, x1, y1) -> CropMask:
    full = np.zeros(hw, dtype=bool)
    full[y0:y1, x0:x1] = True
    return CropMask.from_full(full)


def _found(masks: list[CropMask], scores) -> Instances:
    n = len(masks)
    return Instances(
        xyxy=np.array([m.xyxy for m in masks], np.float32).reshape(n, 4),
        class_id=np.zeros(n),
        masks=tuple(masks),
        mask_score=np.asarray(scores, np.float32),
        extras={"stability_score": np.ones(n), "point_xy": np.zeros((n, 2))},
    )


# ---------------------------------------------------------------------------------------------- geometry
def test_point_grid_is_cell_centres_row_by_row():
    assert point_grid(2).tolist() == [[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]]


def test_crop_boxes_tile_with_overlap():
    # 100 x 200 image, one layer: overlap int(0.5 * 100 * 2 / 2) = 50; crops ceil((50 + 200) / 2) = 125 wide
    # and ceil((50 + 100) / 2) = 75 high, starting every 125 - 50 = 75 and 75 - 50 = 25 pixels
    assert crop_boxes((100, 200), 1, 0.5) == [
        ((0, 0, 200, 100), 0),
        ((0, 0, 125, 75), 1),
        ((0, 25, 125, 100), 1),
        ((75, 0, 200, 75), 1),
        ((75, 25, 200, 100), 1),
    ]
    assert crop_boxes((100, 200), 0, 0.5) == [((0, 0, 200, 100), 0)]


def test_box_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array(
        [
            [0, 0, 10, 10],  # 0: kept (0.9)
            [1, 0, 11, 10],  # 1: IoU 90 / 110 = 0.82 with 0 > 0.7: dropped
            [0, 0, 10, 5],  # 2: IoU 0.5 with 0: kept
            [20, 20, 30, 30],  # 3: best score, first
            [20, 20, 30, 30],  # 4: the same box and score as 3: the first of a tie stays
        ]
    )
    assert box_nms(boxes, np.array([0.9, 0.8, 0.7, 0.95, 0.95]), 0.7).tolist() == [3, 0, 2]
    assert box_nms(boxes, np.array([0.9, 0.8, 0.7, 0.95, 0.95]), 0.9).tolist() == [3, 0, 1, 2]


@pytest.mark.parametrize(
    ("box", "near"),
    [
        ((105, 50, 150, 100), True),  # 5 px from the crop's left edge, which is inside the image
        ((150, 0, 250, 100), False),  # on the crop's top edge, which is the image's too
        ((150, 50, 285, 100), True),  # 15 px from the crop's right edge
        ((150, 50, 270, 100), False),  # 30 px from every crop edge
    ],
)
def test_near_crop_edge_ignores_the_image_edge(box, near):
    assert near_crop_edge(np.array([box]), (100, 0, 300, 200), (200, 400)).tolist() == [near]


# ---------------------------------------------------------------------------------------------- candidates
def test_thresholds_keep_confident_stable_nonempty_masks():
    up = Upsampler(HW, lowres=L)
    logits = torch.stack(
        [
            _logits([(2, 2, 6, 6)]),  # 0: sharp and confident: kept
            _logits([(2, 2, 6, 6)]),  # 1: sharp but predicted IoU 0.80 <= 0.88: dropped
            _logits([(2, 2, 6, 6)], inside=0.5, outside=-0.5),  # 2: soft: nothing above +1, stability 0: dropped
            _logits([]),  # 3: empty: dropped
            _logits([(8, 8, 12, 12)]),  # 4: predicted IoU exactly 0.88 (not above): dropped
            _logits([(8, 8, 12, 14)]),  # 5: kept
        ]
    )
    scores = np.array([0.95, 0.80, 0.99, 0.99, 0.88, 0.9])
    points = np.arange(12, dtype=float).reshape(6, 2)
    out = select_candidates(
        logits, scores, points, upsampler=up, threshold=0.0, options=GeneratorOptions(), crop=(0, 0, 64, 64), hw=HW
    )
    assert out.extras["point_xy"].tolist() == [[0, 1], [10, 11]]
    # bilinear x4 puts the 0-level on the cells' edges: the masks are the cells' pixels, less the 4 corner pixels
    # (0.625^2 of their mix is inside: 0.39 * 10 - 0.61 * 10 < 0)
    assert [m.xyxy for m in out.masks] == [(8, 8, 24, 24), (32, 32, 56, 48)]
    assert out.xyxy.tolist() == [[8, 8, 24, 24], [32, 32, 56, 48]]
    assert out.masks[0].area == 16 * 16 - 4
    fulls = [up.full(logits[i]).numpy() for i in (0, 5)]  # the stability at image resolution, as defined
    assert out.extras["stability_score"].tolist() == [(f > 1).sum() / (f > -1).sum() for f in fulls]
    assert out.mask_score.tolist() == pytest.approx([0.95, 0.9])


def test_stability_is_measured_at_image_resolution():
    # a ramp: logit 4 - col over the image's low-res columns; the mask at +1 and at -1 differ by 2 logits = 2 cells
    up = Upsampler(HW, lowres=L)
    ramp = (4.0 - torch.arange(L, dtype=torch.float32))[None, :].expand(L, L).contiguous()
    full = up.full(ramp).numpy()
    exact = (full > 1).sum() / (full > -1).sum()
    for thresh, kept in [(exact, 1), (exact + 1e-6, 0)]:
        out = select_candidates(
            ramp[None],
            np.array([0.99]),
            np.zeros((1, 2)),
            upsampler=up,
            threshold=0.0,
            options=GeneratorOptions(stability_thresh=float(thresh)),
            crop=(0, 0, 64, 64),
            hw=HW,
        )
        assert len(out) == kept
    assert out is not None


@pytest.mark.parametrize("hw", [(64, 64), (50, 70), (33, 17)])
def test_the_low_res_bound_never_drops_a_mask_that_would_pass(hw):
    """The cheap bound may keep a candidate that fails, never drop one that passes (exact stability at image size)."""
    up = Upsampler(hw, lowres=L)
    bound = StabilityBound(up)
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.randn(300, 1, 4, 4, generator=g), size=(L, L), mode="bilinear")[:, 0]
    logits = smooth * torch.linspace(1, 12, 300)[:, None, None] + 0.5
    may = bound.may_pass(logits, 0.0, 1.0, 0.9)
    exact = []
    for x in logits:
        full = up.full(x).numpy()
        lo = (full > -1).sum()
        exact.append(lo > 0 and (full > 1).sum() / lo >= 0.9)
    exact = np.array(exact)
    assert exact.any() and (~may).any()  # both kinds occur
    assert not (exact & ~may).any()


@pytest.mark.parametrize("profile", ["ULTRALYTICS", "SEGMENT_ANYTHING", "MEDSAM"])
@pytest.mark.parametrize("hw", [(64, 64), (50, 70), (333, 170)])
def test_the_resampler_gives_the_upsamplers_masks(hw, profile):
    """The few-taps resize equals the dense one up to float rounding (pixels within 1e-4 of a threshold aside)."""
    from pipeline.sam import profiles

    up = Upsampler(hw, profile=getattr(profiles, profile))  # SAM's 256 x 256 logits
    resampler = Resampler(up)
    g = torch.Generator().manual_seed(1)
    smooth = torch.nn.functional.interpolate(torch.randn(5, 1, 16, 16, generator=g), size=(256, 256), mode="bilinear")
    for logits in 4 * smooth[:, 0]:
        full = up.full(logits).numpy()
        t_full = [up.profile.upsample_threshold(t) for t in (0.0, 1.0, -1.0)]
        for (bits, x0, y0), t in zip(resampler.masks(logits, (0.0, 1.0, -1.0)), t_full, strict=True):
            placed = np.zeros(hw, dtype=bool)
            placed[y0 : y0 + bits.shape[0], x0 : x0 + bits.shape[1]] = bits
            differ = placed != (full > t)
            assert not differ.any() or np.abs(full[differ] - t).max() < 1e-4


@pytest.mark.parametrize("profile", ["ULTRALYTICS", "SEGMENT_ANYTHING", "MEDSAM"])
@pytest.mark.parametrize("hw", [(50, 70), (333, 170), (1080, 810)])
@pytest.mark.parametrize("outline", ["smooth", "ragged"])
@pytest.mark.parametrize("dense_share", [0.0, 1.0], ids=["whole-window", "unsure-pixels"])
def test_stable_mask_gives_the_resamplers_bits_and_areas(hw, profile, outline, dense_share, monkeypatch):
    """Computing only the pixels the span bounds leave unsure, or the whole window (what ``stable_mask`` picks
    by the share of unsure pixels, forced here both ways), gives exactly the bits and areas of
    :meth:`Resampler.masks` (the same sums in the same order)."""
    from pipeline.sam import automatic, profiles

    monkeypatch.setattr(automatic, "_DENSE_SHARE", dense_share)
    up = Upsampler(hw, profile=getattr(profiles, profile))
    resampler, bound = Resampler(up), StabilityBound(up)
    g = torch.Generator().manual_seed(2)
    side = 16 if outline == "smooth" else 128
    logits = 4 * torch.nn.functional.interpolate(torch.randn(4, 1, side, side, generator=g), size=(256, 256))[:, 0]
    if outline == "smooth":
        logits = torch.nn.functional.avg_pool2d(logits[:, None], 9, stride=1, padding=4)[:, 0]
    logits[-1] = -10.0  # nothing above any threshold
    values = bound.values(logits)
    lo, hi = bound.pooled(values)
    thresholds = (0.0, 1.0, -1.0)
    ts = [up.profile.upsample_threshold(t) for t in thresholds]
    for k, x in enumerate(logits):
        want = resampler.masks(x, thresholds)
        bits, x0, y0, areas = resampler.stable_mask(values[k], lo[k], hi[k], ts)
        assert areas == [int(np.count_nonzero(b)) for b, _, _ in want]
        assert np.array_equal(_placed(bits, x0, y0, hw), _placed(*want[0], hw))
    assert areas == [0, 0, 0] and bits.size == 0
    assert any(b.any() for b, _, _ in resampler.masks(logits[0], thresholds))  # a real test


def _placed(bits: np.ndarray, x0: int, y0: int, hw) -> np.ndarray:
    full = np.zeros(hw, dtype=bool)
    full[y0 : y0 + bits.shape[0], x0 : x0 + bits.shape[1]] = bits
    return full


def test_masks_at_a_crop_edge_are_dropped_unless_it_is_the_image_edge():
    # the crop (64, 0, 128, 64) of a 64 x 128 image: its left edge is inside the image, its others are the image's
    up = Upsampler(HW, lowres=L)
    logits = torch.stack(
        [
            _logits([(4, 0, 8, 4)]),  # 0: touches the crop's left edge: cut by the crop, dropped
            _logits([(4, 8, 8, 16)]),  # 1: touches the crop's right edge = the image's: kept
            _logits([(0, 6, 4, 10)]),  # 2: touches the top edge = the image's: kept
            _logits([(6, 6, 10, 10)]),  # 3: 24 px from the left edge: kept
        ]
    )
    out = select_candidates(
        logits,
        np.full(4, 0.95),
        np.zeros((4, 2)),
        upsampler=up,
        threshold=0.0,
        options=GeneratorOptions(),
        crop=(64, 0, 128, 64),
        hw=(64, 128),
    )
    assert [m.xyxy for m in out.masks] == [(96, 16, 128, 32), (88, 0, 104, 16), (88, 24, 104, 40)]


def test_nms_within_a_crop_then_the_smaller_crop_wins_across_crops():
    hw = (100, 100)
    full, small = (0, 0, 100, 100), (0, 0, 60, 60)
    a = _mask(hw, 10, 10, 40, 40)
    a_shifted = _mask(hw, 11, 10, 41, 40)  # IoU 29/31 with a
    b = _mask(hw, 50, 50, 90, 90)
    per_crop = [
        (_found([a, a_shifted, b], [0.9, 0.95, 0.9]), full),  # within the image crop: a_shifted beats a
        (_found([_mask(hw, 10, 10, 40, 39)], [0.89]), small),  # the same object, lower score, smaller crop: wins
    ]
    out = merge_crops(per_crop, GeneratorOptions())
    assert [m.xyxy for m in out.masks] == [(10, 10, 40, 39), (50, 50, 90, 90)]
    assert out.mask_score.tolist() == pytest.approx([0.89, 0.9])
    # one crop: no cross-crop step, score order
    out = merge_crops(per_crop[:1], GeneratorOptions())
    assert [m.xyxy for m in out.masks] == [(11, 10, 41, 40), (50, 50, 90, 90)]


def test_survivors_give_up_beaten_masks_and_get_back_the_rare_ones_nms_keeps():
    hw = (20, 20)
    a, b, c = _mask(hw, 5, 0, 15, 10), _mask(hw, 6, 0, 16, 10), _mask(hw, 4, 0, 14, 10)  # IoU a-b, a-c 0.8; b-c 0.64
    survivors = Survivors(0.7)
    survivors.add(_found([a, b], [0.9, 0.8]))
    assert [m is not None for m in survivors.masks] == [True, False]  # b is beaten by a: its mask goes
    survivors.add(_found([c], [0.95]))
    assert [m is not None for m in survivors.masks] == [False, False, True]  # a by c
    kept, missing = survivors.kept()
    # NMS: c suppresses a, and b, which only a overlapped, is kept: its mask must be decoded again
    assert kept.mask_score.tolist() == pytest.approx([0.95, 0.8]) and missing == [1]
    assert kept.masks[0] == c and kept.xyxy.tolist() == [list(c.xyxy), list(b.xyxy)]


def test_small_holes_and_islands_are_removed():
    hw = (20, 20)
    full = np.zeros(hw, dtype=bool)
    full[2:12, 2:12] = True
    full[5, 5] = False  # a 1-pixel hole: filled
    full[7:9, 7:10] = False  # a 6-pixel hole: kept at min_area 5
    full[15, 15:17] = True  # a 2-pixel island: removed
    full[2:4, 11] = False  # a notch open to the outside: background, not a hole
    mask = CropMask.from_full(full)
    out, changed = remove_small_regions(mask, 5, hw)
    expected = full.copy()
    expected[5, 5] = True
    expected[15, 15:17] = False
    assert changed and np.array_equal(out.full(hw), expected)
    same, changed = remove_small_regions(CropMask.from_full(expected), 5, hw)
    assert not changed and np.array_equal(same.full(hw), expected)


def test_a_small_background_strip_at_the_image_edge_is_a_hole_as_on_the_whole_image():
    # the mask's box spans the image's height and stops one column short of its right edge: the 10-pixel column
    # is a background region of its own, filled below min_area 11 (as segment-anything fills it on the full image)
    hw = (10, 10)
    full = np.ones(hw, dtype=bool)
    full[:, 9] = False
    out, changed = remove_small_regions(CropMask.from_full(full), 11, hw)
    assert changed and out.area == 100
    out, changed = remove_small_regions(CropMask.from_full(full), 10, hw)
    assert not changed and out.area == 90


def test_only_small_islands_keep_the_largest():
    hw = (20, 20)
    full = np.zeros(hw, dtype=bool)
    full[1:3, 1:3] = True  # 4 px
    full[10:12, 10:13] = True  # 6 px: the largest, kept
    out, changed = remove_small_regions(CropMask.from_full(full), 50, hw)
    assert changed and out.xyxy == (10, 10, 13, 12) and out.area == 6


def test_region_cleanup_prefers_the_masks_it_did_not_change():
    hw = (40, 40)
    ring = _mask(hw, 5, 5, 25, 25).full(hw)
    ring[14, 14] = False  # a 1-pixel hole: cleaning changes this mask
    solid = _mask(hw, 5, 5, 25, 24)  # nearly the same box, unchanged by cleaning
    found = _found([CropMask.from_full(ring), solid], [0.99, 0.9])
    out = clean_regions(found, GeneratorOptions(min_region_area=4), hw)
    assert [m.xyxy for m in out.masks] == [(5, 5, 25, 24)]
    assert len(clean_regions(found, GeneratorOptions(min_region_area=0), hw)) == 2


def test_options_are_checked():
    with pytest.raises(ValueError, match="pred_iou_thresh: expected a number in"):
        GeneratorOptions(pred_iou_thresh=1.5)
    with pytest.raises(ValueError, match="points_per_side: expected an integer >= 1"):
        GeneratorOptions(points_per_side=0)
    with pytest.raises(ValueError, match="crop layer 2 gets no points"):
        GeneratorOptions(points_per_side=2, crop_layers=2, crop_points_downscale=2)
    with pytest.raises(SamlabelError, match="stability_thresh"):
        load_settings(stability_thresh=-0.1)
    with pytest.raises(SamlabelError, match="mode: expected one of"):
        load_settings(mode="all")


# ---------------------------------------------------------------------------------------------- rigged SAM
#: Three flat rectangles (x0, y0, x1, y1) on a 64 x 64 background, on the 4-pixel grid of the low-res logits.
OBJECTS = [(4, 4, 24, 20), (32, 8, 60, 28), (8, 36, 40, 60)]


def _scene() -> np.ndarray:
    rgb = np.zeros((*HW, 3), dtype=np.uint8)
    for i, (x0, y0, x1, y1) in enumerate(OBJECTS):
        rgb[y0:y1, x0:x1] = 60 * (i + 1)
    return rgb


class PointSam:
    """A rigged SAM: a point's 3 candidates are the flat region under it (sharp, predicted IoU 0.95 for an object,
    0.5 for the background), the same region with soft logits (predicted IoU 0.99, unstable) and the whole image
    (predicted IoU 0.3)."""

    threshold = 0.0

    def __init__(self) -> None:
        self.encoded = 0
        self.prompts = 0

    def set_image(self, rgb):
        self.encoded += 1
        regions = torch.from_numpy(rgb[2::4, 2::4, 0].astype(np.int64))  # (L, L): one pixel per low-res cell
        return SimpleNamespace(upsampler=Upsampler(rgb.shape[:2], lowres=L), regions=regions)

    def predict(self, embedding, *, points, point_labels, multimask):
        assert multimask and np.all(point_labels == 1)
        self.prompts += len(points)
        logits, scores = [], []
        for ((x, y),) in points:
            region = embedding.regions == embedding.regions[int(y) // 4, int(x) // 4]
            sharp = torch.where(region, 100.0, -100.0)  # no image pixel mixes to within 1 of 0: stability 1
            logits.append(torch.stack([sharp, sharp / 200, torch.full((L, L), 10.0)]))
            scores.append([0.95 if embedding.regions[int(y) // 4, int(x) // 4] else 0.5, 0.99, 0.3])
        return Prediction(torch.stack(logits), np.array(scores, np.float32), 0.0, embedding.upsampler)


def test_rigged_sam_finds_exactly_the_objects():
    sam = PointSam()
    gen = MaskGenerator(sam, GeneratorOptions(points_per_side=8))
    out = gen(_scene())
    assert sorted(m.xyxy for m in out.masks) == sorted(OBJECTS)
    assert out.class_id.tolist() == [0, 0, 0] and out.source_id.tolist() == [0, 1, 2]
    assert out.xyxy.tolist() == [list(m.xyxy) for m in out.masks]
    assert out.extras["stability_score"].tolist() == [1.0, 1.0, 1.0]
    assert sam.encoded == 1 and sam.prompts == 64
    # grid points at 4, 12, ... 60: 6 + 6 + 12 inside the objects, each passing once (its sharp candidate)
    assert gen.stats == {"prompts": 64, "skipped": 0, "candidates": 192, "passed": 24, "redecoded": 0, "kept": 3}


class ChainSam(PointSam):
    """A rigged SAM for the 2 x 2 grid of a 64 x 64 image: three overlapping masks a (0.92), b (0.9), c (0.95), where
    a overlaps b and c above 0.7 (box IoU 0.81) and b and c do not (0.66); the fourth point finds nothing."""

    CELLS = {(16, 16): ((0, 2, 5, 12), 0.92), (48, 16): ((0, 3, 5, 13), 0.9), (16, 48): ((0, 1, 5, 11), 0.95)}

    def predict(self, embedding, *, points, point_labels, multimask):
        self.prompts += len(points)
        logits, scores = [], []
        for ((x, y),) in points:
            cells, score = self.CELLS.get((int(x), int(y)), (None, 0.1))
            first = _logits([cells] if cells else [], inside=100.0, outside=-100.0)
            logits.append(torch.stack([first, torch.full((L, L), -100.0), torch.full((L, L), -100.0)]))
            scores.append([score, 0.1, 0.1])
        return Prediction(torch.stack(logits), np.array(scores, np.float32), 0.0, embedding.upsampler)


def test_a_mask_given_up_that_nms_keeps_is_decoded_again():
    sam = ChainSam()
    gen = MaskGenerator(sam, GeneratorOptions(points_per_side=2, points_per_batch=2))
    out = gen(_scene())
    # batch 1 (a, b): b gives its mask up to a; batch 2 (c): a to c; NMS keeps c and b, whose mask comes back
    assert [m.xyxy for m in out.masks] == [(4, 0, 44, 20), (12, 0, 52, 20)]
    assert out.mask_score.tolist() == pytest.approx([0.95, 0.9])
    assert gen.stats["redecoded"] == 1 and sam.prompts == 4 + 1
    assert out.extras["point_xy"].tolist() == [[16, 48], [48, 16]]


def test_points_inside_covered_masks_are_skipped_and_nothing_else_is_lost():
    sam = PointSam()
    gen = MaskGenerator(sam, GeneratorOptions(points_per_side=8))
    first = gen(_scene())
    covered = first[[i for i, m in enumerate(first.masks) if m.xyxy == OBJECTS[1]]]
    out = gen(_scene(), covered=covered)
    # the 8 x 8 grid's points are at 4, 12, ... 60: 3 x 2 of them lie in OBJECTS[1] (x 32..60, y 8..28)
    assert gen.stats["skipped"] == 6 and sam.prompts == 64 + 58
    assert sorted(m.xyxy for m in out.masks) == sorted([OBJECTS[0], OBJECTS[2]])
    off = MaskGenerator(sam, GeneratorOptions(points_per_side=8, skip_covered=False))(_scene(), covered=covered)
    assert len(off) == 3


# ---------------------------------------------------------------------------------------------- real SAM
def test_the_segmenter_encodes_an_image_it_just_encoded_once(plain_mobile_sam, monkeypatch):
    from pipeline.sam import Segmenter

    seg = Segmenter(plain_mobile_sam, device="cpu", runtime="torch")
    calls = []
    encode = seg.backend.encode
    monkeypatch.setattr(seg.backend, "encode", lambda x: calls.append(1) or encode(x))
    rgb = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    first = seg.set_image(rgb)
    assert seg.set_image(rgb.copy()) is first and len(calls) == 1
    other = rgb.copy()
    other[0, 0, 0] ^= 1
    assert seg.set_image(other) is not first and len(calls) == 2
    gen = MaskGenerator(seg, GeneratorOptions(points_per_side=2, pred_iou_thresh=0.0, stability_thresh=0.0))
    gen(other)  # proposals run right after the box prompts of the same image: no second encoder pass
    assert len(calls) == 2


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from PIL import Image

    src = tmp_path_factory.mktemp("scenes")
    rng = np.random.default_rng(3)
    for i in range(2):
        rgb = _scene()
        rgb = np.clip(rgb.astype(int) + rng.integers(0, 40, rgb.shape), 0, 255).astype(np.uint8)
        Image.fromarray(np.kron(rgb, np.ones((2, 2, 1), dtype=np.uint8))).save(src / f"scene_{i}.png")
    return src


#: Random weights give low, unstable scores: thresholds that let their masks through.
LOOSE = ["--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-thresh", "0", "--runtime", "torch"]


def test_label_mode_everything_writes_a_valid_dataset_of_one_class(plain_mobile_sam, scenes, tmp_path):
    import yaml

    from pipeline.cli import main
    from tests.helpers import assert_valid, check_yolo_matches_coco, coco_data

    out = tmp_path / "ds"
    args = ["label", str(scenes), "--out", str(out), "--mode", "everything", "--name", "thing", "-q"]
    assert main([*args, "--segmenter", str(plain_mobile_sam), "--split", "train=1", *LOOSE]) == 0
    assert_valid(out)
    assert yaml.safe_load((out / "data.yaml").read_text())["names"] in (["thing"], {0: "thing"})
    assert check_yolo_matches_coco(out) > 0
    anns = [a for d in coco_data(out).values() for a in d["annotations"]]
    assert {a["category_id"] for a in anns} == {1}
    report = yaml.safe_load((out / "report.json").read_text())
    assert report["names"] == ["thing"] and report["instances_total"] == len(anns)


def test_everything_mode_refuses_a_detector(tmp_path, scenes):
    from pipeline import label
    from tests.conftest import FakeDetector

    with pytest.raises(SamlabelError, match="leave out the detector"):
        label(scenes, tmp_path / "ds", mode="everything", detector=FakeDetector(), progress=False)


# ---------------------------------------------------------------------------------------------- runs
def _scenes_of_objects(root, count: int = 6):
    """64 x 64 scenes of flat rectangles on the 4-pixel grid (the rigged SAM's regions), different per image."""
    from PIL import Image

    root.mkdir(parents=True)
    rng = np.random.default_rng(5)
    for i in range(count):
        rgb = np.zeros((*HW, 3), dtype=np.uint8)
        for k in range(3):
            x0, y0 = (int(v) * 4 for v in rng.integers(0, 12, 2))
            w, h = (int(v) * 4 for v in rng.integers(2, 5, 2))
            rgb[y0 : y0 + h, x0 : x0 + w] = 60 * (k + 1)
        Image.fromarray(rgb).save(root / f"img_{i}.png")
    return root


class StopAt(PointSam):
    """The rigged SAM, interrupted (Ctrl-C) when it is given its ``n``-th image."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def set_image(self, rgb):
        if self.encoded + 1 == self.n:
            raise KeyboardInterrupt
        return super().set_image(rgb)


RIGGED = dict(mode="everything", points_per_side=8, split="train=0.5,valid=0.5", progress=False)


def test_everything_mode_with_a_rigged_sam_labels_each_object_once(tmp_path):
    from pipeline import label
    from tests.helpers import assert_valid, coco_data

    src = _scenes_of_objects(tmp_path / "src")
    result = label(src, tmp_path / "ds", segmenter=PointSam(), **RIGGED)
    assert_valid(tmp_path / "ds")
    from PIL import Image

    coco = coco_data(tmp_path / "ds")
    # the rigged SAM answers a point with the region of its colour: one instance per colour under a grid point
    grid = (point_grid(8) * 64).astype(int)
    for data in coco.values():
        for image in data["images"]:
            rgb = np.asarray(Image.open(src / image["file_name"]))
            colours = {int(rgb[y, x, 0]) for x, y in grid} - {0}
            anns = [a for a in data["annotations"] if a["image_id"] == image["id"]]
            assert len(anns) == len(colours) and {a["category_id"] for a in anns} == {1}
    assert result.report["names"] == ["object"]
    assert result.report["instances_total"] == sum(len(d["annotations"]) for d in coco.values()) > 0


def test_everything_mode_killed_then_resumed_equals_a_clean_run(tmp_path):
    from pipeline import label
    from tests.helpers import coco_data, label_files_bytes

    src = _scenes_of_objects(tmp_path / "src")
    label(src, tmp_path / "clean", segmenter=PointSam(), **RIGGED)
    with pytest.raises(KeyboardInterrupt):
        label(src, tmp_path / "resumed", segmenter=StopAt(4), **RIGGED)
    sam = PointSam()
    label(src, tmp_path / "resumed", segmenter=sam, **RIGGED)
    assert sam.encoded == 3  # the 3 images finished before the interruption are not redone
    assert label_files_bytes(tmp_path / "resumed") == label_files_bytes(tmp_path / "clean")
    assert coco_data(tmp_path / "resumed") == coco_data(tmp_path / "clean")


@pytest.mark.ray
def test_everything_mode_on_ray_equals_local(tmp_path, ray_address):
    from pipeline import label
    from tests.test_run_ray import _same_dataset

    src = _scenes_of_objects(tmp_path / "src")
    label(src, tmp_path / "local", segmenter=PointSam(), **RIGGED)
    label(src, tmp_path / "ray", segmenter=PointSam(), engine="ray", **RIGGED)
    _same_dataset(tmp_path / "local", tmp_path / "ray")


@pytest.fixture(scope="module")
def ray_address():
    from tests import test_run_ray

    yield from test_run_ray.ray_address.__wrapped__()


def test_runs_from_before_the_everything_settings_keep_their_fingerprint(monkeypatch):
    """At their defaults the new settings leave a run's fingerprint as it was before they existed (so those
    datasets resume); a changed one changes it."""
    from pipeline.config import Settings
    from pipeline.run import state

    new = ("mode", "points_per_side", "pred_iou_thresh", "stability_thresh", "box_nms_thresh", "crop_layers")
    new += ("min_region_area", "name")
    now = state.fingerprint("label", Settings(), ["a"], [], None)
    everything = state.fingerprint("label", Settings(mode="everything"), ["a"], [], None)
    to_json = Settings.to_json
    monkeypatch.setattr(Settings, "to_json", lambda self: {k: v for k, v in to_json(self).items() if k not in new})
    assert state.fingerprint("label", Settings(), ["a"], [], None) == now != everything
