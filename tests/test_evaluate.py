"""samlabel evaluate: AP equals COCOeval's on the same data; IoUs and counts equal independent numpy sums."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from pipeline import convert
from pipeline.errors import SamlabelError
from pipeline.evaluate import boundary_iou, evaluate, format_table, full_rle, match_instances
from pipeline.images import upright_hw
from pipeline.types import CropMask
from tests.conftest import FakeSegmenter

HW = (48, 64)  # diagonal 80 px: the boundary band is round(0.02 * 80) = 2 px
D = 2


# ------------------------------------------------------------------------------ independent references


def rect(y0, y1, x0, x1, hw=HW) -> np.ndarray:
    m = np.zeros(hw, dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def disc(cx, cy, r, hw=HW) -> np.ndarray:
    m = np.zeros(hw, dtype=np.uint8)
    cv2.circle(m, (cx, cy), r, 1, -1)
    return m.astype(bool)


def iou_np(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def boundary_ref(mask: np.ndarray, d: int) -> np.ndarray:
    """The Boundary IoU reference: pad with zeros, erode d times with a 3x3 kernel, keep what was lost."""
    h, w = mask.shape
    padded = cv2.copyMakeBorder(mask.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    eroded = cv2.erode(padded, np.ones((3, 3), np.uint8), iterations=d)[1 : h + 1, 1 : w + 1]
    return mask & ~eroded.astype(bool)


def biou_np(a: np.ndarray, b: np.ndarray, d: int = D) -> float:
    return iou_np(boundary_ref(a, d), boundary_ref(b, d))


def rle(mask: np.ndarray) -> dict:
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": r["size"], "counts": r["counts"].decode("ascii")}


def cocoeval_stats(gt: list[tuple], dt: list[tuple], classes: list[str], iou_type: str) -> list[float]:
    """COCOeval straight on dicts: gt (image_id, class, mask), dt (image_id, class, mask, score)."""
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(classes)]
    anns = []
    for k, (image_id, cls, mask) in enumerate(gt, 1):
        r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        bbox = mask_utils.toBbox(r).tolist()
        anns.append(
            {"id": k, "image_id": image_id, "category_id": classes.index(cls) + 1, "segmentation": r}
            | {"area": int(mask.sum()), "bbox": bbox, "iscrowd": 0}
        )
    images = [{"id": i, "height": HW[0], "width": HW[1]} for i in sorted({g[0] for g in gt} | {d[0] for d in dt})]
    coco_gt = COCO()
    coco_gt.dataset = {"images": images, "categories": cats, "annotations": anns}
    coco_gt.createIndex()
    dets = []
    for image_id, cls, mask, score in dt:
        r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        det = {"image_id": image_id, "category_id": classes.index(cls) + 1, "score": score}
        dets.append(det | ({"segmentation": r} if iou_type == "segm" else {"bbox": mask_utils.toBbox(r).tolist()}))
    ev = COCOeval(coco_gt, coco_gt.loadRes(dets), iouType=iou_type)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return [float(ev.stats[i]) for i in (0, 1, 2, 8)]


# ----------------------------------------------------------------------------------------- datasets


def write_coco(json_path: Path, image_dir: Path, images: dict, cats: dict[str, int], sources=None) -> Path:
    """A COCO json + PNG images; images: file_name -> [(class, mask or xywh box, extra fields)]."""
    out_images, out_anns = [], []
    for image_id, (file_name, objects) in enumerate(images.items(), 1):
        (image_dir / file_name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((*HW, 3), 40, np.uint8)).save(image_dir / file_name)
        img = {"id": image_id, "file_name": file_name, "height": HW[0], "width": HW[1]}
        if sources:
            img["source"] = sources[file_name]
        out_images.append(img)
        for cls, shape, extra in objects:
            ann = {"id": len(out_anns) + 1, "image_id": image_id, "category_id": cats[cls], "iscrowd": 0, **extra}
            if isinstance(shape, np.ndarray):
                ys, xs = np.nonzero(shape)
                ann |= {"segmentation": rle(shape), "area": int(shape.sum())}
                ann["bbox"] = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
            else:
                ann |= {"bbox": list(shape), "area": shape[2] * shape[3]}
            out_anns.append(ann)
    categories = [{"id": i, "name": n, "supercategory": "none"} for n, i in cats.items()]
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"images": out_images, "annotations": out_anns, "categories": categories}))
    return json_path


def scored(confidence, mask_score) -> dict:
    return {"confidence": confidence, "mask_score": mask_score}


G1 = rect(4, 24, 4, 24)  # cat, 20 x 20
G2 = disc(45, 15, 8)  # dog
G3 = rect(30, 42, 40, 56)  # cat, missed by PRED
G4 = rect(10, 30, 10, 40)  # dog
G5 = rect(35, 45, 5, 15)  # bird: a class PRED does not have
P1 = rect(5, 23, 5, 23)  # G1 eroded by one pixel: IoU 18^2 / 20^2
P2 = disc(47, 15, 8)  # G2 shifted 2 px right
P3 = rect(30, 40, 2, 12)  # cat where there is none
P4 = G4.copy()
P5 = rect(2, 8, 50, 60)  # fish: a class GT does not have

GT_IMAGES = {
    "one.png": [("cat", G1, {}), ("dog", G2, {}), ("cat", G3, {})],
    "two.png": [("dog", G4, {}), ("bird", G5, {})],
}
PRED_IMAGES = {
    "one.png": [("cat", P1, scored(0.9, 0.8)), ("dog", P2, scored(0.8, 0.9)), ("cat", P3, scored(0.95, 0.95))],
    "two.png": [("dog", P4, scored(0.7, 1.0)), ("fish", P5, scored(0.9, 0.9))],
}


@pytest.fixture
def gt(tmp_path) -> tuple[Path, Path]:
    """A bare COCO json with sparse category ids, and its image folder."""
    path = write_coco(tmp_path / "gt.json", tmp_path / "gt_images", GT_IMAGES, {"cat": 3, "dog": 7, "bird": 9})
    return path, tmp_path / "gt_images"


@pytest.fixture
def pred(tmp_path) -> tuple[Path, Path]:
    """A Roboflow-style COCO export (train/_annotations.coco.json beside the images), other class order."""
    root = tmp_path / "pred"
    write_coco(root / "train" / "_annotations.coco.json", root / "train", PRED_IMAGES, {"dog": 1, "cat": 2, "fish": 3})
    return root, root


# -------------------------------------------------------------------------------------------- tests


def test_a_dataset_against_itself_is_perfect(gt):
    path, images = gt
    r = evaluate(path, path, pred_images=images, gt_images=images)
    for kind in ("segm", "bbox"):
        # COCOeval's precision is tp / (tp + fp + eps), so a perfect AP may come out as 1 - 2e-16
        assert r[kind] == pytest.approx({"AP": 1.0, "AP50": 1.0, "AP75": 1.0, "AR": 1.0}, abs=1e-12)
    assert r["mask_iou"] == {"mean": 1.0, "per_class": {"cat": 1.0, "dog": 1.0, "bird": 1.0}}
    assert r["boundary_iou"] == {"mean": 1.0, "per_class": {"cat": 1.0, "dog": 1.0, "bird": 1.0}}
    assert (r["matched"], r["missed"], r["unmatched"]) == (5, 0, 0)
    assert (r["images"]["matched"], r["images"]["by_path"]) == (2, 2)  # the same files
    assert r["score"] == "confidence x mask_score"
    assert r["instances"]["pred_unscored"] == 5  # no scores in the GT file: each counts 1


def test_hand_built_predictions(gt, pred):
    gt_path, gt_images = gt
    r = evaluate(pred[0], gt_path, gt_images=gt_images)
    iou1, iou2 = iou_np(P1, G1), iou_np(P2, G2)
    b1, b2, b4 = biou_np(P1, G1), biou_np(P2, G2), biou_np(P4, G4)
    assert iou1 == pytest.approx(0.81) and 0.5 < iou2 < 1  # the cases are what they claim
    assert (r["matched"], r["missed"], r["unmatched"]) == (3, 1, 1)  # G3 missed, P3 unmatched
    assert r["per_class"] == {
        "cat": {"matched": 1, "missed": 1, "unmatched": 1},
        "dog": {"matched": 2, "missed": 0, "unmatched": 0},
    }
    assert r["mask_iou"]["mean"] == pytest.approx((iou1 + iou2 + 1.0) / 3)
    assert r["mask_iou"]["per_class"] == pytest.approx({"cat": iou1, "dog": (iou2 + 1.0) / 2})
    assert r["boundary_iou"]["mean"] == pytest.approx((b1 + b2 + b4) / 3)
    assert r["boundary_iou"]["per_class"] == pytest.approx({"cat": b1, "dog": (b2 + b4) / 2})
    expected_worst = sorted([(iou1, b1, "one.png", "cat"), (iou2, b2, "one.png", "dog"), (1.0, b4, "two.png", "dog")])
    assert [(w["iou"], w["boundary_iou"], w["image"], w["class"]) for w in r["worst"]] == pytest.approx(expected_worst)
    assert r["classes"] == {
        "evaluated": ["cat", "dog"],
        "pred_only": ["fish"],
        "gt_only": ["bird"],
        "pred_only_instances": {"fish": 1},
        "gt_only_instances": {"bird": 1},
    }
    # AP: COCOeval on the same objects (shared classes only), scores = confidence x mask_score
    gt_objs = [(1, "cat", G1), (1, "dog", G2), (1, "cat", G3), (2, "dog", G4)]
    dt_objs = [(1, "cat", P1, 0.9 * 0.8), (1, "dog", P2, 0.8 * 0.9), (1, "cat", P3, 0.95 * 0.95), (2, "dog", P4, 0.7)]
    for kind in ("segm", "bbox"):
        expected = cocoeval_stats(gt_objs, dt_objs, ["cat", "dog"], kind)
        assert [r[kind][k] for k in ("AP", "AP50", "AP75", "AR")] == pytest.approx(expected, abs=1e-12)
    assert r["segm"]["AP"] < 1.0  # the missing and the extra object cost something
    assert r["instances"]["pred_unscored"] == 0


def test_match_iou_decides_what_counts_as_matched(tmp_path):
    g, p = rect(10, 20, 10, 20), rect(10, 20, 16, 26)  # shifted 6 px: IoU 40 / 160
    gt_path = write_coco(tmp_path / "gt.json", tmp_path / "g", {"a.png": [("cat", g, {})]}, {"cat": 1})
    pred_path = write_coco(tmp_path / "pred.json", tmp_path / "p", {"a.png": [("cat", p, {})]}, {"cat": 1})
    kw = {"pred_images": tmp_path / "p", "gt_images": tmp_path / "g"}
    r = evaluate(pred_path, gt_path, **kw)  # default 0.5
    assert (r["matched"], r["missed"], r["unmatched"], r["mask_iou"]["mean"]) == (0, 1, 1, None)
    r = evaluate(pred_path, gt_path, match_iou=0, **kw)  # any overlap
    assert (r["matched"], r["missed"], r["unmatched"]) == (1, 0, 0)
    assert r["mask_iou"]["mean"] == pytest.approx(iou_np(p, g)) == pytest.approx(0.25)
    assert r["boundary_iou"]["mean"] == pytest.approx(biou_np(p, g))


@pytest.mark.parametrize(
    ("iou", "match_iou", "expected"),
    [
        ([[0.6, 0.55], [0.58, 0.0]], 0.5, [(0, 1), (1, 0)]),  # the larger sum, not the greedy best pair
        ([[0.6, 0.55], [0.58, 0.0]], 0.59, [(0, 0)]),  # only one pair reaches 0.59
        ([[0.0, 0.0]], 0.0, []),  # no overlap is never a match
        (np.zeros((0, 2)), 0.5, []),  # no predictions
    ],
)
def test_match_instances_is_one_to_one(iou, match_iou, expected):
    assert match_instances(np.array(iou, dtype=float), match_iou=match_iou) == expected


def test_box_only_ground_truth_is_an_ignore_region_for_masks(tmp_path):
    g = rect(5, 25, 5, 25)
    images = {"a.png": [("cat", g, {}), ("cat", [35, 5, 20, 20], {})]}  # the second object has only a box
    preds = {"a.png": [("cat", g, scored(0.5, 1.0)), ("cat", rect(5, 25, 35, 55), scored(0.9, 1.0))]}
    gt_path = write_coco(tmp_path / "gt.json", tmp_path / "g", images, {"cat": 1})
    pred_path = write_coco(tmp_path / "pred.json", tmp_path / "p", preds, {"cat": 1})
    r = evaluate(pred_path, gt_path, pred_images=tmp_path / "p", gt_images=tmp_path / "g")
    # the higher-scored prediction covers the box-only object: ignored for segm, a true positive for bbox
    assert r["segm"]["AP"] == pytest.approx(1.0) and r["bbox"]["AP"] == pytest.approx(1.0)
    assert r["instances"]["gt_without_mask"] == 1
    assert (r["matched"], r["missed"], r["unmatched"]) == (1, 0, 1)  # per-instance IoU needs GT masks


def test_samlabel_output_pairs_by_source_path(tmp_path):
    """PRED made by ``convert`` from GT's images: flat output names, so only ``source`` pairs them."""
    names = {"ball": 1, "cube": 2}
    discs = {"sub/x.png": [(15, 15, 8, "ball"), (45, 30, 10, "cube")], "sub/deeper/y.png": [(30, 20, 12, "ball")]}
    images = {name: [(c, disc(cx, cy, r), {}) for cx, cy, r, c in ds] for name, ds in discs.items()}
    gt_path = write_coco(tmp_path / "gt" / "gt.json", tmp_path / "imgs", images, names)
    for name, ds in discs.items():  # the fake segmenter finds the bright pixels in each box
        im = np.full((*HW, 3), 40, np.uint8)
        for cx, cy, r, _ in ds:
            cv2.circle(im, (cx, cy), r, (255, 255, 255), -1)
        Image.fromarray(im).save(tmp_path / "imgs" / name)
    out = tmp_path / "out"
    convert(gt_path, out, images=tmp_path / "imgs", segmenter=FakeSegmenter(), resegment=True, progress=False)
    assert sorted(p.name for p in (out / "train" / "images").iterdir()) == ["sub_deeper_y.png", "sub_x.png"]
    r = evaluate(out, gt_path, gt_images=tmp_path / "imgs")
    assert (r["images"]["by_path"], r["images"]["by_name"]) == (2, 0)
    assert r["segm"]["AP"] == pytest.approx(1.0) and r["mask_iou"]["mean"] == 1.0 and r["boundary_iou"]["mean"] == 1.0
    assert (r["matched"], r["missed"], r["unmatched"]) == (3, 0, 0)
    assert r["instances"]["pred_unscored"] == 0  # mask_score read from samlabel's COCO file


