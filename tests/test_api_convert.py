"""samlabel convert: detection datasets keep splits, names, images and instances; bad input is reported."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline import convert
from pipeline.errors import SamlabelError
from tests.conftest import FakeSegmenter
from tests.helpers import assert_valid, coco_by_image, splits_of, ultralytics_segment_labels
from tests.roboflow import (
    NAMES,
    coco_polygons_with_two_part_object,
    expected_counts,
    roboflow_coco,
    roboflow_yolo,
)


class NoSam:
    def __call__(self, rgb, instances):
        raise AssertionError("SAM was called")


def _convert(src, out, **kw):
    kw.setdefault("segmenter", FakeSegmenter())
    result = convert(src, out, progress=False, **kw)
    assert_valid(out)
    return result


def _counts(out) -> dict[str, dict[str, list[int]]]:
    return {
        s: {Path(n).stem: sorted(a["category_id"] - 1 for a in anns) for n, anns in coco_by_image(out, s).items()}
        for s in splits_of(out)
    }


@pytest.mark.parametrize("layout", [roboflow_yolo, roboflow_coco])
def test_roboflow_exports_keep_splits_names_images_and_instances(tmp_path, layout):
    src = layout(tmp_path / "src")
    out = tmp_path / "out"
    report = _convert(src, out).report
    assert yaml.safe_load((out / "data.yaml").read_text())["names"] == NAMES
    assert splits_of(out) == ["train", "valid", "test"]
    assert _counts(out) == expected_counts()  # same images, same number of instances with the same classes
    assert report["source_problems"] == [] and report["unlabeled_images"] == []
    assert sum(len(v) for v in ultralytics_segment_labels(out).values()) == 5
    # each image records where it came from
    for split in splits_of(out):
        coco = json.loads((out / split / "_annotations.coco.json").read_text())
        assert all(Path(img["source"]).is_file() for img in coco["images"])


def test_coco_polygons_convert_without_sam(tmp_path):
    json_path, images, masks = coco_polygons_with_two_part_object(tmp_path / "src")
    out = tmp_path / "out"
    # a segmenter that fails if called, and SAM weights that do not exist: neither is touched
    _convert(json_path, out, images=images, segmenter=NoSam())
    _convert(json_path, tmp_path / "out2", images=images, segmenter="no/such/mobile_sam.pt")
    assert yaml.safe_load((out / "data.yaml").read_text())["names"] == ["early", "late"]  # category id order
    [(name, anns)] = coco_by_image(out, "train").items()
    from pycocotools import mask as mask_utils

    for ann in anns:
        mine = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], 120, 160))).astype(bool)
        ref = masks[ann["source_id"]]
        assert np.logical_and(mine, ref).sum() / np.logical_or(mine, ref).sum() >= 0.98
    assert len(anns[1]["segmentation"]) == 2  # the two-part object keeps both parts
    # and YOLO-seg has one line for it
    lines = (out / "train" / "labels" / "scene.txt").read_text().splitlines()
    assert [ln.split()[0] for ln in lines] == ["0", "1"]


def test_resegment_sends_polygons_to_sam(tmp_path):
    json_path, images, _ = coco_polygons_with_two_part_object(tmp_path / "src")
    seg = FakeSegmenter()
    _convert(json_path, tmp_path / "out", images=images, segmenter=seg, resegment=True)
    assert seg.calls == 1


def test_yolo_segmentation_dataset_round_trips(tmp_path):
    """A YOLO-seg dataset converts to YOLO-seg + COCO without SAM (same command)."""
    src = roboflow_yolo(tmp_path / "src")
    first = tmp_path / "first"
    _convert(src, first)
    _convert(first, tmp_path / "second", segmenter=NoSam())
    assert _counts(tmp_path / "second") == _counts(first)


def test_zip_of_an_export(tmp_path):
    src = roboflow_coco(tmp_path / "src")
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(src.rglob("*")):
            zf.write(p, p.relative_to(src).as_posix())
    out = tmp_path / "out"
    _convert(archive, out)
    assert _counts(out) == expected_counts()


@pytest.mark.parametrize("entry", ["../evil.txt", "/abs/evil.txt", "a/../../evil.txt"])
def test_zip_entries_outside_the_target_are_refused(tmp_path, entry):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("train/_annotations.coco.json", "{}")
        zf.writestr(entry, "x")
    with pytest.raises(SamlabelError, match="would land outside the target"):
        convert(archive, tmp_path / "out", progress=False)
    assert not (tmp_path / "evil.txt").exists()


def _problems(report):
    return {(p["where"], p["problem"].split(" (")[0], p["action"]) for p in report["source_problems"]}


def test_yolo_bad_input_is_reported_with_file_and_line(tmp_path):
    src = roboflow_yolo(tmp_path / "src")
    labels = src / "train" / "labels"
    (labels / "a_jpg.rf.1.txt").write_text(
        "\ufeff0 0.5 0.5 0.2 0.2\n"  # 1: fine, after a byte-order mark
        "zero 0.5 0.5 0.2 0.2\n"  # 2: malformed
        "7 0.5 0.5 0.2 0.2\n"  # 3: unknown class id
        "1 0.95 0.5 0.2 0.2\n"  # 4: partly outside -> clipped
        "1 1.5 0.5 0.2 0.2\n"  # 5: empty after clipping
        "2 0.5 0.5 0 0.2\n"  # 6: zero size
        "2 0.5 0.5\n"  # 7: wrong value count
        "1.0 0.5 0.5 0.3 0.3\n"  # 8: fine, a class id written as a float (as Ultralytics accepts)
        "1.5 0.5 0.5 0.3 0.3\n"  # 9: malformed: no such class id
    )
    (labels / "orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (src / "train" / "labels" / "b_jpg.rf.2.txt").unlink()  # an unlabeled image
    out = tmp_path / "out"
    report = _convert(src, out).report
    f = "train/labels/a_jpg.rf.1.txt"
    assert _problems(report) >= {
        (f"{f}:2", "malformed line 'zero 0.5 0.5 0.2 0.2'", "skipped"),
        (f"{f}:3", "class id 7 outside 0..2", "skipped"),
        (f"{f}:4", "box partly outside the image", "clipped"),
        (f"{f}:5", "box empty after clipping to the image", "skipped"),
        (f"{f}:6", "box of zero or negative size", "skipped"),
        (f"{f}:7", "expected 4 box values or >= 6 polygon values, got 2", "skipped"),
        (f"{f}:9", "malformed line '1.5 0.5 0.5 0.3 0.3'", "skipped"),
        ("train/labels/orphan.txt", "label file without an image", "ignored"),
    }
    assert report["unlabeled_images"] == ["train/b_jpg.rf.2.jpg"]
    assert "b_jpg.rf.2.jpg" not in coco_by_image(out, "train")  # left out by default
    anns = coco_by_image(out, "train")["a_jpg.rf.1.jpg"]
    assert [(a["source_id"], a["category_id"] - 1) for a in anns] == [(1, 0), (8, 1)]
    # the clipped box (line 4) was kept as a prompt; its region has no object, so its mask is empty: reported
    assert [(d["source_id"], d["reason"]) for d in report["dropped_instances"]] == [(4, "empty mask")]


def test_keep_unlabeled(tmp_path):
    src = roboflow_yolo(tmp_path / "src")
    (src / "train" / "labels" / "b_jpg.rf.2.txt").unlink()
    out = tmp_path / "out"
    _convert(src, out, keep_unlabeled=True)
    assert coco_by_image(out, "train")["b_jpg.rf.2.jpg"] == []
    assert (out / "train" / "labels" / "b_jpg.rf.2.txt").read_text() == ""


def test_coco_bad_input_is_reported_with_ids(tmp_path):
    src = roboflow_coco(tmp_path / "src")
    path = src / "train" / "_annotations.coco.json"
    coco = json.loads(path.read_text())
    coco["annotations"] += [
        {"id": 100, "image_id": 999, "category_id": 1, "bbox": [1, 1, 5, 5]},  # unknown image id
        {"id": 101, "image_id": 0, "category_id": 77, "bbox": [1, 1, 5, 5]},  # unknown category
        {"id": 0, "image_id": 0, "category_id": 1, "bbox": [1, 1, 5, 5]},  # duplicate annotation id
        {"id": 102, "image_id": 0, "category_id": 1, "bbox": [1, 1, -5, 5]},  # negative size
        {"id": 103, "image_id": 0, "category_id": 1, "bbox": [150, 100, 30, 30]},  # partly outside: clipped
    ]
    coco["images"] += [
        {"id": 0, "file_name": "dup.jpg", "height": 120, "width": 160},  # duplicate image id
        {"id": 50, "file_name": "missing.jpg", "height": 120, "width": 160},  # file not there
        {"id": 51, "file_name": "/etc/passwd", "height": 120, "width": 160},  # absolute: refused
        {"id": 52, "file_name": "../../secret.jpg", "height": 120, "width": 160},  # escapes root: refused
    ]
    path.write_text(json.dumps(coco))
    report = _convert(src, tmp_path / "out").report
    j = "_annotations.coco.json"
    assert _problems(report) >= {
        (f"{j}: annotation 100", "unknown image id 999", "skipped"),
        (f"{j}: annotation 101", "unknown category id 77", "skipped"),
        (f"{j}: annotation 0", "duplicate annotation id", "skipped"),
        (f"{j}: annotation 102", "bbox of zero or negative size [1, 1, -5, 5]", "skipped"),
        (f"{j}: annotation 103", "box partly outside the image", "clipped"),
        (f"{j}: image 0", "duplicate image id", "second entry ignored"),
        (f"{j}: image 50", "image file 'missing.jpg' not found in " + str(src / "train"), "skipped"),
        (f"{j}: image 51", "file_name '/etc/passwd' is absolute or escapes the image folder", "refused"),
        (f"{j}: image 52", "file_name '../../secret.jpg' is absolute or escapes the image folder", "refused"),
    }


def test_bare_pair_needs_names(tmp_path):
    src = roboflow_yolo(tmp_path / "src")
    pair = tmp_path / "pair"
    shutil.copytree(src / "train", pair)
    with pytest.raises(SamlabelError, match="--names a,b,c or a classes.txt"):
        convert(pair, tmp_path / "o1", progress=False)
    _convert(pair, tmp_path / "o2", names=NAMES)
    (pair / "classes.txt").write_text("\n".join(NAMES))
    _convert(pair, tmp_path / "o3")
    assert _counts(tmp_path / "o3") == {"train": expected_counts()["train"]}


def test_nothing_recognised_says_what_was_looked_for(tmp_path):
    (tmp_path / "junk").mkdir()
    with pytest.raises(SamlabelError, match="no dataset recognised. Looked for: data.yaml"):
        convert(tmp_path / "junk", tmp_path / "out", progress=False)


def test_link_instead_of_copy(tmp_path):
    src = roboflow_yolo(tmp_path / "src")
    out = tmp_path / "out"
    _convert(src, out, link=True)
    a, b = out / "train" / "images" / "a_jpg.rf.1.jpg", src / "train" / "images" / "a_jpg.rf.1.jpg"
    assert a.stat().st_ino == b.stat().st_ino or a.is_symlink()


@pytest.mark.parametrize(
    "yaml_text",
    [
        "path: {root}\ntrain: train/images\nval: valid/images\ntest: test/images\nnames: {{0: ball, 1: cube, 2: cone}}\n",
        "path: .\ntrain: train/images\nval: valid/images\ntest: test/images\nnames: [ball, cube, cone]\n",
        "train: {root}/train/images\nval: {root}/valid/images\ntest: {root}/test/images\nnames: [ball, cube, cone]\n",
        "train: train/images\nval: valid/images\ntest: test/images\nnc: 3\nnames: ['ball', 'cube', 'cone']\n",
    ],
    ids=["path-absolute-names-dict", "path-relative", "absolute-splits", "relative-splits"],
)
def test_data_yaml_variants(tmp_path, yaml_text):
    src = roboflow_yolo(tmp_path / "src")
    (src / "data.yaml").write_text(yaml_text.format(root=src))
    out = tmp_path / "out"
    _convert(src / "data.yaml", out)
    assert yaml.safe_load((out / "data.yaml").read_text())["names"] == NAMES
    assert _counts(out) == expected_counts()


def test_out_overlapping_the_source_is_refused_and_nothing_is_deleted(tmp_path):
    src = roboflow_yolo(tmp_path / "src")
    for out in (src, src / "converted"):
        with pytest.raises(SamlabelError, match="overlaps the source"):
            convert(src, out, progress=False, overwrite=True, segmenter=FakeSegmenter())
    assert _counts_source(src) == 5


def test_out_inside_the_image_folder_of_a_bare_coco_json_is_refused(tmp_path):
    json_path, images, _ = coco_polygons_with_two_part_object(tmp_path / "src")
    elsewhere = tmp_path / "json" / json_path.name  # the json apart from its images
    elsewhere.parent.mkdir()
    shutil.copy(json_path, elsewhere)
    with pytest.raises(SamlabelError, match="overlaps --images"):
        convert(elsewhere, images / "seg", images=images, progress=False, segmenter=NoSam())
    assert not (images / "seg").exists()


def _counts_source(src):
    return sum(1 for s in ("train", "valid", "test") for _ in (src / s / "images").iterdir())


def test_rle_of_another_size_goes_to_sam_instead_of_aborting(tmp_path):
    src = roboflow_coco(tmp_path / "src")
    path = src / "train" / "_annotations.coco.json"
    coco = json.loads(path.read_text())
    for ann in coco["annotations"]:
        ann["segmentation"] = {"size": [10, 10], "counts": [0, 100]}  # made for another image size
    path.write_text(json.dumps(coco))
    seg = FakeSegmenter()
    report = _convert(src, tmp_path / "out", segmenter=seg).report
    assert seg.calls > 0 and any("RLE size [10, 10]" in p["problem"] for p in report["source_problems"])
    assert _counts(tmp_path / "out") == expected_counts()


def test_malformed_coco_annotations_never_stop_the_run(tmp_path):
    src = roboflow_coco(tmp_path / "src")
    path = src / "train" / "_annotations.coco.json"
    coco = json.loads(path.read_text())
    flat = [10, 10, 40, 10, 40, 40, 10, 40]
    coco["annotations"] += [
        {"id": "a1", "image_id": 0, "category_id": 1, "bbox": [1, 1, 5, 5]},  # string id: kept, indexed
        {"image_id": 0, "category_id": 1, "segmentation": flat, "bbox": [10, 10, 30, 30]},  # flat polygon, no id
        {"image_id": 0, "category_id": 1, "bbox": "oops"},  # malformed
        {"image_id": 0, "category_id": 1, "bbox": [1, 2, 3, 4], "segmentation": [["x"]]},  # malformed
        {"id": 300, "image_id": [0], "category_id": 1, "bbox": [1, 2, 3, 4]},  # a list for an id
    ]
    coco["images"].append({"id": 77, "file_name": "a_jpg.rf.1.jpg"})  # listed twice
    coco["images"] += ["b.jpg", {"id": [5], "file_name": "c.jpg"}]  # not an object; a list for an id
    path.write_text(json.dumps(coco))
    report = _convert(src, tmp_path / "out").report
    problems = {p["problem"].split(" (")[0] for p in report["source_problems"]}
    assert "malformed annotation" in problems and "file_name 'a_jpg.rf.1.jpg' listed twice" in problems
    assert {"id, image_id or category_id is not a number or string", "not an object with a number or string id"} <= (
        problems
    )
    assert sum(report["images"].values()) == 5


def test_coco_crowd_and_sizeless_images_are_left_out(tmp_path):
    src = roboflow_coco(tmp_path / "src")
    path = src / "train" / "_annotations.coco.json"
    coco = json.loads(path.read_text())
    first = coco["annotations"][0]
    coco["annotations"].append({**first, "id": 900, "iscrowd": 1})  # a crowd region: not one instance
    sizeless = coco["images"][0]
    del sizeless["width"]
    path.write_text(json.dumps(coco))
    out = tmp_path / "out"
    report = _convert(src, out, keep_unlabeled=True).report
    j = "_annotations.coco.json"
    assert _problems(report) >= {
        (f"{j}: annotation 900", "crowd annotation", "skipped, as Ultralytics' convert_coco does"),
        (f"{j}: image {sizeless['id']}", "no width/height", "image left out"),
    }
    # not taken for an unlabeled image either: it is not in the dataset at all
    assert all(sizeless["file_name"] not in u for u in report["unlabeled_images"])
    assert not list(out.glob(f"*/images/{sizeless['file_name']}"))
    assert 900 not in [a.get("source_id") for anns in coco_by_image(out, "train").values() for a in anns]


def test_coco_size_that_is_not_the_files_is_reported_and_sam_redoes_its_rles(tmp_path, monkeypatch):
    src = roboflow_coco(tmp_path / "src", polygons=True)  # every object has a mask: SAM is not needed ...
    path = src / "train" / "_annotations.coco.json"
    coco = json.loads(path.read_text())
    img = coco["images"][0]
    img["height"], img["width"] = 2 * img["height"], 2 * img["width"]  # the file is half that size
    h, w = img["height"], img["width"]
    for ann in coco["annotations"]:
        if ann["image_id"] == img["id"]:  # an exact RLE, for the size the json claims
            ann["segmentation"] = {"size": [h, w], "counts": [0, h * w]}
            ann["bbox"] = [0, 0, w, h]
    path.write_text(json.dumps(coco))
    sam = FakeSegmenter()
    monkeypatch.setattr("pipeline.sam.Segmenter", lambda *a, **k: sam)  # what --segmenter would load
    report = convert(src, tmp_path / "out", progress=False).report  # no segmenter object: built when needed
    assert sam.calls == 1  # ... except for the image whose RLEs were made for another size
    [problem] = [p for p in report["source_problems"] if p["where"].endswith(img["file_name"])]
    assert (
        problem["problem"] == f"labels are for a {w}x{h} image, the file is {w // 2}x{h // 2} (width x height, upright)"
    )
    assert _counts(tmp_path / "out") == expected_counts()


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda coco: [coco], "not a COCO json (the top level is a list"),
        (lambda coco: {**coco, "categories": [{"id": 1}]}, "each with an id and a name"),
        (lambda coco: {**coco, "categories": coco["categories"] + [{"id": 1, "name": "again"}]}, "id 1 is used by"),
    ],
    ids=["list", "nameless-category", "duplicate-category-id"],
)
def test_unreadable_coco_structure_is_one_clear_error(tmp_path, change, message):
    src = roboflow_coco(tmp_path / "src")
    path = src / "train" / "_annotations.coco.json"
    path.write_text(json.dumps(change(json.loads(path.read_text()))))
    with pytest.raises(SamlabelError, match=message.replace("(", r"\(")):
        convert(src, tmp_path / "out", progress=False, segmenter=FakeSegmenter())


def test_out_beside_a_bare_coco_json_is_accepted(tmp_path):
    """``convert data/instances.json --images data/imgs --out data/seg``: the json's folder is not the source."""
    json_path, images, _ = coco_polygons_with_two_part_object(tmp_path / "data")
    report = _convert(json_path, tmp_path / "data" / "seg", images=images, segmenter=NoSam()).report
    assert report["instances_total"] == 2


@pytest.mark.parametrize(
    "out, message",
    [
        ("data", "overlaps the source"),  # holds the json (and the images)
        (".", "overlaps the source"),  # an ancestor of both
        ("data/imgs", "overlaps --images"),
        ("data/imgs/seg", "overlaps --images"),
        ("data/instances.json", "overlaps the source"),
    ],
)
def test_out_holding_a_bare_coco_json_or_touching_its_images_is_refused(tmp_path, out, message):
    json_path, images, _ = coco_polygons_with_two_part_object(tmp_path / "data")
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(SamlabelError, match=message):
        convert(json_path, tmp_path / out, images=images, progress=False, overwrite=True, segmenter=NoSam())
    assert sorted(p for p in tmp_path.rglob("*")) == before
