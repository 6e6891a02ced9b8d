"""COCO instances json: categories, annotations (both ways), segmentations, and a streaming file writer."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TypeGuard

import numpy as np
from pycocotools import mask as mask_utils

from pipeline import fsio
from pipeline.errors import SamlabelError
from pipeline.options import COCO_MASKS

#: The file name of a split's COCO file in Roboflow's layout.
ROBOFLOW_NAME = "_annotations.coco.json"

ENCODINGS = COCO_MASKS  # the COCO mask encodings (``pipeline.options.CocoMasks``)


# ------------------------------------------------------------------------------------------- writing


def categories(names: Sequence[str]) -> list[dict]:
    """COCO categories in data.yaml's order: class ``i`` is category id ``i + 1`` (0 stays unused)."""
    return [{"id": i + 1, "name": str(n), "supercategory": "none"} for i, n in enumerate(names)]


def to_segmentation(polygons: Sequence[np.ndarray] | None, rle: dict | None) -> list | dict:
    """A ``segmentation`` value: polygon parts as flat coordinate lists (3 decimals), else the RLE as given."""
    if polygons is not None:
        return [[_num(v) for v in np.asarray(p).reshape(-1)] for p in polygons]
    if rle is None:
        raise ValueError("to_segmentation needs polygons or an RLE")
    return rle


def to_annotation(
    *,
    class_id: int,
    segmentation: list | dict,
    area: int,
    mask_xyxy: Sequence[int],
    det_xyxy: Sequence[float] | None = None,
    confidence: float = math.nan,
    mask_score: float = math.nan,
    source_id: int | None = None,
    extras: dict | None = None,
) -> dict:
    """One COCO annotation (without ``id`` / ``image_id``, which the writer assigns).

    Args:
        class_id: index into data.yaml's names (category id is ``class_id + 1``).
        segmentation: from ``to_segmentation``.
        area: the mask's pixel count (not the box's).
        mask_xyxy: the mask's tight box in pixel edges (x_max exclusive); written as COCO xywh ``bbox``.
        det_xyxy: the prompt box (x_min, y_min, x_max, y_max), kept as ``det_bbox`` in COCO xywh.
        confidence: detector confidence (omitted when NaN).
        mask_score: SAM's predicted IoU (omitted when NaN).
        source_id: the instance's id in its source (detector order or annotation id).
        extras: more fields, written after the others (JSON-ready values).
    """
    x0, y0, x1, y1 = (int(v) for v in mask_xyxy)
    ann: dict[str, object] = {
        "category_id": int(class_id) + 1,
        "segmentation": segmentation,
        "area": int(area),
        "bbox": [x0, y0, x1 - x0, y1 - y0],
        "iscrowd": 0,
    }
    if det_xyxy is not None:
        a, b, c, d = (float(v) for v in det_xyxy)
        ann["det_bbox"] = [_num(a), _num(b), _num(c - a), _num(d - b)]
    if not math.isnan(confidence):
        ann["confidence"] = round(float(confidence), 6)
    if not math.isnan(mask_score):
        ann["mask_score"] = round(float(mask_score), 6)
    if source_id is not None:
        ann["source_id"] = int(source_id)
    ann.update(extras or {})
    return ann


def _num(v: float) -> float | int:
    r = round(float(v), 3)
    return int(r) if r == int(r) else r


def write_coco(path: Path, *, names: Sequence[str], images: Iterable[tuple[dict, list[dict]]]) -> tuple[int, int]:
    """Stream a COCO instances file atomically; images and annotations get ids 1, 2, ... in order.

    Args:
        path: the file to write.
        names: class names in data.yaml's order.
        images: ``(image, annotations)`` pairs; ``image`` holds ``file_name``, ``height``, ``width``
            and any extra fields; annotations come from ``to_annotation``.

    Returns:
        (number of images, number of annotations).
    """
    texts = ((to_json_text(image), [to_json_text(a) for a in annotations]) for image, annotations in images)
    return write_coco_texts(path, names=names, images=texts)


def to_json_text(entry: dict) -> str:
    """An image or annotation as ``write_coco_texts`` takes it (its JSON, without the ids the writer assigns)."""
    return json.dumps(entry, ensure_ascii=False)


