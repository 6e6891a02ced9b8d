from __future__ import annotations

import numpy as np
import pytest

from pipeline.types import CropMask, Instances


def test_defaults_and_dtypes():
    inst = Instances(xyxy=[[0, 0, 2, 2], [1, 1, 3, 3]], class_id=[1, 0])
    assert inst.xyxy.dtype == np.float32 and inst.class_id.dtype == np.int64
    assert np.isnan(inst.confidence).all() and np.isnan(inst.mask_score).all()
    assert inst.source_id.tolist() == [0, 1]
    assert inst.masks == (None, None)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(xyxy=[[0, 0, 1]], class_id=[0]), r"xyxy: expected shape \(1, 4\), got \(1, 3\)"),
        (dict(xyxy=[[0, 0, 1, 1]], class_id=[0, 1]), r"class_id: expected shape \(1,\), got \(2,\)"),
        (dict(xyxy=[[0, 0, 1, 1]], class_id=[0], masks=()), r"masks: expected 1 entries"),
    ],
)
def test_shape_errors_say_expected_and_actual(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Instances(**kwargs)


def test_selection_keeps_every_field_together():
    masks = tuple(CropMask(np.ones((1, 1), bool), x0=i) for i in range(3))
    inst = Instances(
        xyxy=np.arange(12).reshape(3, 4),
        class_id=[5, 6, 7],
        confidence=[0.1, 0.2, 0.3],
        masks=masks,
        source_id=[10, 11, 12],
    )
    sel = inst[np.array([True, False, True])]
    assert sel.class_id.tolist() == [5, 7]
    assert sel.source_id.tolist() == [10, 12]
    assert [m.x0 for m in sel.masks] == [0, 2]
    assert np.allclose(sel.confidence, [0.1, 0.3])


def test_replace_does_not_mutate():
    inst = Instances(xyxy=[[0, 0, 1, 1]], class_id=[0])
    new = inst.replace(mask_score=np.array([0.5]))
    assert np.isnan(inst.mask_score[0]) and new.mask_score[0] == np.float32(0.5)


def test_crop_mask_requires_2d_bool():
    with pytest.raises(ValueError, match="2-D bool"):
        CropMask(np.ones((2, 2), np.uint8))


@pytest.mark.parametrize(
    "mask",
    [
        CropMask(np.array([[True, False], [True, True]]), x0=3, y0=4),  # a crop placed in its image
        CropMask(np.zeros((0, 0), dtype=bool), x0=2, y0=1),  # empty, with its placement
    ],
)
def test_crop_mask_pickles(mask):
    """Ray sends masks between workers by pickle: the copy equals the original, placement and shape included."""
    import pickle

    copy = pickle.loads(pickle.dumps(mask))
    assert copy == mask and (copy.shape, copy.x0, copy.y0, copy.area) == (mask.shape, mask.x0, mask.y0, mask.area)
    assert np.array_equal(copy.bits, mask.bits)
