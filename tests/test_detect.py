from __future__ import annotations

import numpy as np
import pytest

from pipeline.detect import Detector
from pipeline.errors import SamlabelError
from tests.checkpoints import make_yolo_checkpoint

NAMES = ["ball", "cube", "cone"]


@pytest.fixture(scope="module")
def det_weights(tmp_path_factory):
    return make_yolo_checkpoint(tmp_path_factory.mktemp("w") / "det.pt", NAMES)


@pytest.fixture(scope="module")
def rgb():
    return np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)


def test_real_detector_boxes_classes_and_names(det_weights, rgb):
    det = Detector(str(det_weights), conf=0.25, max_det=50, device="cpu")
    inst = det(rgb)
    assert det.names == NAMES
    assert 0 < len(inst) <= 50
    assert set(inst.class_id.tolist()) <= {0, 1, 2}
    assert (inst.confidence >= 0.25).all()
    assert (inst.xyxy[:, :2] >= 0).all() and (inst.xyxy[:, 2] <= 320).all() and (inst.xyxy[:, 3] <= 240).all()
    assert inst.source_id.tolist() == list(range(len(inst)))


def test_class_filter_by_name_remaps_to_given_order(det_weights, rgb):
    """The checkpoint predicts ball at confidence 0.60 and cone at 0.62 (see make_yolo_checkpoint)."""
    det = Detector(str(det_weights), classes=["cone", "ball"], conf=0.25, max_det=300, device="cpu")
    inst = det(rgb)
    assert det.names == ["cone", "ball"]
    assert set(inst.class_id.tolist()) == {0, 1}  # cube is filtered out
    assert np.allclose(inst.confidence[inst.class_id == 0], 0.62, atol=1e-3)  # cone -> id 0
    assert np.allclose(inst.confidence[inst.class_id == 1], 0.60, atol=1e-3)  # ball -> id 1


def test_unknown_class_name_is_a_clear_error(det_weights):
    with pytest.raises(SamlabelError, match=r"--classes zebra: not among the detector's classes"):
        Detector(str(det_weights), classes=["ball", "zebra"])


def test_world_model_takes_classes_as_vocabulary(det_weights, monkeypatch):
    seen = []
    monkeypatch.setattr(Detector, "is_world", property(lambda self: True))
    monkeypatch.setattr("ultralytics.YOLO.set_classes", lambda self, classes: seen.append(classes), raising=False)
    det = Detector(str(det_weights), classes=["red car", "bicycle"])
    assert seen == [["red car", "bicycle"]] and det.names == ["red car", "bicycle"]


def test_corrupt_weights_file(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(SamlabelError, match="cannot load it as Ultralytics weights"):
        Detector(str(bad))