def write_coco_texts(path: Path, *, names: Sequence[str], images: Iterable[tuple[str, list[str]]]) -> tuple[int, int]:
    """``write_coco`` for entries already in JSON (``to_json_text``): the same bytes, without encoding them again.

    A caller that keeps the texts of a split (``samlabel review`` saving one image) rewrites the file at the
    cost of copying it.
    """
    n_images = n_anns = 0
    with fsio.atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write('{"info": {"description": "samlabel"}, "licenses": [],\n"categories": ')
        f.write(json.dumps(categories(names), ensure_ascii=False))
        f.write(',\n"images": [')
        ann_file = tmp.with_suffix(".anns")
        try:
            with open(ann_file, "w+", encoding="utf-8") as anns:
                for image, annotations in images:
                    n_images += 1
                    f.write(("," if n_images > 1 else "") + "\n" + _with_ids(image, f'"id": {n_images}'))
                    for a in annotations:
                        n_anns += 1
                        anns.write(("," if n_anns > 1 else "") + "\n")
                        anns.write(_with_ids(a, f'"id": {n_anns}, "image_id": {n_images}'))
                f.write('\n],\n"annotations": [')
                anns.seek(0)
                while chunk := anns.read(1 << 20):
                    f.write(chunk)
        finally:
            ann_file.unlink(missing_ok=True)
        f.write("\n]}\n")
    return n_images, n_anns


def _with_ids(text: str, ids: str) -> str:
    """``json.dumps({"id": ..., **entry})`` from ``json.dumps(entry)``: the ids first, as the dict would have them."""
    return "{" + ids + ("}" if text == "{}" else ", " + text[1:])


# ------------------------------------------------------------------------------------------- reading


def load(path: Path) -> dict:
    """A COCO json as a dict.

    Raises:
        SamlabelError: unreadable, not JSON, or not an object.
    """
    try:
        coco = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SamlabelError(f"{path}: not a readable COCO json ({e})") from None
    if not isinstance(coco, dict):
        raise SamlabelError(f"{path}: not a COCO json (the top level is a {type(coco).__name__}, not an object)")
    return coco


def load_instances(path: Path) -> dict:
    """Read a COCO instances file that must hold ``images`` and ``annotations`` lists (the report's reader).

    Raises:
        ValueError: it is not JSON or lacks the ``images`` / ``annotations`` lists (the message says which).
        OSError: it cannot be read.
    """
    try:
        coco = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(coco, dict) or not all(isinstance(coco.get(k), list) for k in ("images", "annotations")):
        raise ValueError(f"{path}: expected a COCO object with 'images' and 'annotations' lists")
    return coco


def parse_categories(coco: dict, where) -> list[dict]:
    """The json's categories sorted by id; a structure that cannot be read right is refused in one line.

    Raises:
        SamlabelError: not a list of objects with an id and a name, or one id used twice.
    """
    cats = coco.get("categories", [])
    if not isinstance(cats, list) or not all(
        isinstance(c, dict) and isinstance(c.get("id"), (int, str)) and "name" in c for c in cats
    ):
        raise SamlabelError(f"{where}: 'categories' must be a list of objects, each with an id and a name")
    seen: dict = {}
    for c in cats:
        if c["id"] in seen:
            raise SamlabelError(
                f"{where}: category id {c['id']!r} is used by both {seen[c['id']]!r} and {c['name']!r}; "
                "give each category its own id"
            )
        seen[c["id"]] = c["name"]
    return sorted(cats, key=lambda c: (isinstance(c["id"], str), c["id"]))


def drop_roboflow_supercategory(cats: list[dict], coco: dict) -> list[dict]:
    """Roboflow exports a category 0 named after the project, parent of all others and never used."""
    if len(cats) > 1 and cats[0]["id"] == 0:
        used = {a.get("category_id") for a in coco.get("annotations", []) if isinstance(a, dict)}
        parents = {c.get("supercategory") for c in cats[1:]}
        if 0 not in used and cats[0]["name"] in parents:
            return cats[1:]
    return cats


def parse_polygons(seg) -> tuple[list[np.ndarray], int]:
    """Polygon parts of a ``segmentation`` list as float (K, 2) arrays, and how many parts were unusable.

    A single flat list (as some tools write) counts as one part; parts need >= 3 points and an even count.
    """
    if isinstance(seg, list) and seg and not isinstance(seg[0], list):
        seg = [seg]
    parts = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in seg if len(p) >= 6 and len(p) % 2 == 0]
    return parts, len(seg) - len(parts)


def is_rle(seg: object) -> TypeGuard[dict]:
    return isinstance(seg, dict) and "counts" in seg


def to_rle(seg: list | dict, h: int, w: int) -> dict:
    """Any ``segmentation`` (polygons, compressed or uncompressed RLE) as one pycocotools RLE (bytes counts).

    Raises:
        ValueError: an RLE whose ``size`` is not (h, w), or something that is neither polygons nor RLE.
    """
    if isinstance(seg, list):
        if seg and not isinstance(seg[0], list):
            seg = [seg]
        if not seg:
            return mask_utils.encode(np.zeros((h, w), dtype=np.uint8, order="F"))
        return mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    if is_rle(seg):
        if list(seg.get("size", [])) != [h, w]:
            raise ValueError(f"RLE size {seg.get('size')} is not the image's [{h}, {w}]")
        counts = seg["counts"]
        if isinstance(counts, list):
            return mask_utils.frPyObjects(seg, h, w)
        return {"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    raise ValueError("no segmentation (neither polygons nor RLE)")
