"""Fixed runs whose outputs were recorded before the architecture change (``tests/golden/``).

Each case builds its input under a folder it is given, runs ``label`` or ``convert`` with the fake
stages of ``tests.conftest`` (deterministic geometry, no model), and the test compares the dataset
with the recorded one: label files and data.yaml byte for byte, COCO files as equal JSON (with the
input folder written as ``<SRC>``). ``python -m tests.golden_cases DIR [CASE ...]`` records them again.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import FakeDetector, FakeSegmenter, make_photos
from tests.roboflow import coco_polygons_with_two_part_object, disc_polygon, roboflow_coco, roboflow_yolo

GOLDEN = Path(__file__).parent / "golden"


def _label(src: Path, out: Path, **kw) -> None:
    import pipeline

    pipeline.label(
        make_photos(src / "photos"), out, detector=FakeDetector(), segmenter=FakeSegmenter(), progress=False, **kw
    )


def _convert(src: Path, out: Path, **kw) -> None:
    import pipeline

    pipeline.convert(src, out, segmenter=FakeSegmenter(), progress=False, **kw)


def _yolo_polygons(root: Path) -> Path:
    """A YOLO-seg pair (images/ + labels/ + classes.txt): polygon lines kept, a box line sent to SAM."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    Image.fromarray(np.asarray(Image.open(make_photos(root / "tmp") / "a.png"))).save(root / "images" / "p.png")
    shutil.rmtree(root / "tmp")
    poly = disc_polygon(60, 60, 25) / [160, 120]
    (root / "labels" / "p.txt").write_text(
        "1 " + " ".join(f"{v:.6f}" for v in poly.reshape(-1)) + "\n0 0.3 0.3 0.2 0.2\n"
    )
    (root / "classes.txt").write_text("ball\ncube\n")
    return root


def _coco_mixed(root: Path) -> tuple[Path, Path]:
    """A COCO json with a polygon, an RLE and a box-only annotation on one image."""
    from pycocotools import mask as mask_utils

    json_path, images, _ = coco_polygons_with_two_part_object(root)
    coco = json.loads(json_path.read_text())
    full = np.zeros((120, 160), np.uint8)
    full[70:100, 20:60] = 1
    rle = mask_utils.encode(np.asfortranarray(full))
    rle["counts"] = rle["counts"].decode()
    coco["annotations"] += [
        {"id": 3, "image_id": 7, "category_id": 5, "segmentation": rle, "bbox": [20, 70, 40, 30], "iscrowd": 0},
        {"id": 4, "image_id": 7, "category_id": 9, "bbox": [100, 70, 40, 40], "iscrowd": 0},
    ]
    json_path.write_text(json.dumps(coco))
    return json_path, images


CASES = {
    "label_polygon": lambda src, out: _label(src, out),
    "label_rle": lambda src, out: _label(src, out, coco_masks="rle", split="train=0.5,valid=0.3,test=0.2"),
    "convert_roboflow_yolo": lambda src, out: _convert(roboflow_yolo(src / "rf"), out),
    "convert_roboflow_coco": lambda src, out: _convert(roboflow_coco(src / "rf"), out),
    "convert_roboflow_coco_polygons": lambda src, out: _convert(roboflow_coco(src / "rf", polygons=True), out),
    "convert_yolo_polygons_rle": lambda src, out: _convert(_yolo_polygons(src / "pair"), out, coco_masks="rle"),
    "convert_coco_mixed": lambda src, out: _convert_coco(src, out),
    "convert_coco_mixed_resegment": lambda src, out: _convert_coco(src, out, resegment=True),
    "review_save_polygon": lambda src, out: _review(src, out),
    "review_save_rle": lambda src, out: _review(src, out, coco_masks="rle"),
}

#: Cases recorded with the quality signals in their COCO annotations: compared whole.
WHOLE = {"review_save_polygon", "review_save_rle"}