def test_unpaired_and_skipped_images_are_counted(tmp_path):
    g = rect(5, 25, 5, 25)
    gt_images = {"a.png": [("cat", g, {})], "only_gt.png": [("cat", g, {})], "small.png": [("cat", g, {})]}
    pred_images = {"a.png": [("cat", g, {})], "only_pred.png": [("cat", g, {})], "small.png": [("cat", g, {})]}
    gt_path = write_coco(tmp_path / "gt.json", tmp_path / "g", gt_images, {"cat": 1})
    pred_path = write_coco(tmp_path / "pred.json", tmp_path / "p", pred_images, {"cat": 1})
    Image.fromarray(np.zeros((40, 64, 3), np.uint8)).save(tmp_path / "p" / "small.png")  # not GT's size
    r = evaluate(pred_path, gt_path, pred_images=tmp_path / "p", gt_images=tmp_path / "g")
    im = r["images"]
    assert (im["matched"], im["by_name"], im["pred_only"], im["gt_only"], im["skipped"]) == (2, 2, 1, 1, 1)
    assert im["pred_only_examples"] == ["only_pred.png"] and im["gt_only_examples"] == ["only_gt.png"]
    assert "40" in im["skipped_examples"][0]["reason"]
    assert r["evaluated_images"] == 1 and r["matched"] == 1


