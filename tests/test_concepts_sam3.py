"""SAM 3 in concept mode on the real Ultralytics code path: a reduced random-weight model (tests.checkpoints)."""

from __future__ import annotations

import sys
import types
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.concepts.exemplar import Exemplar
from pipeline.concepts.sam3 import Sam3Model
from pipeline.concepts.sam3_build import Sam3Dims, WeightlessAttention, clip_tokenizer, detector_state, dims_of
from pipeline.errors import SamlabelError, WeightsNotFoundError
from pipeline.masks import CropMask
from pipeline.types import ConceptModel
from tests.checkpoints import SAM3_TEST_DIMS, make_sam3_checkpoint
from tests.conftest import draw_scene

BALL_BOX = np.array([[25, 25, 55, 55]], dtype=np.float32)  # around draw_scene's first disc (40, 40, r 15)


@pytest.fixture
def rgb():
    return draw_scene((120, 160))


@pytest.fixture
def model(sam3_weights):
    """A fresh model (its text cache empty): floor 0 and no NMS, so every query with a mask is returned; images
    at 336 (24 x 24 patches: Ultralytics' ``set_imgsz``), phrases batched as on a GPU."""
    return Sam3Model(sam3_weights, device="cpu", floor=0.0, nms_iou=1.0, imgsz=336, phrase_batch=16)


def test_one_instances_per_phrase_with_masks_at_image_size(model, rgb):
    assert isinstance(model, ConceptModel)
    out = model(rgb, ["ball", "cube"])
    assert len(out) == 2
    for inst in out:
        assert 0 < len(inst) <= SAM3_TEST_DIMS["queries"]
        assert (inst.class_id == 0).all()
        assert all(isinstance(m, CropMask) and m.area > 0 for m in inst.masks)
        np.testing.assert_array_equal(inst.xyxy, np.array([m.xyxy for m in inst.masks], dtype=np.float32))
        assert (inst.xyxy[:, 2] <= 160).all() and (inst.xyxy[:, 3] <= 120).all() and (inst.xyxy >= 0).all()
        assert inst.confidence.dtype == np.float32 and ((inst.confidence > 0) & (inst.confidence < 1)).all()
        assert (np.diff(inst.confidence) <= 0).all()  # best first
    assert not np.allclose(out[0].confidence[:3], out[1].confidence[:3])  # another phrase, another answer
    assert model(rgb, []) == []


def test_floor_drops_low_scores(sam3_weights, rgb, model):
    everything = model(rgb, ["ball"])[0]
    cut = float(np.median(everything.confidence))
    floored = Sam3Model(sam3_weights, device="cpu", floor=cut, nms_iou=1.0, imgsz=336)(rgb, ["ball"])[0]
    assert len(floored) == (everything.confidence > cut).sum() and (floored.confidence > cut).all()


def test_phrases_one_at_a_time_answer_as_in_a_batch(sam3_weights, model, rgb):
    batched = model(rgb, ["ball", "cube", "cone"])
    single = Sam3Model(sam3_weights, device="cpu", floor=0.0, nms_iou=1.0, imgsz=336, phrase_batch=1)
    assert single.phrase_batch == 1 and Sam3Model(sam3_weights, device="cpu").phrase_batch == 1  # CPU default
    for a, b in zip(batched, single(rgb, ["ball", "cube", "cone"]), strict=True):
        np.testing.assert_allclose(a.confidence, b.confidence, rtol=1e-4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(imgsz=500), "multiple of 14"),
        (dict(phrase_batch=0), "at least 1"),
        (dict(floor=1.0), "0 <= floor < 1"),
    ],
)
def test_bad_settings_say_what_is_expected(sam3_weights, kwargs, match):
    with pytest.raises(ValueError, match=match):
        Sam3Model(sam3_weights, device="cpu", **kwargs)


def test_a_device_not_here_is_refused_in_one_line(sam3_weights):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SamlabelError, match=r"--device cuda:0: not usable here .*use --device cpu"):
        Sam3Model(sam3_weights, device="cuda:0")


