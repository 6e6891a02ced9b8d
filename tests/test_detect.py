from __future__ import annotations

import re
import sys

import numpy as np
import pytest
import torch

from pipeline.concepts.ontology import Ontology
from pipeline.detect import Detector
from pipeline.errors import SamlabelError
from pipeline.quality import box_iou
from pipeline.types import DROP_REASON
from tests.checkpoints import make_yolo_checkpoint
from tests.helpers import offline

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


def test_corrupt_weights_file(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(SamlabelError, match="cannot load it as Ultralytics weights"):
        Detector(str(bad))


# ------------------------------------------------------------------- open vocabulary: YOLOE, YOLO-World


class FakeTextEncoder(torch.nn.Module):
    """Stands in for the text-embedding step only (CLIP / MobileCLIP, downloaded weights): records the texts it
    embeds and gives each a fixed random unit vector of CLIP's width."""

    def __init__(self, seen: list) -> None:
        super().__init__()
        self.seen = seen

    def tokenize(self, texts, truncate=True):
        self.seen.append(list(texts))
        return torch.arange(len(texts))[:, None]

    def encode_text(self, tokens, dtype=torch.float32):
        g = torch.Generator().manual_seed(0)
        return torch.nn.functional.normalize(torch.randn(len(tokens), 512, generator=g), dim=-1).to(dtype)


@pytest.fixture(scope="module")
def open_vocab_weights(tmp_path_factory):
    """Random-weight YOLOE (segment) and YOLO-World v2 checkpoints, built by Ultralytics from its own yaml."""
    from ultralytics import YOLO

    folder = tmp_path_factory.mktemp("ov")
    out = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for key, yaml in (("yoloe", "yoloe-v8s-seg.yaml"), ("world", "yolov8s-worldv2.yaml")):
            model = YOLO(yaml)
            out[key] = folder / yaml.replace(".yaml", ".pt")
            model.save(out[key])
    return out


@pytest.fixture
def text_encoder(monkeypatch, tmp_path):
    """The texts each text-encoder call embeds; the encoder files present in an otherwise empty weights folder."""
    import types

    seen: list = []
    monkeypatch.setitem(sys.modules, "clip", types.ModuleType("clip"))  # Ultralytics' CLIP fork: not installed here
    import ultralytics.nn.text_model as text_model

    monkeypatch.setattr(text_model, "build_text_model", lambda variant, device=None: FakeTextEncoder(seen))
    weights = tmp_path / "weights"
    (weights / "clip").mkdir(parents=True)
    (weights / "clip" / "ViT-B-32.pt").write_bytes(b"x")
    (weights / "mobileclip_blt.ts").write_bytes(b"x")
    monkeypatch.setattr("pipeline.weights.ultralytics_weights_dir", lambda: weights)
    return seen


@pytest.mark.parametrize("kind", ["yoloe", "world"])
def test_phrases_become_an_open_vocabulary_detectors_classes(open_vocab_weights, text_encoder, rgb, kind):
    ontology = Ontology.parse("person: man, woman; bike: bicycle@0.02")
    det = Detector(str(open_vocab_weights[kind]), prompts=ontology, conf=0.01, device="cpu")
    assert text_encoder == [["man", "woman", "bicycle"]]  # embedded once, at set-up: the vocabulary
    assert det.model.names == {0: "man", 1: "woman", 2: "bicycle"}
    assert det.names == ["person", "bike"]
    inst = det(rgb)
    assert text_encoder == [["man", "woman", "bicycle"]]  # not again per image
    assert set(inst.class_id.tolist()) <= {0, 1}
    phrases = inst.extras["phrase"].tolist()
    assert set(phrases) <= {"man", "woman", "bicycle"}
    assert all(c == (1 if p == "bicycle" else 0) for c, p in zip(inst.class_id.tolist(), phrases, strict=True))
    assert all(s >= 0.02 for s, p in zip(inst.confidence, phrases, strict=True) if p == "bicycle")
    assert len(inst.extras[DROP_REASON]) == len(inst)


def test_yoloe_finds_boxes_of_its_phrases(open_vocab_weights, text_encoder, rgb):
    """A random-weight YOLOE gives boxes at a low threshold; each lands in its phrase's class, duplicates listed."""
    det = Detector(str(open_vocab_weights["yoloe"]), prompts=Ontology.parse("cat, dog"), conf=0.0001, device="cpu")
    inst = det(rgb)
    assert len(inst) > 0
    assert inst.extras["phrase"].tolist() == [("cat", "dog")[c] for c in inst.class_id]
    kept = inst[np.array([r is None for r in inst.extras[DROP_REASON]], dtype=bool)]
    for i in range(len(kept)):  # no two kept boxes are one object
        for j in range(i):
            assert box_iou(kept.xyxy[i], kept.xyxy[j]) < 0.7


def test_classes_is_the_vocabulary_of_an_open_vocabulary_detector(open_vocab_weights, text_encoder):
    det = Detector(str(open_vocab_weights["world"]), classes=["red car", "bicycle"], device="cpu")
    assert text_encoder == [["red car", "bicycle"]] and det.names == ["red car", "bicycle"]


@pytest.mark.parametrize(("kind", "file"), [("yoloe", "mobileclip_blt.ts"), ("world", "ViT-B-32.pt")])
def test_offline_without_the_text_encoder_names_the_missing_file(open_vocab_weights, tmp_path, monkeypatch, kind, file):
    offline(monkeypatch, tmp_path)
    with pytest.raises(
        SamlabelError, match=rf"needs its text encoder {re.escape(file)}, not found in .*ultralytics-weights"
    ) as e:
        Detector(str(open_vocab_weights[kind]), prompts=Ontology.parse("cat"), device="cpu")
    assert "\n" not in str(e.value)


def test_offline_cli_label_with_yoloe_is_one_line(open_vocab_weights, tmp_path, monkeypatch, capsys):
    from pipeline.cli import main
    from tests.concept_fakes import disc_photos

    src = disc_photos(tmp_path / "photos")
    offline(monkeypatch, tmp_path)
    code = main(["label", str(src), "--out", str(tmp_path / "out"), "--detector", str(open_vocab_weights["yoloe"]),
                 "--prompts", "cat, dog", "--device", "cpu", "-q"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "mobileclip_blt.ts" in err and err.startswith("samlabel: error: --detector ")


def test_prompts_on_a_closed_set_detector_are_refused(det_weights):
    with pytest.raises(SamlabelError, match=r"--prompts: --detector .* is a closed-set detector"):
        Detector(str(det_weights), prompts=Ontology.parse("zebra"))