def test_yolo_seg_dataset_against_itself(tmp_path):
    root = tmp_path / "yolo"
    (root / "train" / "images").mkdir(parents=True)
    (root / "train" / "labels").mkdir(parents=True)
    Image.fromarray(np.zeros((*HW, 3), np.uint8)).save(root / "train" / "images" / "a.png")
    (root / "train" / "labels" / "a.txt").write_text("0 0.1 0.1 0.4 0.1 0.4 0.5 0.1 0.5\n1 0.5 0.5 0.9 0.6 0.7 0.9\n")
    (root / "data.yaml").write_text("train: train/images\nval: train/images\nnames: [cat, dog]\n")
    r = evaluate(root, root)
    assert r["segm"]["AP"] == pytest.approx(1.0) and r["bbox"]["AP"] == pytest.approx(1.0)
    assert r["mask_iou"]["mean"] == 1.0
    assert (r["matched"], r["missed"], r["unmatched"]) == (2, 0, 0)


def test_nothing_matches(tmp_path):
    g = rect(5, 25, 5, 25)
    gt_path = write_coco(tmp_path / "gt.json", tmp_path / "g", {"a.png": [("cat", g, {})]}, {"cat": 1})
    pred_path = write_coco(tmp_path / "pred.json", tmp_path / "p", {"b.png": [("cat", g, {})]}, {"cat": 1})
    with pytest.raises(
        SamlabelError, match=r"no image of PRED .* matches .*PRED has 1 images \(b\.png\); GT has 1 images \(a\.png\)"
    ):
        evaluate(pred_path, gt_path, pred_images=tmp_path / "p", gt_images=tmp_path / "g")


