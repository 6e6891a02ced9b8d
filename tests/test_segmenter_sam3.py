"""``--segmenter sam3.pt``: SAM 3's interactive head as the box segmenter, on a reduced random-weight SAM 3.

The checkpoint is ``tests.checkpoints.make_sam3_checkpoint`` in Meta's layout (``detector.*`` and ``tracker.*``);
the same file serves ``--detector sam3.pt`` (tests/test_concepts_sam3.py).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.cli import main
from pipeline.concepts.sam3_build import Sam3Dims, build_interactive_sam3, interactive_dims_of, interactive_state
from pipeline.config import load_settings
from pipeline.errors import SamlabelError
from pipeline.run.state import fingerprint
from pipeline.sam import Segmenter
from pipeline.sam.build import resolve_arch
from pipeline.sam.checkpoint import read_state_dict
from tests.checkpoints import make_yolo_checkpoint
from tests.conftest import draw_scene
from tests.helpers import assert_valid, coco_by_image, offline, splits_of
from tests.roboflow import NAMES, SCENES, roboflow_yolo

BOXES = np.array([[25, 25, 55, 55], [85, 45, 135, 95], [2, 3, 150, 110]], dtype=np.float32)


@pytest.fixture(scope="module")
def seg(sam3_weights):
    return Segmenter(sam3_weights, device="cpu", runtime="torch")


def _ultralytics_sam3_predictor(path: Path):
    """Ultralytics' own ``SAM3Predictor`` on a model loaded by Ultralytics' own ``_load_checkpoint`` (interactive)."""
    from ultralytics.models.sam import SAM3Predictor
    from ultralytics.models.sam.build_sam3 import _load_checkpoint

    dims = interactive_dims_of(interactive_state(read_state_dict(path, flag="test")), where="test")
    model = _load_checkpoint(build_interactive_sam3(dims), str(path), interactive=True)
    predictor = SAM3Predictor(overrides=dict(device="cpu", imgsz=1008, conf=0.0, verbose=False, save=False))
    predictor.setup_model(model, verbose=False)
    return predictor


# (120, 160): the letterboxed content ends on a logit cell; (97, 203): mid-cell (Ultralytics' grid_sample path)
@pytest.mark.parametrize("hw", [(120, 160), (97, 203)])
def test_masks_and_scores_equal_ultralytics_sam3_predictor(seg, sam3_weights, hw):
    rgb = draw_scene(hw)
    boxes = BOXES * np.array([hw[1] / 160, hw[0] / 120] * 2, dtype=np.float32)
    pred = seg.predict(seg.set_image(rgb), boxes=boxes)
    assert seg.arch == "sam3" and pred.logits.shape == (3, 1, 288, 288)  # 72 x 72 patches of 14 px, 4 cells each

    predictor = _ultralytics_sam3_predictor(sam3_weights)
    predictor.set_image(np.ascontiguousarray(rgb[..., ::-1]))  # Ultralytics takes BGR
    (result,) = predictor(bboxes=boxes)
    theirs = result.masks.data.cpu().numpy()
    np.testing.assert_allclose(pred.scores[:, 0], result.boxes.conf.cpu().numpy(), rtol=1e-4, atol=1e-5)
    assert pred.threshold == predictor.model.mask_threshold == 0.0
    for i, mask in enumerate(pred.masks()):
        mine = mask.full(hw)
        assert 0 < theirs[i].sum() < theirs[i].size  # neither empty nor everything: the comparison means something
        assert (mine != theirs[i]).mean() < 1e-3, f"box {i}: {(mine != theirs[i]).sum()} pixels differ"


def test_sam3_file_names_and_profile(sam3_weights):
    assert resolve_arch("models/sam3.pt") == resolve_arch("sam3_finetuned.pt") == "sam3"
    assert resolve_arch("SAM3-large.pt") == "sam3"  # any name that starts with sam3, as for --detector
    from pipeline.sam.profiles import profile_of

    profile = profile_of("sam3")
    assert (profile.input_size, profile.lowres, profile.torch_only) == (1008, 288, True)
    assert profile.scale_xy((120, 160)) == (1008 / 160, 1008 / 160)


def _convert(src: Path, out: Path, *extra) -> int:
    return main(["convert", str(src), "--out", str(out), "-q", *map(str, extra)])


def test_convert_a_box_dataset_with_sam3_as_segmenter(tmp_path, sam3_weights):
    src = roboflow_yolo(tmp_path / "src")
    out = tmp_path / "out"
    assert _convert(src, out, "--segmenter", sam3_weights) == 0
    assert_valid(out)
    report = json.loads((out / "report.json").read_text())
    assert report["names"] == NAMES
    boxes_per_image = {name: len(discs) for scenes in SCENES.values() for name, discs in scenes.items()}
    found = {}
    for split in splits_of(out):
        for name, anns in coco_by_image(out, split).items():
            found[name] = len(anns)
            assert all(0 < a["mask_score"] < 1 for a in anns)
    assert {k: v for k, v in found.items() if v} == {k: v for k, v in boxes_per_image.items() if v}
    assert report["instances_total"] == sum(boxes_per_image.values())


def test_label_with_a_yolo_detector_and_sam3_as_segmenter(tmp_path, sam3_weights):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, hw in enumerate([(120, 160), (90, 130)]):
        Image.fromarray(draw_scene(hw)).save(photos / f"p{i}.png")
    det = make_yolo_checkpoint(tmp_path / "w" / "det.pt", NAMES)
    out = tmp_path / "out"
    args = ["label", photos, "--out", out, "--detector", det, "--segmenter", sam3_weights, "--max-det", 3, "-q"]
    assert main([str(a) for a in args]) == 0
    assert_valid(out)
    report = json.loads((out / "report.json").read_text())
    assert report["names"] == NAMES and report["instances_total"] > 0
    for split in splits_of(out):
        for anns in coco_by_image(out, split).values():
            assert len(anns) <= 3 and all("det_bbox" in a and 0 < a["mask_score"] < 1 for a in anns)


@pytest.mark.parametrize("where", ["bare", "path"])
def test_a_missing_sam3_segmenter_is_one_line_and_never_downloaded(tmp_path, monkeypatch, capsys, where):
    src = roboflow_yolo(tmp_path / "src")
    offline(monkeypatch, tmp_path)  # a bare name must not reach Ultralytics' downloader
    weights = "sam3.pt" if where == "bare" else str(tmp_path / "models" / "sam3.pt")
    assert _convert(src, tmp_path / "out", "--segmenter", weights) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"--segmenter {weights}: no such file" in err and "https://huggingface.co/facebook/sam3" in err
    assert "--segmenter PATH/sam3.pt" in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(SamlabelError, match="no such file. SAM 3 weights are gated"):
        Segmenter(weights, device="cpu")


def test_runtime_onnx_with_sam3_is_refused_and_auto_means_torch(tmp_path, sam3_weights, capsys, caplog):
    src = roboflow_yolo(tmp_path / "src")
    assert _convert(src, tmp_path / "out", "--segmenter", sam3_weights, "--runtime", "onnx") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "--runtime onnx: the sam3 segmenter runs on PyTorch only" in err and "--runtime torch" in err
    with pytest.raises(SamlabelError, match="--runtime onnx: the sam3 segmenter runs on PyTorch only"):
        Segmenter(sam3_weights, device="cpu", runtime="onnx")
    with caplog.at_level(logging.INFO, logger="pipeline.sam.segmenter"):
        auto = Segmenter(sam3_weights, device="cpu", runtime="auto")  # the run's default runtime
    assert auto.runtime == "torch" and auto.backend is auto.reference
    said = [r.getMessage() for r in caplog.records if "PyTorch" in r.getMessage()]
    assert said == ["sam3 runs on PyTorch (it has no ONNX Runtime export here)"]


def test_the_run_fingerprint_tells_sam3_from_other_segmenters(tmp_path):
    def fp(**settings):
        return fingerprint("convert", load_settings(None, **settings), NAMES, [], None)

    assert fp(segmenter="sam3.pt") != fp(segmenter="mobile_sam.pt")
    assert fp(segmenter="w/my.pt", sam_arch="sam3") != fp(segmenter="w/my.pt", sam_arch="mobile_sam")


def test_a_sam3_file_without_the_interactive_head_says_so(tmp_path):
    from tests.checkpoints import make_sam3_checkpoint

    image_model = torch.load(make_sam3_checkpoint(tmp_path / "plain.pt", meta_layout=False), weights_only=True)
    torch.save({"model": {f"detector.{k}": v for k, v in image_model.items()}}, tmp_path / "sam3.pt")  # no tracker
    with pytest.raises(SamlabelError, match=r"not SAM 3's interactive \(box prompt\) weights: missing key 'no_mem"):
        Segmenter(tmp_path / "sam3.pt", device="cpu")
    torch.save({"model": {"detector.x": torch.zeros(1)}}, tmp_path / "sam3_bad.pt")
    with pytest.raises(SamlabelError, match=r"not SAM 3's interactive weights \(no tensor"):
        Segmenter(tmp_path / "sam3_bad.pt", device="cpu")


def test_a_mask_fed_back_is_in_sam3s_frame(seg):
    from pipeline.review.sam import mask_logits

    rgb = draw_scene((120, 160))
    emb = seg.set_image(rgb)
    first = seg.predict(emb, boxes=BOXES[:1])
    again = seg.predict(emb, boxes=BOXES[:1], mask_input=first.logits[:, 0])  # SAM's own logits, 288 x 288
    assert again.logits.shape == (1, 1, 288, 288)
    p = seg.profile
    drawn = mask_logits(first.mask(0), (120, 160), scale_xy=p.scale_xy((120, 160)), input_size=1008, lowres=288)
    assert drawn.shape == (288, 288) and seg.predict(emb, boxes=BOXES[:1], mask_input=drawn[None]).logits.shape[0] == 1
    with pytest.raises(ValueError, match=r"mask_input: expected shape \(N, 288, 288\)"):
        seg.predict(emb, boxes=BOXES[:1], mask_input=np.zeros((1, 256, 256), dtype=np.float32))


def test_fine_tuning_sam3_is_refused_in_one_line(sam3_weights):
    from pipeline.finetune.model import TrainableSam

    with pytest.raises(SamlabelError, match="fine-tuning SAM 3 is not supported here"):
        TrainableSam(sam3_weights)


@pytest.mark.parametrize("runtime, match", [("auto", "no such file. SAM 3 weights are gated"), ("onnx", None)])
def test_a_ray_run_refuses_sam3_problems_before_any_worker_starts(tmp_path, sam3_weights, runtime, match):
    from pipeline import label

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(draw_scene((60, 80))).save(photos / "p.png")
    weights = tmp_path / "sam3.pt" if match else sam3_weights
    match = match or "--runtime onnx: the sam3 segmenter runs on PyTorch only"
    with mock.patch("pipeline.run.ray_engine.process", side_effect=AssertionError("Ray was started")):
        with pytest.raises(SamlabelError, match=match):
            label(photos, tmp_path / "out", engine="ray", segmenter=str(weights), runtime=runtime, progress=False)


def test_the_automatic_mask_generator_runs_on_sam3(seg):
    from pipeline.config import GeneratorOptions
    from pipeline.sam.automatic import MaskGenerator

    options = GeneratorOptions(points_per_side=4, pred_iou_thresh=0.0, stability_thresh=0.0)
    found = MaskGenerator(seg, options)(draw_scene((120, 160)))
    assert len(found) > 0 and all(0 < m.area <= 120 * 160 for m in found.masks)
    assert (found.xyxy[:, 2] <= 160).all() and (found.xyxy[:, 3] <= 120).all()


@pytest.mark.slow
def test_full_size_interactive_sam3_is_ultralytics_model():
    """Meta's sizes: the same modules and parameter shapes as Ultralytics' ``build_interactive_sam3`` (about 30 s)."""
    from ultralytics.models.sam import build_sam3 as ultralytics_build

    def signature(model):
        return [
            (name, type(m).__name__, tuple(p.shape for p in m.parameters(recurse=False)))
            for name, m in model.named_modules()
        ]

    with mock.patch.object(ultralytics_build, "_load_checkpoint", lambda m, _c, interactive=False: m):
        theirs = ultralytics_build.build_interactive_sam3("unused.pt")
    ours = build_interactive_sam3()
    assert signature(ours) == signature(theirs)
    assert interactive_dims_of(ours.state_dict(), where="x") == Sam3Dims()