def test_text_encoded_once_per_phrase_image_encoded_once_per_image(model, rgb):
    backbone = model.model.backbone
    with (
        mock.patch.object(backbone, "forward_text", wraps=backbone.forward_text) as text,
        mock.patch.object(backbone, "forward_image", wraps=backbone.forward_image) as image,
    ):
        first = model(rgb, ["ball", "cube"])
        model(rgb[::-1].copy(), ["cube", "ball"])
        again = model(rgb, ["cube", "cone"])
    assert [c.args[0] for c in text.call_args_list] == [["ball", "cube"], ["cone"]]
    assert image.call_count == 3  # one per image, whatever the number of phrases
    np.testing.assert_allclose(again[0].confidence, first[1].confidence, rtol=1e-4)  # cached tokens = fresh ones


def _rig_scores(model: Sam3Model, logits_by_phrase: dict[str, list[float]]):
    """Patch SAM 3's instance scoring (``dot_prod_scoring``: query x prompt -> logit) to answer by phrase: the
    queries' logits are ``logits_by_phrase[phrase]`` (then -9), the phrase found from the prompt's text tokens."""
    queries = SAM3_TEST_DIMS["queries"]

    def scoring(hs, prompt, prompt_mask):
        rows = []
        for b in range(prompt.shape[1]):
            phrase = next(p for p, (t, _) in model._text.items() if torch.equal(prompt[: len(t), b], t[:, 0]))
            wanted = logits_by_phrase[phrase]
            rows.append(torch.tensor(wanted + [-9.0] * (queries - len(wanted))))
        return torch.stack(rows)[None, :, :, None].expand(hs.shape[0], -1, -1, -1)

    return mock.patch.object(model.model.dot_prod_scoring, "forward", side_effect=scoring)


def test_rigged_scores_follow_the_phrase_and_keep_each_query_mask(model, rgb):
    outputs = []
    ground = model._ground
    with (
        _rig_scores(model, {"ball": [4.0, 3.0, 2.0], "cube": [-9.0, -9.0, -9.0, 1.0]}),
        mock.patch.object(model, "_ground", side_effect=lambda *a: outputs.append(ground(*a)) or outputs[-1]),
    ):
        model.floor = 0.05
        ball, cube = model(rgb, ["ball", "cube"])
    (out,) = outputs  # both phrases in one batch
    presence = out["presence_logit_dec"][:, 0].sigmoid()
    sig = torch.sigmoid(torch.tensor([4.0, 3.0, 2.0, 1.0]))
    np.testing.assert_allclose(ball.confidence, (sig[:3] * presence[0]).numpy(), rtol=1e-5)
    np.testing.assert_allclose(cube.confidence, (sig[3:] * presence[1]).numpy(), rtol=1e-5)
    # each instance has its own query's mask, upsampled to the image (identity kept, not list position)
    for inst, b, queries in ((ball, 0, [0, 1, 2]), (cube, 1, [3])):
        for mask, q in zip(inst.masks, queries, strict=True):
            full = F.interpolate(out["pred_masks"][b, q][None, None], (120, 160), mode="bilinear")[0, 0] > 0
            np.testing.assert_array_equal(mask.full((120, 160)), full.numpy())


def test_exemplar_boxes_change_the_answer_of_their_phrase_only(model, rgb):
    ball, cube = model(rgb, ["ball", "cube"])
    ball_ex, cube_ex = model(rgb, ["ball", "cube"], [Exemplar("ball", BALL_BOX)])
    assert not np.allclose(ball.confidence[:3], ball_ex.confidence[:3], rtol=1e-3)
    np.testing.assert_allclose(cube.confidence, cube_ex.confidence, rtol=1e-4)
    negative = model(rgb, ["ball"], [Exemplar("ball", BALL_BOX, positive=[False])])[0]
    assert not np.allclose(negative.confidence[:3], ball_ex.confidence[:3], rtol=1e-3)


def test_exemplar_in_another_image_is_encoded_once_and_acts_as_its_boxes_there(model, rgb):
    here = model(rgb, ["ball"], [Exemplar("ball", BALL_BOX)])[0]
    elsewhere = Exemplar("ball", BALL_BOX, image=rgb.copy())  # the same image, passed as another one
    backbone = model.model.backbone
    with mock.patch.object(backbone, "forward_image", wraps=backbone.forward_image) as image:
        first = model(rgb, ["ball"], [elsewhere])[0]
        model(rgb[:, ::-1].copy(), ["ball"], [elsewhere])
    assert image.call_count == 3  # two images + the exemplar's, once
    np.testing.assert_allclose(first.confidence, here.confidence, rtol=1e-4)