def test_no_shared_class(tmp_path):
    g = rect(5, 25, 5, 25)
    gt_path = write_coco(tmp_path / "gt.json", tmp_path / "g", {"a.png": [("cat", g, {})]}, {"cat": 1})
    pred_path = write_coco(tmp_path / "pred.json", tmp_path / "p", {"a.png": [("dog", g, {})]}, {"dog": 1})
    with pytest.raises(SamlabelError, match=r"classes \['dog'\] and GT .* \['cat'\]: no name in common"):
        evaluate(pred_path, gt_path, pred_images=tmp_path / "p", gt_images=tmp_path / "g")


def test_bare_json_needs_images(tmp_path):
    path = write_coco(tmp_path / "gt.json", tmp_path / "g", {"a.png": []}, {"cat": 1})
    with pytest.raises(SamlabelError, match="needs its image folder"):
        evaluate(path, path)


def test_format_table(gt, pred):
    r = evaluate(pred[0], gt[0], gt_images=gt[1])
    table = format_table(r)
    assert "segm" in table and "bbox" in table and "only in PRED: fish" in table and "only in GT: bird" in table
    assert f"{r['segm']['AP']:.3f}" in table and "3 matched, 1 missed (GT), 1 unmatched (PRED)" in table
    assert table.splitlines()[-2].startswith("  one.png  cat  IoU 0.810")


