from __future__ import annotations

import json
import shutil

import pytest

from pipeline import label
from pipeline.cli import main
from pipeline.validate import validate
from tests.conftest import FakeDetector, FakeSegmenter


@pytest.fixture
def dataset(image_folder, tmp_path):
    out = tmp_path / "ds"
    label(image_folder, out, detector=FakeDetector(), segmenter=FakeSegmenter(), progress=False, split="train=1")
    assert validate(out) == []
    return out


def _edit_coco(out, fn):
    path = out / "train" / "_annotations.coco.json"
    coco = json.loads(path.read_text())
    fn(coco)
    path.write_text(json.dumps(coco))


def _first_label(out):
    return next(p for p in sorted((out / "train" / "labels").glob("*.txt")) if p.read_text())


@pytest.mark.parametrize(
    "break_it, message",
    [
        (lambda out: _first_label(out).write_text("7 0.1 0.1 0.2 0.2 0.3 0.1\n"), "class id 7 outside 0..2"),
        (lambda out: _first_label(out).write_text("0 0.1 0.1 1.5 0.2 0.3 0.1\n"), "outside [0, 1]"),
        (lambda out: _first_label(out).write_text("0 0.1 0.1 0.2\n"), "even number (>= 6)"),
        (
            lambda out: (out / "train" / "labels" / "sub_deeper_c.txt").unlink(),
            "train/images/sub_deeper_c.png: no label file",
        ),
        (lambda out: (out / "train" / "labels" / "ghost.txt").write_text(""), "ghost.txt: no image with this stem"),
        (
            lambda out: (out / "train" / "images" / "sub_deeper_c.png").unlink(),
            "'sub_deeper_c.png' is not in train/images",
        ),
        (lambda out: _edit_coco(out, lambda c: c["annotations"][0].update(area=1)), "area 1 but the mask has"),
        (lambda out: _edit_coco(out, lambda c: c["annotations"][0].update(category_id=9)), "unknown category_id 9"),
        (lambda out: _edit_coco(out, lambda c: c["annotations"].pop()), "YOLO instances but"),
        (lambda out: _edit_coco(out, lambda c: c["annotations"][1].update(id=1)), "duplicate id"),
        (lambda out: _edit_coco(out, lambda c: c["annotations"][0].update(bbox=[0, 0, 0, 5])), "bbox"),
        (lambda out: (out / "data.yaml").write_text("names: [a, b]\nnc: 3\n"), "nc is 3 but 2 names"),
        # too malformed to check: reported, never a stack trace
        (lambda out: (out / "data.yaml").write_text("- a\n- b\n"), "data.yaml: expected a mapping"),
        (lambda out: _edit_coco(out, lambda c: c["images"][0].pop("height")), "cannot be checked (KeyError"),
        (lambda out: _edit_coco(out, lambda c: c["annotations"][0].update(bbox=None)), "cannot be checked"),
    ],
)
def test_each_problem_is_reported(dataset, break_it, message):
    break_it(dataset)
    problems = validate(dataset)
    assert any(message in p for p in problems), problems


def test_image_ultralytics_would_drop_is_reported(dataset):
    from PIL import Image

    Image.new("RGB", (64, 5)).save(dataset / "train" / "images" / "sub_deeper_c.png")  # had no objects
    assert any("64x5 pixels; Ultralytics drops images under 10 px" in p for p in validate(dataset))


def test_split_paths_resolve_as_ultralytics_resolves_them(dataset):
    # Roboflow writes paths relative to the dataset's parent; Ultralytics retries them without "../"
    (dataset / "data.yaml").write_text("names: [ball, cube, cone]\nnc: 3\ntrain: ../train/images\nval: train/images\n")
    assert validate(dataset) == []
    (dataset / "data.yaml").write_text("names: [ball, cube, cone]\nnc: 3\ntrain: ../nowhere/images\nval: x/images\n")
    assert [p for p in validate(dataset) if p.startswith("data.yaml")] == [
        "data.yaml: train: ../nowhere/images is not a folder",
        "data.yaml: val: x/images is not a folder",
    ]


def test_same_image_in_two_splits(dataset):
    (dataset / "valid" / "images").mkdir(parents=True)
    shutil.copy(dataset / "train" / "images" / "sub_deeper_c.png", dataset / "valid" / "images" / "c2.png")
    assert any("same image in several splits" in p for p in validate(dataset))


def test_cli_exit_codes(dataset, capsys):
    assert main(["validate", str(dataset)]) == 0
    _first_label(dataset).write_text("5 0 0 1 1 0 1\n")
    assert main(["validate", str(dataset)]) == 1
    assert "class id 5" in capsys.readouterr().out