def _review(src: Path, out: Path, **kw) -> None:
    """A labelled dataset, then review saves: a class changed, a box moved, a mask redrawn (with and
    without SAM's scores), an instance deleted, one added, and an image only marked reviewed."""
    from pipeline.masks import CropMask, mask_to_rle
    from pipeline.review.store import InstanceEdit, ReviewStore, image_id

    _label(src, out, thresholds="min_box_fit=0.8", **kw)
    store = ReviewStore(out)

    def edits(rel: str) -> tuple[dict, list[InstanceEdit]]:
        image = store.image(image_id(rel))
        return image, [InstanceEdit(i["id"], i["class"], i["rle"]) for i in image["instances"]]

    image, keep = edits("sub/b.JPG")  # 3 instances
    hw = (image["height"], image["width"])
    bits = np.zeros((10, 14), bool)
    bits[2:9, 1:12] = True
    added = mask_to_rle(CropMask(bits, 50, 5), hw)
    first = dataclasses.replace(keep[0], class_name="cone", box=[10.5, 12.0, 48.25, 47.0])
    store.save(image_id("sub/b.JPG"), version=image["version"], reviewed=True,
               instances=[first, keep[2], InstanceEdit(None, "ball", added)])  # fmt: skip

    image, keep = edits("a.jpg")  # 2 instances: the second's mask redrawn, with SAM's scores
    hw = (image["height"], image["width"])
    grown = np.zeros(hw, bool)
    grown[45:100, 85:135] = True
    redrawn = mask_to_rle(CropMask.from_full(grown), hw)
    scores = {redrawn["counts"]: (0.8125, 0.875)}
    store.save(image_id("a.jpg"), version=image["version"], reviewed=False,
               instances=[keep[0], dataclasses.replace(keep[1], rle=redrawn)], known_mask=scores.get)  # fmt: skip

    image, keep = edits("sub/a.jpg")  # its mask redrawn without scores, another class
    hw = (image["height"], image["width"])
    disc = np.zeros(hw, bool)
    disc[40:85, 55:100] = True
    store.save(image_id("sub/a.jpg"), version=image["version"], reviewed=True,
               instances=[dataclasses.replace(keep[0], class_name="cube", rle=mask_to_rle(CropMask.from_full(disc), hw))])  # fmt: skip

    image, keep = edits("a.png")  # only marked reviewed
    store.save(image_id("a.png"), version=image["version"], reviewed=True, instances=keep)
    store.close()


def _convert_coco(src: Path, out: Path, **kw) -> None:
    json_path, images = _coco_mixed(src / "coco")
    _convert(json_path, out, images=images, **kw)


def dataset_files(out: Path, src: Path) -> dict[str, bytes | dict]:
    """The recorded part of a dataset: label files and data.yaml as bytes, COCO files as JSON."""
    files: dict[str, bytes | dict] = {}
    for p in sorted(out.rglob("*")):
        rel = p.relative_to(out).as_posix()
        if rel.startswith(".samlabel") or not p.is_file():
            continue
        if p.suffix == ".txt" or p.name == "data.yaml":
            files[rel] = p.read_bytes()
        elif p.name.endswith(".coco.json"):
            files[rel] = json.loads(p.read_text(encoding="utf-8").replace(str(src.resolve()), "<SRC>"))
    return files


def run_case(name: str, work: Path) -> tuple[Path, Path]:
    src, out = work / "src", work / "out"
    src.mkdir(parents=True)
    CASES[name](src, out)
    return src, out


def record(work: Path, names: list[str] | None = None) -> None:
    """Run every case (or those named) under ``work`` and store its files in ``tests/golden/<case>/``."""
    for name in names or CASES:
        src, out = run_case(name, work / name)
        target = GOLDEN / name
        shutil.rmtree(target, ignore_errors=True)
        for rel, content in dataset_files(out, src).items():
            dest = target / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                dest.write_bytes(content)
            else:
                dest.write_text(json.dumps(content, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    record(Path(sys.argv[1]), sys.argv[2:])
