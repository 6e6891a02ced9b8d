from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from pycocotools.coco import COCO

from pipeline.formats import data_yaml
from pipeline.formats.coco import categories, to_annotation, to_rle, to_segmentation, write_coco
from pipeline.formats.yolo import labels_dir_for, parse_line, read_label_file, write_label_file
from pipeline.formats.yolo import to_line as to_yolo_line
from pipeline.masks import mask_to_polygons, mask_to_rle, merge_polygons
from pipeline.types import CropMask


def to_coco_annotation(*, class_id, mask, polygons, hw, encoding="polygon", **kw):
    """The annotation the run writes for one mask (its segmentation as polygons or RLE)."""
    rle = mask_to_rle(mask, hw) if encoding == "rle" else None
    seg = to_segmentation(polygons if rle is None else None, rle)
    return to_annotation(class_id=class_id, segmentation=seg, area=mask.area, mask_xyxy=mask.xyxy, **kw)


def _two_part():
    m = np.zeros((4, 6), bool)
    m[0:2, 0:2] = True
    m[2:4, 4:6] = True
    m[3, 3] = True
    return CropMask.from_full(m)


@pytest.mark.parametrize(
    "class_id, polygon, hw, expected",
    [
        # a square in a 10 x 20 image: x divided by 20, y by 10
        (
            3,
            [[2, 1], [2, 5], [10, 5], [10, 1]],
            (10, 20),
            "3 0.100000 0.100000 0.100000 0.500000 0.500000 0.500000 0.500000 0.100000",
        ),
        # coordinates outside the image are clipped into [0, 1]
        (0, [[-1, 0], [0, 12], [25, 3]], (10, 20), "0 0.000000 0.000000 0.000000 1.000000 1.000000 0.300000"),
    ],
)
def test_yolo_line_exact(class_id, polygon, hw, expected):
    assert to_yolo_line(class_id, np.array(polygon, float), hw) == expected


def test_yolo_line_of_two_part_mask_is_one_line():
    parts = mask_to_polygons(_two_part())
    line = to_yolo_line(1, merge_polygons(parts), (4, 6))
    assert line == (
        "1 0.541667 0.812500 0.291667 0.437500 0.291667 0.062500 0.041667 0.062500 0.041667 0.437500 "
        "0.291667 0.437500 0.541667 0.812500 0.541667 0.937500 0.958333 0.937500 0.958333 0.562500 "
        "0.708333 0.562500 0.708333 0.687500"
    )


def test_yolo_line_needs_three_points():
    with pytest.raises(ValueError, match="at least 3 points"):
        to_yolo_line(0, np.zeros((2, 2)), (4, 4))


def test_label_file_round_trip_and_empty_file(tmp_path):
    write_label_file(tmp_path / "a.txt", ["0 0.1 0.2 0.3 0.4 0.5 0.6"])
    write_label_file(tmp_path / "empty.txt", [])
    assert (tmp_path / "empty.txt").read_bytes() == b""
    [(c, poly)] = read_label_file(tmp_path / "a.txt")
    assert c == 0 and poly.tolist() == [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]]
    assert not list(tmp_path.glob(".*tmp"))  # no temp files left behind


def test_coco_annotation_polygon_exact():
    mask = _two_part()
    ann = to_coco_annotation(
        class_id=1,
        mask=mask,
        polygons=mask_to_polygons(mask),
        hw=(4, 6),
        det_xyxy=[0.5, 0, 6, 4],
        confidence=0.5,
        mask_score=0.25,
    )
    assert ann == {
        "category_id": 2,  # class 1 -> category id 2 (ids follow data.yaml order, from 1)
        "segmentation": [  # every part of the two-part mask
            [3.25, 3.25, 3.25, 3.75, 5.75, 3.75, 5.75, 2.25, 4.25, 2.25, 4.25, 2.75],
            [0.25, 0.25, 0.25, 1.75, 1.75, 1.75, 1.75, 0.25],
        ],
        "area": 9,  # mask pixels, not box area
        "bbox": [0, 0, 6, 4],  # the mask's tight box
        "iscrowd": 0,
        "det_bbox": [0.5, 0, 5.5, 4],  # the detector's box, kept
        "confidence": 0.5,
        "mask_score": 0.25,
    }


def test_coco_annotation_rle_is_lossless_and_omits_nan_scores():
    mask = _two_part()
    ann = to_coco_annotation(class_id=0, mask=mask, polygons=[], hw=(4, 6), encoding="rle")
    assert ann["segmentation"] == {"size": [4, 6], "counts": "02207OI100"}
    assert "confidence" not in ann and "mask_score" not in ann and "det_bbox" not in ann


def test_write_coco_loads_in_pycocotools(tmp_path):
    mask = _two_part()
    ann = to_coco_annotation(class_id=1, mask=mask, polygons=mask_to_polygons(mask), hw=(4, 6))
    images = [
        ({"file_name": "a.png", "height": 4, "width": 6}, [ann, ann]),
        ({"file_name": "b.png", "height": 4, "width": 6}, []),
    ]
    path = tmp_path / "_annotations.coco.json"
    assert write_coco(path, names=["x", "y"], images=iter(images)) == (2, 2)
    coco = COCO(str(path))
    assert sorted(coco.getImgIds()) == [1, 2]
    assert [a["id"] for a in coco.loadAnns(coco.getAnnIds(imgIds=[1]))] == [1, 2]
    assert np.array_equal(coco.annToMask(coco.anns[1]).astype(bool), mask.full((4, 6)))
    assert json.loads(path.read_text())["categories"] == categories(["x", "y"])
    assert [p.name for p in tmp_path.iterdir()] == ["_annotations.coco.json"]


