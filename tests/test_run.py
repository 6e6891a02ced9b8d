"""Whole pipeline with fake stages whose answers are known."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import supervision as sv
import yaml

from pipeline import label
from pipeline.errors import SamlabelError
from tests.conftest import FakeDetector, FakeSegmenter
from tests.helpers import (
    assert_valid,
    check_yolo_matches_coco,
    coco_by_image,
    coco_data,
    label_files_bytes,
    splits_of,
    ultralytics_segment_labels,
)


def _label(src, out, **kw):
    result = label(src, out, detector=FakeDetector(), segmenter=FakeSegmenter(), progress=False, **kw)
    assert_valid(out)  # every dataset a test produces passes `samlabel validate`
    return result


def test_dataset_layout_and_report(image_folder, tmp_path):
    out = tmp_path / "ds"
    result = _label(image_folder, out)
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data["names"] == ["ball", "cube", "cone"] and data["nc"] == 3
    for key, split in (("train", "train"), ("val", "valid"), ("test", "test")):
        assert (data.get(key) == f"{split}/images") == (split in splits_of(out))
    # every image is in exactly one split, and every split has labels and a COCO file
    all_images = [p.name for s in splits_of(out) for p in (out / s / "images").iterdir()]
    assert len(all_images) == len(set(all_images)) == 6  # a.jpg, a.png, sub/a.jpg, sub/b.JPG, c.png, gray.png
    assert not any(n.startswith(".") or n.endswith(".txt") for n in all_images)
    report = json.loads((out / "report.json").read_text())
    assert report == result.report
    assert sum(report["images"].values()) == 6
    # the fake detector adds a 1x1 box at the corner of every image: its mask is empty -> dropped, reported
    assert len(report["dropped_instances"]) == 6
    assert {d["reason"] for d in report["dropped_instances"]} == {"empty mask"}
    assert report["instances_total"] == check_yolo_matches_coco(out) == 8


def test_instances_keep_their_class_and_box_identity(image_folder, tmp_path):
    """Each COCO annotation carries the detector box, confidence and SAM score of the same instance."""
    out = tmp_path / "ds"
    _label(image_folder, out, split="train=1")
    anns = coco_by_image(out, "train")["sub_b.JPG"]
    assert [a["category_id"] for a in anns] == [1, 2, 3]  # disc k has class k mod 3
    for k, a in enumerate(anns):
        assert a["source_id"] == k
        assert a["mask_score"] == pytest.approx(0.5 + k / 100)
        x, y, w, h = a["bbox"]
        dx, dy, dw, dh = a["det_bbox"]  # detector box = mask box grown by 2 px
        assert (dx, dy, dw, dh) == (x - 2, y - 2, w + 4, h + 4)
    confidences = [a["confidence"] for a in anns]
    assert confidences == sorted(confidences, reverse=True)


def test_rerun_gives_same_splits_and_identical_label_files(image_folder, tmp_path):
    _label(image_folder, tmp_path / "one")
    _label(image_folder, tmp_path / "two")
    assert label_files_bytes(tmp_path / "one") == label_files_bytes(tmp_path / "two")
    assert coco_data(tmp_path / "one") == coco_data(tmp_path / "two")


def test_added_images_do_not_reshuffle_splits(image_folder, tmp_path):
    _label(image_folder, tmp_path / "one")
    shutil.copy(image_folder / "a.jpg", image_folder / "sub" / "new.jpg")
    _label(image_folder, tmp_path / "two")
    before = {p.name: s for s in splits_of(tmp_path / "one") for p in (tmp_path / "one" / s / "images").iterdir()}
    after = {p.name: s for s in splits_of(tmp_path / "two") for p in (tmp_path / "two" / s / "images").iterdir()}
    assert {n: after[n] for n in before} == before and "sub_new.jpg" in after


def test_round_trip_through_ultralytics_loader(image_folder, tmp_path):
    out = tmp_path / "ds"
    _label(image_folder, out, split="train=0.5,valid=0.5")
    labels = ultralytics_segment_labels(out)
    coco = {s: coco_by_image(out, s) for s in splits_of(out)}
    n = 0
    for key, split in (("train", "train"), ("val", "valid")):
        for lab in labels.get(key, []):
            name = lab["im_file"].split("/")[-1]
            anns = coco[split][name]
            assert lab["cls"].reshape(-1).tolist() == [a["category_id"] - 1 for a in anns]
            assert len(lab["segments"]) == len(anns)
            n += len(anns)
    assert n == 8


def test_round_trip_through_supervision(image_folder, tmp_path):
    out = tmp_path / "ds"
    _label(image_folder, out, split="train=1")
    from_coco = sv.DetectionDataset.from_coco(
        images_directory_path=str(out / "train" / "images"),
        annotations_path=str(out / "train" / "_annotations.coco.json"),
        force_masks=True,
    )
    from_yolo = sv.DetectionDataset.from_yolo(
        images_directory_path=str(out / "train" / "images"),
        annotations_directory_path=str(out / "train" / "labels"),
        data_yaml_path=str(out / "data.yaml"),
        force_masks=True,
    )
    assert from_coco.classes == from_yolo.classes == ["ball", "cube", "cone"]
    coco_by_name = {p.split("/")[-1]: d for p, _, d in from_coco}
    for path, _, det in from_yolo:
        ref = coco_by_name[path.split("/")[-1]]
        assert det.class_id.tolist() == ref.class_id.tolist()
        if len(det) == 0:
            continue
        for m_yolo, m_coco in zip(det.mask, ref.mask, strict=True):
            assert np.logical_and(m_yolo, m_coco).sum() / np.logical_or(m_yolo, m_coco).sum() > 0.9


def test_rle_output_is_lossless(image_folder, tmp_path):
    out = tmp_path / "ds"
    _label(image_folder, out, coco_masks="rle", split="train=1")
    anns = [a for image_anns in coco_by_image(out, "train").values() for a in image_anns]
    assert anns and all(isinstance(a["segmentation"]["counts"], str) for a in anns)
    check_yolo_matches_coco(out)


def test_formats_coco_only(image_folder, tmp_path):
    out = tmp_path / "ds"
    _label(image_folder, out, formats="coco", split="train=1")
    assert not (out / "train" / "labels").exists()
    assert (out / "train" / "_annotations.coco.json").is_file()


def test_unreadable_image_is_skipped_and_reported(image_folder, tmp_path):
    (image_folder / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (image_folder / "empty.png").write_bytes(b"")
    out = tmp_path / "ds"
    report = _label(image_folder, out).report
    assert sorted(s["source"].split("/")[-1] for s in report["skipped_images"]) == ["broken.jpg", "empty.png"]
    assert sum(report["images"].values()) == 6


def test_other_runs_output_is_not_mixed(image_folder, tmp_path):
    out = tmp_path / "ds"
    _label(image_folder, out)
    with pytest.raises(SamlabelError, match="refusing to mix two runs"):
        _label(image_folder, out, conf=0.5)
    _label(image_folder, out, conf=0.5, overwrite=True)
    assert json.loads((out / "report.json").read_text())["settings"]["conf"] == 0.5


def test_non_empty_foreign_folder_is_refused(image_folder, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.docx").write_text("precious")
    with pytest.raises(SamlabelError, match="not empty"):
        _label(image_folder, out)
    assert (out / "thesis.docx").read_text() == "precious"


def test_segmenter_sees_every_box_and_nothing_is_matched_by_position(image_folder, tmp_path):
    """A segmenter returning an empty mask for one box must not shift classes of later boxes."""

    class DropsFirst(FakeSegmenter):
        def __call__(self, rgb, instances):
            out = super().__call__(rgb, instances)
            from pipeline.types import CropMask

            masks = list(out.masks)
            masks[0] = CropMask(np.zeros((0, 0), bool))  # SAM found nothing for the first box
            return out.replace(masks=tuple(masks))

    out = tmp_path / "ds"
    label(image_folder, out, detector=FakeDetector(), segmenter=DropsFirst(), progress=False, split="train=1")
    anns = coco_by_image(out, "train")["sub_b.JPG"]
    assert [(a["source_id"], a["category_id"]) for a in anns] == [(1, 2), (2, 3)]


def test_low_score_instances_are_kept_and_listed_for_review(image_folder, tmp_path):
    """Unlike Ultralytics' SAM predictor (which drops masks scoring <= 0.25), low scores are kept and flagged."""

    class LowScores(FakeSegmenter):
        def __call__(self, rgb, instances):
            out = super().__call__(rgb, instances)
            return out.replace(mask_score=np.full(len(out), 0.1, np.float32))

    out = tmp_path / "ds"
    report = label(image_folder, out, detector=FakeDetector(), segmenter=LowScores(), progress=False).report
    assert report["instances_total"] == 8
    review = report["low_score_instances"]["instances"]
    assert len(review) == 8 and {r["mask_score"] for r in review} == {0.1}
    assert {r["class"] for r in review} <= {"ball", "cube", "cone"}


