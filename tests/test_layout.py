"""The COCO layout (annotations/instances_<split>.json, images/<split>/): written, validated, read back, converted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from pycocotools.coco import COCO

from pipeline import convert, label, validate
from pipeline.errors import SamlabelError
from pipeline.formats import layout
from tests.conftest import FakeDetector, FakeSegmenter
from tests.helpers import assert_valid, ultralytics_segment_labels


def _label(src, out, **kw):
    result = label(src, out, detector=FakeDetector(), segmenter=FakeSegmenter(), progress=False, **kw)
    assert_valid(out)
    return result.report


def _by_image(out: Path, paths: layout.Layout) -> dict[str, list[dict]]:
    """split/file_name -> annotations (category, area, bbox, mask), loaded with pycocotools."""
    found = {}
    for split in ("train", "valid", "test"):
        path = out / paths.coco_file(split)
        if not path.is_file():
            continue
        coco = COCO(str(path))
        for img in coco.imgs.values():
            anns = [coco.anns[a] for a in sorted(coco.getAnnIds(imgIds=[img["id"]]))]
            found[f"{split}/{img['file_name']}"] = [
                (a["category_id"], a["area"], a["bbox"], coco.annToMask(a).tobytes()) for a in anns
            ]
    return found


def test_coco_layout_files_load_resolve_and_match_the_report(image_folder, tmp_path):
    out = tmp_path / "ds"
    report = _label(image_folder, out, layout="coco")
    assert report["settings"]["formats"] == ["coco"]  # coco alone unless formats are asked for
    top = sorted(p.name for p in out.iterdir())
    assert top == [".samlabel", "annotations", "images", "report.html", "report.json"]  # no data.yaml, no labels/
    assert '<img class="thumb"' in (out / "report.html").read_text()  # the picture report reads this layout too
    images = instances = 0
    for split, n in report["images"].items():
        coco = COCO(str(out / "annotations" / f"instances_{split}.json"))
        assert len(coco.imgs) == n == len(list((out / "images" / split).iterdir()))
        for img in coco.imgs.values():
            assert (out / "images" / split / img["file_name"]).is_file()  # file_name is relative to images/<split>
        images += n
        instances += len(coco.anns)
    assert images == 6 and instances == report["instances_total"] == 8
    assert {d["image"].split("/")[0] for d in report["dropped_instances"]} == {"images"}


def test_coco_layout_with_yolo_labels_trains_with_ultralytics(image_folder, tmp_path):
    """YOLO labels asked for with the COCO layout go to labels/<split>/, where Ultralytics looks for images/<split>."""
    out = tmp_path / "ds"
    report = _label(image_folder, out, layout="coco", formats="yolo,coco")
    assert sorted(p.name for p in out.iterdir()) == [
        ".samlabel",
        "annotations",
        "data.yaml",
        "images",
        "labels",
        "report.html",
        "report.json",
    ]
    assert sorted(p.name for p in (out / "labels").iterdir()) == sorted(report["images"])
    loaded = ultralytics_segment_labels(out)
    assert sum(len(lb["segments"]) for labels in loaded.values() for lb in labels) == report["instances_total"]


@pytest.mark.parametrize("there, back", [("coco", "roboflow"), ("roboflow", "coco")])
def test_round_trip_between_layouts_keeps_every_instance(image_folder, tmp_path, there, back):
    first = tmp_path / there
    _label(image_folder, first, layout=there)
    second = tmp_path / back
    convert(first, second, layout=back, segmenter=FakeSegmenter(), progress=False)
    assert_valid(second)
    assert _by_image(second, layout.get(back)) == _by_image(first, layout.get(there))
    assert validate(second) == []


def test_a_coco_layout_from_elsewhere_is_detected_with_val_as_valid(image_folder, tmp_path):
    """A COCO-layout dataset not written by samlabel (split 'val'): convert detects it."""
    src = tmp_path / "src"
    ds = tmp_path / "made"
    _label(image_folder, ds, layout="coco", split="train=0.5,valid=0.5")
    shutil.copytree(ds / "images", src / "images")
    shutil.copytree(ds / "annotations", src / "annotations")
    (src / "images" / "valid").rename(src / "images" / "val")
    (src / "annotations" / "instances_valid.json").rename(src / "annotations" / "instances_val.json")
    result = convert(src, tmp_path / "out", segmenter=FakeSegmenter(), progress=False)
    assert result.report["source"]["detected"].startswith("COCO layout")
    assert result.report["images"] == json.loads((ds / "report.json").read_text())["images"]


def test_validate_checks_the_coco_layout(image_folder, tmp_path):
    out = tmp_path / "ds"
    _label(image_folder, out, layout="coco", split="train=1")
    victim = sorted((out / "images" / "train").iterdir())[0]
    victim.unlink()
    (out / "annotations" / "instances_test.json").write_text("{}")  # no images/test/ beside it
    problems = validate(out)
    assert f"annotations/instances_train.json: image 1 {victim.name!r} is not in images/train" in problems
    assert "annotations/instances_test.json: no image folder images/<split>/ for it" in problems


def test_evaluate_reads_the_coco_layout(image_folder, tmp_path):
    from pipeline.evaluate import evaluate

    _label(image_folder, tmp_path / "coco", layout="coco")
    _label(image_folder, tmp_path / "rf")
    r = evaluate(tmp_path / "coco", tmp_path / "rf")
    assert (r["images"]["matched"], r["images"]["by_path"]) == (6, 6)
    assert (r["matched"], r["missed"], r["unmatched"]) == (8, 0, 0) and r["mask_iou"]["mean"] == 1.0


def test_overwrite_clears_the_other_layout(image_folder, tmp_path):
    out = tmp_path / "ds"
    _label(image_folder, out)
    _label(image_folder, out, layout="coco", overwrite=True)
    assert not (out / "train").exists() and not (out / "data.yaml").exists()


def test_an_unknown_layout_is_refused():
    with pytest.raises(SamlabelError, match=r"layout: expected one of \['roboflow', 'coco'\], got 'voc'"):
        label([], "x", layout="voc")


@pytest.mark.slow
def test_datumaro_reads_the_coco_layout_as_coco_instances(image_folder, tmp_path):
    """Datumaro's coco_instances importer (the layout detectron2 and MMDetection expect) finds every image and
    annotation. Datumaro is not a dependency: run where it is installed."""
    dm = pytest.importorskip("datumaro")
    out = tmp_path / "ds"
    report = _label(image_folder, out, layout="coco")
    assert dm.Environment().detect_dataset(str(out)) == ["coco_instances"]
    dataset = dm.Dataset.import_from(str(out), "coco_instances")
    assert {s: len(dataset.get_subset(s)) for s in dataset.subsets()} == report["images"]
    # one Polygon (or Mask) and one Bbox per COCO annotation, grouped by its id
    shapes = [a for item in dataset for a in item.annotations if type(a).__name__ in ("Polygon", "Mask")]
    assert len(shapes) == len({(item.id, a.group) for item in dataset for a in item.annotations})
    assert len(shapes) == report["instances_total"]
    names = [c.name for c in dataset.categories()[dm.AnnotationType.label].items]
    assert names == report["names"]
    assert all(item.media.path.startswith(str(out / "images" / item.subset)) for item in dataset)