@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["umask-022", "umask-027"])
def test_finished_files_get_the_umask_permissions(tmp_path, umask):
    # Temporary files are private (mkstemp: 0600); the finished dataset must not be.
    script = (
        "import os, sys; os.umask(int(sys.argv[1], 8))\n"
        "from pathlib import Path\n"
        "from pipeline import fsio\n"
        "out = Path(sys.argv[2])\n"
        "fsio.write_text(out / 'a.txt', 'x')\n"
        "fsio.copy_file(out / 'a.txt', out / 'b.txt')\n"
        "print(oct(os.stat(out / 'a.txt').st_mode & 0o777), oct(os.stat(out / 'b.txt').st_mode & 0o777))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, oct(umask)[2:], str(tmp_path)], capture_output=True, text=True, check=True
    )
    expected = oct(0o666 & ~umask)
    assert done.stdout.split() == [expected, expected]


@pytest.mark.parametrize(
    "line, expected",
    [
        ("", None),  # blank: no object
        ("2 0.5 0.5 0.2 0.2", (2, [0.5, 0.5, 0.2, 0.2])),  # a box line
        ("1.0 0.1 0.2 0.3 0.4 0.5 0.6", (1, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6])),  # "1.0": Ultralytics reads ids as numbers
    ],
)
def test_yolo_parse_line(line, expected):
    got = parse_line(line)
    assert got is None if expected is None else (got[0], got[1].tolist()) == expected


@pytest.mark.parametrize(
    "line, message",
    [
        ("a 0.1 0.2", "malformed line"),  # not a number
        ("1.5 0.1 0.2 0.3 0.4", "malformed line"),  # class id not whole
        ("0 nan 0.2 0.3 0.4", "non-finite"),  # NaN coordinate
    ],
)
def test_yolo_parse_line_errors(line, message):
    with pytest.raises(ValueError, match=message):
        parse_line(line)


def test_labels_dir_follows_ultralytics_rule(tmp_path):
    assert labels_dir_for(tmp_path / "images" / "train") == tmp_path / "labels" / "train"
    assert labels_dir_for(tmp_path / "images" / "x" / "images") == tmp_path / "images" / "x" / "labels"
    assert labels_dir_for(tmp_path / "pics") == tmp_path / "labels"


# the 3 x 2 rectangle x in [1, 4], y in [1, 3]: the pixels whose centres lie inside, rows 1-2 x columns 1-3
RECT_PIXELS = [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3)]


@pytest.mark.parametrize(
    "seg, pixels",
    [
        ([[1, 1, 4, 1, 4, 3, 1, 3]], RECT_PIXELS),  # polygon parts
        ([1, 1, 4, 1, 4, 3, 1, 3], RECT_PIXELS),  # one flat polygon, as some tools write it
        # uncompressed RLE, column-major runs over 4 rows: 7 off, 2 on (flat 7, 8), 2 off, 2 on (flat 11, 12), 11 off;
        # flat index i is (row i % 4, column i // 4)
        ({"size": [4, 6], "counts": [7, 2, 2, 2, 11]}, [(0, 2), (0, 3), (3, 1), (3, 2)]),
    ],
)
def test_to_rle_reads_every_segmentation_kind(seg, pixels):
    from pycocotools import mask as mask_utils

    rle = to_rle(seg, 4, 6)
    assert int(mask_utils.area(rle)) == len(pixels)
    assert [(int(r), int(c)) for r, c in np.argwhere(mask_utils.decode(rle))] == pixels


def test_to_rle_refuses_an_rle_of_another_size():
    with pytest.raises(ValueError, match="RLE size"):
        to_rle({"size": [5, 6], "counts": "02207OI100"}, 4, 6)


@pytest.mark.parametrize(
    "splits, expected",
    [
        (["train", "valid"], {"train": "train/images", "val": "valid/images"}),  # the usual pair
        (["train"], {"train": "train/images", "val": "train/images"}),  # val points at train
        (["valid", "test"], {"train": "valid/images", "val": "valid/images", "test": "test/images"}),
    ],
)
def test_data_yaml_always_has_train_and_val(splits, expected):
    data = data_yaml.to_data_yaml(["a", "b"], splits)
    assert data == {"nc": 2, "names": ["a", "b"], **expected}
    assert (data_yaml.missing_note(data, splits) is None) == ("train" in splits and "valid" in splits)


def test_data_yaml_names_and_split_names():
    assert data_yaml.parse_names({1: "b", 0: "a"}, "x") == ["a", "b"]
    assert data_yaml.canonical_split("val") == "valid" and data_yaml.canonical_split("test") == "test"
    entries = data_yaml.split_entries({"train": "t", "val": ["v1", "v2"], "valid": "ignored"})
    assert entries == [("train", "train", ["t"]), ("val", "valid", ["v1", "v2"])]