def test_reading_and_writing_overlap_the_model_with_bounded_read_ahead(image_folder, tmp_path, monkeypatch):
    """While the model works on image k, image k+1 is already read (never more), and files land in the background."""
    import threading

    from pipeline.formats import yolo
    from pipeline.run import local, steps

    loads, seen = [], []
    loaded = threading.Condition()
    real_load = steps.load_image

    def counting_load(path):
        image = real_load(path)
        with loaded:
            loads.append(threading.current_thread().name)
            loaded.notify_all()
        return image

    n = 6

    class WaitingSegmenter(FakeSegmenter):
        def __call__(self, rgb, instances):
            k = len(seen)
            with loaded:  # wait (an event, not a sleep) until the reader is as far ahead as it may go
                assert loaded.wait_for(lambda: len(loads) >= min(k + 1 + local.PREFETCH, n), timeout=30)
                seen.append(len(loads))
            return super().__call__(rgb, instances)

    writers = []
    real_write = yolo.write_label_file

    def recording_write(*a, **k):
        writers.append(threading.current_thread().name)
        return real_write(*a, **k)

    monkeypatch.setattr(steps, "load_image", counting_load)
    monkeypatch.setattr(yolo, "write_label_file", recording_write)
    out = tmp_path / "ds"
    label(image_folder, out, detector=FakeDetector(), segmenter=WaitingSegmenter(), progress=False)
    assert len(seen) == n and all(name.startswith("samlabel-read") for name in loads)
    # at call k (0-based) images 0..k and exactly one more are read: overlap, and a bound on memory
    assert seen == [min(k + 1 + local.PREFETCH, n) for k in range(n)]
    assert len(writers) == n and all(name.startswith("samlabel-write") for name in writers)
    assert_valid(out)


