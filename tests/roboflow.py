"""Synthetic datasets in the layouts real users bring: Roboflow YOLOv8 and COCO exports, COCO polygons."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from tests.conftest import draw_scene

NAMES = ["ball", "cube", "cone"]

# split -> image name -> discs (cx, cy, r, class)
SCENES = {
    "train": {
        "a_jpg.rf.1.jpg": [(30, 30, 12, 0), (100, 60, 20, 2)],
        "b_jpg.rf.2.jpg": [(60, 50, 25, 1)],
        "c_jpg.rf.3.jpg": [],
    },
    "valid": {"d_jpg.rf.4.jpg": [(40, 40, 15, 2), (120, 80, 10, 0), (80, 20, 8, 1)]},
    "test": {"e_jpg.rf.5.jpg": [(70, 60, 30, 0)]},
}
HW = (120, 160)


def _image(discs) -> np.ndarray:
    return draw_scene(hw=HW, discs=[(cx, cy, r) for cx, cy, r, _ in discs])


def _box(cx, cy, r):
    return cx - r - 2, cy - r - 2, cx + r + 3, cy + r + 3  # x0, y0, x1, y1 around the disc


def roboflow_yolo(root: Path) -> Path:
    """A Roboflow 'YOLOv8' export: data.yaml with ../train/images paths, box labels."""
    for split, scenes in SCENES.items():
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir(parents=True)
        for name, discs in scenes.items():
            Image.fromarray(_image(discs)).save(root / split / "images" / name, quality=100)
            lines = []
            for cx, cy, r, c in discs:
                x0, y0, x1, y1 = _box(cx, cy, r)
                w, h = HW[1], HW[0]
                lines.append(
                    f"{c} {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} {(x1 - x0) / w:.6f} {(y1 - y0) / h:.6f}"
                )
            (root / split / "labels" / (Path(name).stem + ".txt")).write_text("\n".join(lines) + "\n")
    (root / "data.yaml").write_text(
        "train: ../train/images\nval: ../valid/images\ntest: ../test/images\n\n"
        f"nc: {len(NAMES)}\nnames: {NAMES}\n\nroboflow:\n  workspace: me\n  project: balls\n  version: 1\n"
    )
    return root


def roboflow_coco(root: Path, *, polygons: bool = False) -> Path:
    """A Roboflow 'COCO' export: split folders with images and _annotations.coco.json (ids from 0,
    a project supercategory with id 0). With ``polygons``, disc outlines instead of empty segmentation."""
    for split, scenes in SCENES.items():
        (root / split).mkdir(parents=True)
        cats = [{"id": 0, "name": "balls-x1", "supercategory": "none"}] + [
            {"id": i + 1, "name": n, "supercategory": "balls-x1"} for i, n in enumerate(NAMES)
        ]
        images, anns = [], []
        for i, (name, discs) in enumerate(scenes.items()):
            Image.fromarray(_image(discs)).save(root / split / name, quality=100)
            images.append({"id": i, "license": 1, "file_name": name, "height": HW[0], "width": HW[1]})
            for cx, cy, r, c in discs:
                x0, y0, x1, y1 = _box(cx, cy, r)
                seg = [disc_polygon(cx, cy, r).reshape(-1).tolist()] if polygons else []
                anns.append(
                    {
                        "id": len(anns),
                        "image_id": i,
                        "category_id": c + 1,
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "area": (x1 - x0) * (y1 - y0),
                        "segmentation": seg,
                        "iscrowd": 0,
                    }
                )
        (root / split / "_annotations.coco.json").write_text(
            json.dumps({"info": {}, "licenses": [], "categories": cats, "images": images, "annotations": anns})
        )
    return root


def disc_polygon(cx, cy, r, n=48) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1).round(2)


def coco_polygons_with_two_part_object(root: Path) -> tuple[Path, Path, dict[int, np.ndarray]]:
    """A plain COCO json + image folder; annotation 2 has two parts. Returns (json, images, masks by id)."""
    from pipeline.masks import polygons_to_mask

    images_dir = root / "imgs"
    images_dir.mkdir(parents=True)
    Image.fromarray(_image([])).save(images_dir / "scene.png")
    parts = {1: [disc_polygon(40, 40, 20)], 2: [disc_polygon(110, 30, 12), disc_polygon(120, 90, 15)]}
    anns = [
        {
            "id": k,
            "image_id": 7,
            "category_id": 5 if k == 1 else 9,
            "segmentation": [p.reshape(-1).tolist() for p in ps],
            "bbox": [0, 0, 1, 1],
            "area": 0,
            "iscrowd": 0,
        }
        for k, ps in parts.items()
    ]
    coco = {
        "images": [{"id": 7, "file_name": "scene.png", "height": HW[0], "width": HW[1]}],
        "annotations": anns,
        "categories": [{"id": 9, "name": "late"}, {"id": 5, "name": "early"}],  # sparse ids, out of order
    }
    path = root / "instances.json"
    path.write_text(json.dumps(coco))
    return path, images_dir, {k: polygons_to_mask(ps, HW) for k, ps in parts.items()}


def expected_counts() -> dict[str, dict[str, list[int]]]:
    """split -> image stem -> sorted class ids, as the source holds them."""
    return {s: {Path(n).stem: sorted(c for *_, c in d) for n, d in sc.items()} for s, sc in SCENES.items()}


def draw_polygon_mask(poly: np.ndarray) -> np.ndarray:
    m = np.zeros(HW, np.uint8)
    cv2.fillPoly(m, [poly.astype(np.int32)], 1)
    return m.astype(bool)
