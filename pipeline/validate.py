"""Check a YOLO-seg / COCO dataset for consistency; every problem is one readable line."""

from __future__ import annotations

import hashlib
import io
import json
from collections import defaultdict
from pathlib import Path

import yaml
from pycocotools import mask as mask_utils

from pipeline.errors import SamlabelError
from pipeline.formats import coco as coco_format
from pipeline.formats import data_yaml, layout, yolo
from pipeline.formats.data_yaml import SPLITS
from pipeline.images import IMAGE_SUFFIXES, MIN_SIDE


def validate(out: str | Path) -> list[str]:
    """Problems found in the dataset at ``out``; an empty list means it is consistent.

    Checks data.yaml (names, split folders), images vs label files vs COCO entries, label lines
    (class ids in range, polygons of >= 3 points inside [0, 1]), COCO ids, categories against
    data.yaml, polygons/RLE inside the image, areas against the rasterized masks, boxes, the same
    instances in YOLO and COCO per image (as samlabel writes them: the label file's n-th line and the
    image's n-th annotation by id are one instance, of one class), the same image in two splits, and a
    review save that a kill interrupted (its files may lag behind the journal).
    """
    out = Path(out)
    paths = layout.detect(out) or layout.ROBOFLOW
    problems: list[str] = []
    try:
        if paths.writes_data_yaml_always or (out / "data.yaml").is_file():
            names = _check_data_yaml(out, problems)
        else:  # the COCO layout without YOLO labels: the names are the COCO categories'
            names = _coco_names(out, paths, problems)
    except Exception as e:  # noqa: BLE001 - a file too malformed to check is itself the finding
        problems.append(f"data.yaml: cannot be checked ({type(e).__name__}: {e})")
        names = []
    hashes: dict[str, list[str]] = defaultdict(list)
    for split in SPLITS:
        images_dir = out / paths.images_dir(split)
        if not images_dir.is_dir():
            continue
        images = {p.name: p for p in sorted(images_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
        for name, p in images.items():
            data = p.read_bytes()  # read once: hashed, and its header checked
            hashes[hashlib.sha256(data).hexdigest()].append(paths.image(split, name))
            _check_image_size(paths.image(split, name), data, problems)
        args = (out, paths, split, images, names, problems)
        yolo_classes = _guarded(paths.labels_dir(split), _check_labels, *args)
        coco_classes = _guarded(paths.coco_file(split), _check_coco, *args)
        if yolo_classes is not None and coco_classes is not None:
            for name in images:
                _compare_classes(
                    paths.image(split, name), yolo_classes.get(name, []), coco_classes.get(name, []), names, problems
                )
    pending = out / layout.STATE_DIR / "review-pending.json"
    if pending.is_file():
        problems.append(
            f"{layout.STATE_DIR}/{pending.name}: a samlabel review save was interrupted and its label and COCO "
            "files may not hold it yet; open the dataset with `samlabel review` (or `samlabel report`) once to complete it"
        )
    if paths is layout.COCO:
        listed = {f"annotations/{p.name}" for p, _ in layout.coco_splits(out).values()}
        for p in sorted((out / "annotations").glob("*.json")):
            if f"annotations/{p.name}" not in listed:
                problems.append(f"annotations/{p.name}: no image folder images/<split>/ for it")
    for rels in hashes.values():
        if len({p.split("/")[0] for p in rels}) > 1:
            problems.append(f"same image in several splits: {', '.join(rels)}")
    return problems


def _check_image_size(where: str, data: bytes, problems: list[str]) -> None:
    """Ultralytics' dataset loader drops images under ``MIN_SIDE`` px a side as corrupt, with their labels."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
    except (OSError, ValueError) as e:
        problems.append(f"{where}: not a readable image ({e})")
        return
    if min(w, h) < MIN_SIDE:
        problems.append(f"{where}: {w}x{h} pixels; Ultralytics drops images under {MIN_SIDE} px a side when training")


def _guarded(what: str, check, *args):
    """Run one check; a file too malformed for it to read is reported as a problem, not raised."""
    problems = args[-1]
    try:
        return check(*args)
    except Exception as e:  # noqa: BLE001 - whatever the malformed content makes fail
        problems.append(f"{what}: cannot be checked ({type(e).__name__}: {e})")
        return None


def _check_data_yaml(out: Path, problems: list[str]) -> list[str]:
    path = out / "data.yaml"
    if not path.is_file():
        problems.append("data.yaml: missing")
        return []
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        problems.append(f"data.yaml: not valid YAML ({e})")
        return []
    if not isinstance(data, dict):
        problems.append(f"data.yaml: expected a mapping of keys (names, train, val ...), got a {type(data).__name__}")
        return []
    try:
        names = data_yaml.parse_names(data.get("names"), "data.yaml")
    except SamlabelError as e:
        problems.append(str(e))
        names = []
    if "nc" in data and data["nc"] != len(names):
        problems.append(f"data.yaml: nc is {data['nc']} but {len(names)} names are listed")
    base = data_yaml.base_dir(data, out)
    for key, _split, entries in data_yaml.split_entries(data):
        for folder in entries:
            # resolved as Ultralytics' check_det_dataset does: against `path`, with its "../" fallback
            if not any(c.exists() for c in data_yaml.split_candidates(folder, base, base)):
                problems.append(f"data.yaml: {key}: {folder} is not a folder")
    return names


def _coco_names(out: Path, paths: layout.Layout, problems: list[str]) -> list[str]:
    """Class names from the first split's COCO categories (category id = class index + 1)."""
    for split in SPLITS:
        path = out / paths.coco_file(split)
        if path.is_file():
            cats = sorted(json.loads(path.read_text(encoding="utf-8")).get("categories", []), key=lambda c: c["id"])
            return [c["name"] for c in cats]
    problems.append("no COCO file (annotations/instances_<split>.json) to take the class names from")
    return []


def _compare_classes(where: str, yolo_classes: list[int], coco_classes: list[int], names, problems) -> None:
    """The label file's lines and the image's COCO annotations (by id) pair up one to one, class for class."""
    if len(yolo_classes) != len(coco_classes):
        problems.append(f"{where}: {len(yolo_classes)} YOLO instances but {len(coco_classes)} COCO annotations")
        return

    def name(c: int) -> str:
        return f"{c} ({names[c]})" if 0 <= c < len(names) else str(c)

    for k, (y, c) in enumerate(zip(yolo_classes, coco_classes, strict=True)):
        if y != c and min(y, c) >= 0:  # an unreadable line or category is reported on its own
            problems.append(
                f"{where}: instance {k + 1} is class {name(y)} in the label file (line {k + 1}) but {name(c)} in "
                f"COCO (annotation {k + 1} of the image); YOLO and COCO disagree"
            )


def _check_labels(out, paths, split, images, names, problems) -> dict[str, list[int]] | None:
    labels_dir = out / paths.labels_dir(split)
    if not labels_dir.is_dir():
        return None
    by_stem = {Path(n).stem: n for n in images}
    classes: dict[str, list[int]] = {}
    for label in sorted(labels_dir.glob("*.txt")):
        where = f"{paths.labels_dir(split)}/{label.name}"
        if label.stem not in by_stem:
            problems.append(f"{where}: no image with this stem")
            continue
        lines = label.read_text(encoding="utf-8").splitlines()
        classes[by_stem[label.stem]] = [
            _check_label_line(f"{where}:{number}", line, len(names), problems)
            for number, line in enumerate(lines, 1)
            if line.strip()
        ]
    for stem, name in by_stem.items():
        if not (labels_dir / f"{stem}.txt").is_file():
            problems.append(f"{paths.image(split, name)}: no label file")
    return classes


def _check_label_line(where: str, line: str, nc: int, problems: list[str]) -> int:
    """The line's class id (-1 when the line cannot be read); its problems are added to ``problems``."""
    try:
        parsed = yolo.parse_line(line)
    except ValueError as e:
        problems.append(f"{where}: {e}")
        return -1
    if parsed is None:
        return -1
    cls, coords = parsed
    if not 0 <= cls < nc:
        problems.append(f"{where}: class id {cls} outside 0..{nc - 1}")
    if len(coords) < 6 or len(coords) % 2:
        problems.append(f"{where}: a polygon needs an even number (>= 6) of coordinates, got {len(coords)}")
    if ((coords < 0) | (coords > 1)).any():
        problems.append(f"{where}: coordinates outside [0, 1]")
    return int(cls)


def _check_coco(out, paths, split, images, names, problems) -> dict[str, list[int]] | None:
    path = out / paths.coco_file(split)
    where = paths.coco_file(split)
    if not path.is_file():
        return None
    try:
        coco = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        problems.append(f"{where}: not valid JSON ({e})")
        return {}
    cats = {c["id"]: c["name"] for c in coco.get("categories", [])}
    expected = {i + 1: n for i, n in enumerate(names)}
    if names and cats != expected:
        problems.append(f"{where}: categories {cats} do not follow data.yaml's names {expected}")
    imgs: dict[int, dict] = {}
    for img in coco.get("images", []):
        if img["id"] in imgs:
            problems.append(f"{where}: duplicate image id {img['id']}")
        imgs[img["id"]] = img
        if img["file_name"] not in images:
            problems.append(f"{where}: image {img['id']} {img['file_name']!r} is not in {paths.images_dir(split)}")
    listed = {img["file_name"] for img in imgs.values()}
    problems.extend(f"{paths.image(split, n)}: not in {where}" for n in images if n not in listed)
    classes: dict[str, list[tuple]] = defaultdict(list)  # file name -> (annotation id, class id) of each
    seen: set[int] = set()
    for ann in coco.get("annotations", []):
        aw = f"{where}: annotation {ann.get('id')}"
        if ann.get("id") in seen:
            problems.append(f"{aw}: duplicate id")
        seen.add(ann.get("id"))
        img = imgs.get(ann.get("image_id"))
        if img is None:
            problems.append(f"{aw}: unknown image_id {ann.get('image_id')}")
            continue
        category = ann.get("category_id")
        classes[img["file_name"]].append((str(ann.get("id")), category - 1 if isinstance(category, int) else -1))
        if ann.get("category_id") not in cats:
            problems.append(f"{aw}: unknown category_id {ann.get('category_id')}")
        _check_geometry(aw, ann, img["height"], img["width"], problems)
    return {name: [c for _, c in sorted(anns, key=_by_id)] for name, anns in classes.items()}


def _by_id(entry: tuple) -> tuple:
    """Annotations in id order (numeric ids as numbers; samlabel numbers them in label-file order)."""
    key = entry[0]
    return (0, int(key), "") if key.lstrip("-").isdigit() else (1, 0, key)


def _check_geometry(where: str, ann: dict, h: int, w: int, problems: list[str]) -> None:
    seg = ann.get("segmentation")
    if isinstance(seg, list):
        for poly in seg if not seg or isinstance(seg[0], list) else [seg]:
            if len(poly) < 6 or len(poly) % 2:
                problems.append(f"{where}: polygon with {len(poly)} coordinates")
                return
            xs, ys = poly[0::2], poly[1::2]
            if min(xs) < 0 or min(ys) < 0 or max(xs) > w or max(ys) > h:
                problems.append(f"{where}: polygon outside the {w}x{h} image")
    elif not coco_format.is_rle(seg):
        problems.append(f"{where}: no segmentation")
        return
    try:
        rle = coco_format.to_rle(seg, h, w)
    except ValueError as e:
        problems.append(f"{where}: {e}")
        return
    raster_area = int(mask_utils.area(rle))
    if raster_area == 0:
        problems.append(f"{where}: empty mask")
    area = ann.get("area", 0)
    if abs(area - raster_area) > max(2, 0.02 * raster_area):
        problems.append(f"{where}: area {area} but the mask has {raster_area} pixels")
    x, y, bw, bh = ann.get("bbox", [0, 0, 0, 0])
    if bw <= 0 or bh <= 0 or x < 0 or y < 0 or x + bw > w + 1e-6 or y + bh > h + 1e-6:
        problems.append(f"{where}: bbox {ann.get('bbox')} is empty or outside the {w}x{h} image")