def test_one_split_still_gives_a_trainable_data_yaml(image_folder, tmp_path):
    """Ultralytics needs train and val: with every image in train, val points at train and the report says so."""
    out = tmp_path / "ds"
    result = _label(image_folder, out, split="train=1")
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert (data["train"], data["val"]) == ("train/images", "train/images") and "test" not in data
    assert "no val images" in result.report["data_yaml_note"]
    labels = ultralytics_segment_labels(out)  # check_det_dataset accepts it
    assert len(labels["val"]) == len(labels["train"]) == 6


def test_no_readable_image_is_an_error_with_a_report(tmp_path):
    src = tmp_path / "bad"
    src.mkdir()
    (src / "a.jpg").write_bytes(b"not a jpeg")
    (src / "b.png").write_bytes(b"")
    out = tmp_path / "ds"
    with pytest.raises(SamlabelError, match="no image could be written"):
        label(src, out, detector=FakeDetector(), segmenter=FakeSegmenter(), progress=False)
    report = json.loads((out / "report.json").read_text())
    assert sorted(s["source"] for s in report["skipped_images"]) == [str(src / "a.jpg"), str(src / "b.png")]
    assert not (out / "data.yaml").exists()


def test_the_fake_stages_implement_the_stage_protocols():
    """The fakes stand in for the real stages because they implement the same Protocols the run is typed with."""
    from pipeline.types import DetectorStage, SegmenterStage

    assert isinstance(FakeDetector(), DetectorStage) and isinstance(FakeSegmenter(), SegmenterStage)
    assert not isinstance(FakeSegmenter(), DetectorStage)  # no class names: not a detector


def test_each_engine_comes_from_one_table_and_returns_one_result(image_folder, tmp_path, monkeypatch):
    """--engine picks from run.loop.ENGINES (one entry per options.Engine value); the engine returns an EngineResult."""
    from typing import get_args

    from pipeline.options import Engine
    from pipeline.run import local, loop, ray_engine
    from pipeline.run.steps import EngineResult

    assert loop.ENGINES == {"local": local.process, "ray": ray_engine.process}
    assert tuple(loop.ENGINES) == get_args(Engine)
    results = []

    def recording(todo, job):
        results.append(local.process(todo, job))
        return results[-1]

    monkeypatch.setitem(loop.ENGINES, "local", recording)
    kw = dict(detector=FakeDetector(), segmenter=FakeSegmenter(), progress=False)
    report = label(image_folder, tmp_path / "ds", **kw).report
    assert results == [EngineResult(saved=sum(report["images"].values()) + len(report["skipped_images"]))]


def test_loading_a_lazy_sam_is_timed_as_load_not_as_segment(image_folder, tmp_path, monkeypatch):
    """A SAM built on its first image (``convert``'s lazy segmenter) puts its load time under ``load``: the
    ``segment`` stage is per-image work only."""
    import time

    from pipeline.run.stages import SegmenterRecipe

    def slow_build(self):
        time.sleep(0.5)  # a model load
        return FakeSegmenter()

    monkeypatch.setattr(SegmenterRecipe, "build", slow_build)
    from pipeline.config import load_settings
    from pipeline.run.stages import LazyStage

    lazy = LazyStage(SegmenterRecipe(load_settings(None, device="cpu")))
    result = label(image_folder, tmp_path / "out", detector=FakeDetector(), segmenter=lazy, progress=False)
    stages = result.report["timings"]["this_run"]["stage_seconds"]
    assert stages["load"] >= 0.5 > stages["segment"]
    assert lazy.loaded