# ------------------------------------------------------------------------------------------ geometry


def test_full_rle_equals_encoding_the_full_mask():
    rng = np.random.default_rng(0)
    for _ in range(200):
        hw = tuple(int(v) for v in rng.integers(1, 24, size=2))
        full = rng.random(hw) < rng.random()
        expected = mask_utils.encode(np.asfortranarray(full.astype(np.uint8)))
        assert full_rle(CropMask.from_full(full), hw) == expected
    # a crop reaching past the image keeps only what lies inside it
    crop = CropMask(np.ones((4, 4), bool), x0=-2, y0=3)
    assert full_rle(crop, (5, 5)) == mask_utils.encode(np.asfortranarray(rect(3, 5, 0, 2, (5, 5)).astype(np.uint8)))


def test_boundary_iou_on_crops_equals_the_reference_on_full_images():
    rng = np.random.default_rng(1)
    for _ in range(100):
        a = disc(*(int(v) for v in rng.integers(0, 64, 2)), int(rng.integers(2, 20)))
        b = disc(*(int(v) for v in rng.integers(0, 64, 2)), int(rng.integers(2, 20)))
        d = int(rng.integers(1, 5))
        got = boundary_iou(CropMask.from_full(a), CropMask.from_full(b), dilation=d)
        assert got == pytest.approx(biou_np(a, b, d), abs=1e-12)
    # the image border is outline too: a mask filling the image has a 2 px ring as its boundary
    full = np.ones(HW, bool)
    assert boundary_iou(CropMask.from_full(full), CropMask.from_full(rect(0, 48, 0, 62)), dilation=2) == pytest.approx(
        biou_np(full, rect(0, 48, 0, 62))
    )


def test_image_size_comes_upright_from_the_header(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(tmp_path / "r.jpg", exif=exif)
    Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(tmp_path / "u.jpg")
    assert upright_hw(tmp_path / "r.jpg") == (20, 10)
    assert upright_hw(tmp_path / "u.jpg") == (10, 20)
    assert math.hypot(*HW) == 80  # the tests' boundary band: D = round(0.02 * 80) = 2