def test_encoded_exemplars_kept_are_bounded(model, rgb, monkeypatch):
    monkeypatch.setattr("pipeline.concepts.sam3.EXEMPLARS_KEPT", 2)
    fresh = [Exemplar("ball", BALL_BOX, image=rgb) for _ in range(3)]  # a caller making new ones per image
    for exemplar in fresh:
        model(rgb, ["ball"], [exemplar])
    assert [e for e, _ in model._exemplars.values()] == fresh[1:]


def test_boxes_without_a_phrase_use_sams_visual_prompt(model, rgb):
    backbone = model.model.backbone
    with mock.patch.object(backbone, "forward_text", wraps=backbone.forward_text) as text:
        (found,) = model(rgb, [""], [Exemplar("", BALL_BOX)])
    assert text.call_args.args[0] == ["visual"] and len(found) > 0


def test_exemplar_of_a_phrase_not_asked_for_is_refused(model, rgb):
    with pytest.raises(ValueError, match=r"exemplars for \['bike'\]"):
        model(rgb, ["ball"], [Exemplar("bike", BALL_BOX)])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(xyxy=np.zeros((0, 4))), "at least one box"),
        (dict(xyxy=[[10, 10, 5, 20]]), "x_max > x_min"),
        (dict(xyxy=BALL_BOX, positive=[True, False]), "one entry per box"),
        (dict(xyxy=BALL_BOX, image=np.zeros((4, 4), np.uint8)), r"uint8 \(H, W, 3\)"),
    ],
)
def test_bad_exemplars_say_what_is_wrong(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Exemplar("ball", **kwargs)


def test_missing_weights_say_where_to_get_them(tmp_path):
    with pytest.raises(WeightsNotFoundError) as e:
        Sam3Model(tmp_path / "sam3.pt", device="cpu")
    message = str(e.value)
    assert "\n" not in message and str(tmp_path / "sam3.pt") in message
    assert "huggingface.co/facebook/sam3" in message and "licence" in message and "--detector PATH" in message


class _Payload:
    def __reduce__(self):
        return (open, ("/dev/null",))  # what a hostile pickle does: call something when opened


def test_pickled_objects_are_never_unpickled(tmp_path):
    path = tmp_path / "sam3.pt"
    torch.save({"model": {"x": torch.zeros(1)}, "extra": _Payload()}, path)
    with mock.patch("builtins.open", wraps=open) as opened:
        with pytest.raises(SamlabelError, match="holds Python objects besides tensors"):
            Sam3Model(path, device="cpu")
    assert all(c.args[0] != "/dev/null" for c in opened.call_args_list)


def test_other_weights_are_not_sam3(tmp_path):
    path = tmp_path / "yolo.pt"
    torch.save({"model.0.conv.weight": torch.zeros(16, 3, 3, 3)}, path)
    with pytest.raises(SamlabelError, match=r"--detector .*yolo.pt: not SAM 3 weights"):
        Sam3Model(path, device="cpu")


def test_size_read_from_the_checkpoint_in_either_layout(tmp_path, sam3_weights):
    meta = torch.load(sam3_weights, weights_only=True)
    assert dims_of(detector_state(meta["model"]), where="x") == Sam3Dims(**SAM3_TEST_DIMS)
    plain = make_sam3_checkpoint(tmp_path / "plain.pt", meta_layout=False, vit_depth=8, queries=8)
    state = torch.load(plain, weights_only=True)
    assert dims_of(state, where="x") == Sam3Dims(**{**SAM3_TEST_DIMS, "vit_depth": 8, "queries": 8})
    assert Sam3Dims(vit_depth=32).global_blocks == (7, 15, 23, 31)  # SAM 3's


def test_fusion_attention_returns_no_weights_and_the_same_output():
    torch.manual_seed(0)
    plain = torch.nn.MultiheadAttention(32, 4, batch_first=True)
    weightless = WeightlessAttention(32, 4, batch_first=True)
    weightless.load_state_dict(plain.state_dict())
    x = torch.randn(2, 50, 32)
    out, weights = weightless(x, x, x)
    assert weights is None
    torch.testing.assert_close(out, plain(x, x, x)[0])


def test_tokenizer_is_sam3s_clip_bpe():
    tokens = clip_tokenizer()(["a cat", "traffic light"], context_length=32)
    assert tokens.dtype == torch.long and tuple(tokens.shape) == (2, 32)
    assert tokens[0, :4].tolist() == [49406, 320, 2368, 49407]  # <start> a cat <end>: CLIP's vocabulary


def test_a_users_clip_fork_is_used_when_installed(monkeypatch):
    class ForkTokenizer:
        def __call__(self, texts, context_length=77):
            return torch.zeros(len(texts), context_length, dtype=torch.long)

    fork = types.SimpleNamespace(simple_tokenizer=types.SimpleNamespace(SimpleTokenizer=ForkTokenizer))
    monkeypatch.setitem(sys.modules, "clip", fork)
    assert isinstance(clip_tokenizer(), ForkTokenizer)


@pytest.mark.slow
def test_full_size_sam3_is_ultralytics_model_and_runs(monkeypatch):
    """Meta's size: the same modules as Ultralytics' builder; one image, two phrases (about 100 s, 8 GB)."""
    from ultralytics.models.sam import build_sam3 as ultralytics_build

    from pipeline.concepts.sam3_build import build_sam3

    def signature(model):  # WeightlessAttention is an nn.MultiheadAttention that does not return weights
        return [
            (name, "MultiheadAttention" if isinstance(m, torch.nn.MultiheadAttention) else type(m).__name__,
             getattr(m, "num_heads", None), getattr(m, "window_size", None),
             getattr(m, "batch_first", None), tuple(p.shape for p in m.parameters(recurse=False)))
            for name, m in model.named_modules()
        ]  # fmt: skip

    fork = types.SimpleNamespace(simple_tokenizer=types.SimpleNamespace(SimpleTokenizer=clip_tokenizer))
    monkeypatch.setitem(sys.modules, "clip", fork)  # only this key: modules torch imports meanwhile stay
    with mock.patch.object(ultralytics_build, "_load_checkpoint", lambda m, _c: m):
        theirs = signature(ultralytics_build.build_sam3_image_model("unused.pt"))
    ours = build_sam3()
    assert signature(ours) == theirs
    assert dims_of(ours.state_dict(), where="x") == Sam3Dims()
    with mock.patch("pipeline.concepts.sam3.load_sam3", return_value=ours):
        out = Sam3Model("sam3.pt", device="cpu")(draw_scene((480, 640)), ["person", "bus"])
    assert len(out) == 2 and all((i.class_id == 0).all() for i in out)


def test_label_with_sam3_weights_writes_a_dataset_that_validate_pycocotools_and_ultralytics_accept(
    sam3_weights, tmp_path
):
    """``samlabel label photos/ --detector sam3.pt --prompts ...`` on the real SAM 3 code path (reduced model)."""
    import json

    from pycocotools.coco import COCO

    from pipeline.cli import main
    from pipeline.validate import validate
    from tests.concept_fakes import disc_photos

    photos = disc_photos(tmp_path / "photos")
    for extra in ("c.png", "d.png"):  # two images keep it short
        (photos / extra).unlink()
    out = tmp_path / "ds"
    argv = ["label", str(photos), "--out", str(out), "--detector", str(sam3_weights)]
    assert main([*argv, "--prompts", "red disc, blue disc@0.1", "--conf", "0", "-q"]) == 0
    assert validate(out) == []
    report = json.loads((out / "report.json").read_text())
    assert report["names"] == ["red disc", "blue disc"]
    assert (
        "detect" in report["timings"]["total"]["stage_seconds"]
        and "segment" not in report["timings"]["total"]["stage_seconds"]
    )  # SAM 3's masks are the instances' masks: no second SAM pass
    coco = COCO(str(out / "train" / "_annotations.coco.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["red disc", "blue disc"]
    kept = sum(n for split in report["instances"].values() for n in split.values())
    assert len(coco.getAnnIds()) == kept
    for ann in coco.loadAnns(coco.getAnnIds()):  # each says which phrase found it, and its score
        assert ann["phrase"] in ("red disc", "blue disc") and 0 <= ann["confidence"] <= 1
    # Ultralytics' trainer reads the same instances through its own segment dataset loader
    from tests.helpers import ultralytics_segment_labels

    labels = ultralytics_segment_labels(out)["train"]  # every image is in train (val names the same folder)
    assert len(labels) == 2 and sum(len(lb["cls"]) for lb in labels) == kept
    assert all(len(lb["segments"]) == len(lb["cls"]) for lb in labels)
