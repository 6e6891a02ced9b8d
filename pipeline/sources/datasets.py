"""Read existing datasets (YOLO txt, COCO json, Roboflow exports, zips of them) as prompts for SAM.

Readers are lenient: every problem in the source is recorded with where it is (``file:line`` for
YOLO, annotation / image id for COCO) and what was done about it, and the conversion goes on.
Coordinates are kept normalised to the image until the image is read, so labels always land on
the upright image whatever its size turns out to be.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from pipeline import safepath
from pipeline.errors import SamlabelError
from pipeline.formats import coco as coco_format
from pipeline.formats import data_yaml, layout, yolo
from pipeline.formats.data_yaml import SPLITS
from pipeline.fsio import safe_relative
from pipeline.images import IMAGE_SUFFIXES
from pipeline.masks import rle_to_mask
from pipeline.sources.archive import safe_extract
from pipeline.sources.folders import plan_items
from pipeline.types import ImageItem, Problem, SourceLabels, SourceObject

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceDataset:
    """What was found in the source: images with their labels, class names, and every problem met.

    Attributes:
        kind: what was recognised, for logs and the report.
        names: class names in class-id order.
        items: images to convert; each has ``labels`` (an empty ``SourceLabels`` for a kept unlabeled image).
        problems: every problem met while reading, in reading order.
        unlabeled: ``rel`` of the images that have no label file.
    """

    kind: str
    names: list[str]
    items: list[ImageItem]
    problems: tuple[Problem, ...] = ()
    unlabeled: tuple[str, ...] = ()

    def describe(self) -> str:
        splits = Counter(it.split for it in self.items)
        n_obj = sum(len(it.labels.objects) for it in self.items if it.labels is not None)
        return (
            f"{self.kind}: {len(self.names)} classes, "
            + ", ".join(f"{s} {splits[s]} images" for s in SPLITS if splits[s])
            + f", {n_obj} objects"
        )


class Problems(list):
    """The ``Problem`` records met while reading, in order."""

    def add(self, where: str, problem: str, action: str) -> None:
        self.append(Problem(where, problem, action))


@dataclass
class _Found:
    """What a layout reader found, before unlabeled images are sorted out."""

    kind: str
    names: list[str]
    items: list[ImageItem] = field(default_factory=list)


# --------------------------------------------------------------------------------------------- entry


def read_dataset(
    src: str | Path,
    *,
    images: str | Path | None = None,
    names: Sequence[str] | None = None,
    keep_unlabeled: bool = False,
    extract_to: Path | None = None,
) -> SourceDataset:
    """Detect the layout of ``src`` and read it.

    Args:
        src: a data.yaml, a YOLO/Roboflow folder, a COCO json, a Roboflow COCO folder, a COCO-layout folder
            (``annotations/instances_<split>.json`` + ``images/<split>/``), or a .zip of one.
        images: image folder for a bare COCO json.
        names: class names for a bare images/ + labels/ pair without classes.txt.
        keep_unlabeled: keep images that have no label file (as images without objects).
        extract_to: where a .zip is extracted (inside the output folder); only what the dataset uses (all
            images with ``keep_unlabeled``), see ``pipeline.sources.archive``.

    Raises:
        SamlabelError: nothing recognisable, with what was looked for.
    """
    src = Path(src)
    if src.is_file() and src.suffix.lower() == ".zip":
        if extract_to is None:
            raise SamlabelError("a .zip source needs a folder to extract into")
        src = safe_extract(src, extract_to, keep_unlabeled=keep_unlabeled)
    problems = Problems()
    found = _detect_and_read(src, images, names, problems)
    items, unlabeled = [], []
    for it in found.items:
        if it.labels is None:
            unlabeled.append(it.rel)
            if not keep_unlabeled:
                continue
            it = it.with_labels(SourceLabels())
        items.append(it)
    if unlabeled:
        action = "kept without objects" if keep_unlabeled else "left out (use --keep-unlabeled to keep them)"
        LOGGER.warning("%d images have no label file: %s", len(unlabeled), action)
    return SourceDataset(
        kind=found.kind, names=found.names, items=items, problems=tuple(problems), unlabeled=tuple(unlabeled)
    )


def _detect_and_read(src: Path, images, names, problems: Problems) -> _Found:
    if src.is_file() and src.suffix.lower() in (".yaml", ".yml"):
        return read_yolo_yaml(src, problems, confined=False)  # the user named this data.yaml: where it points is theirs
    if src.is_file() and src.suffix.lower() == ".json":
        if images is None:
            raise SamlabelError(f"{src}: a COCO json needs its image folder: add --images DIR")
        return read_coco_splits({"train": (src, Path(images))}, problems, kind=f"COCO json {src.name}")
    if not src.is_dir():
        raise SamlabelError(f"{src}: no such file or folder")
    coco_layout = layout.coco_splits(src)  # before data.yaml: one may sit beside it for the YOLO labels
    if coco_layout:
        return read_coco_splits(coco_layout, problems, kind="COCO layout")
    for name in ("data.yaml", "data.yml", "dataset.yaml"):
        if (src / name).is_file():
            return read_yolo_yaml(src / name, problems)
    coco_splits = {
        s: (src / folder / coco_format.ROBOFLOW_NAME, src / folder)
        for s, folder in _split_folders(src)
        if (src / folder / coco_format.ROBOFLOW_NAME).is_file()
    }
    if coco_splits:
        return read_coco_splits(coco_splits, problems, kind="Roboflow COCO export")
    if (src / "images").is_dir() and (src / "labels").is_dir():
        return read_yolo_pair(src / "images", src / "labels", names, problems)
    raise SamlabelError(
        f"{src}: no dataset recognised. Looked for: data.yaml (YOLO / Roboflow YOLO export); "
        "train|valid|test/_annotations.coco.json (Roboflow COCO export); annotations/instances_<split>.json + "
        "images/<split>/ (COCO layout); images/ + labels/ (YOLO pair, "
        "with --names or classes.txt); a COCO .json file (with --images DIR); or a .zip of one of these"
    )


def _split_folders(root: Path) -> list[tuple[str, str]]:
    """(split, folder) pairs; ``val`` is read as ``valid`` unless a ``valid`` folder exists too."""
    folders = [f for f in ("train", "valid", "val", "test") if (root / f).is_dir()]
    if "valid" in folders and "val" in folders:
        raise SamlabelError(f"{root}: both valid/ and val/ exist; merge or rename one of them")
    return [(data_yaml.canonical_split(f), f) for f in folders]


# ---------------------------------------------------------------------------------------------- YOLO


def read_yolo_yaml(path: Path, problems: Problems, *, confined: bool = True) -> _Found:
    """An Ultralytics or Roboflow data.yaml: names (list or dict) and split folders.

    ``confined``: the data.yaml came with a dataset (a folder or archive the user gave, not the file itself), so
    its splits, and the images an image list names, must lie inside the data.yaml's folder; a split that leaves
    it (``/abs/path``, ``../../x``, a symlink out) is refused and reported, and none of its images is read.
    """
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise SamlabelError(f"{path}: cannot read it ({e})") from None
    if not isinstance(data, dict):
        raise SamlabelError(f"{path}: expected a mapping (names, train, val ...), got a {type(data).__name__}")
    names = data_yaml.parse_names(data.get("names"), path)
    base = data_yaml.base_dir(data, path.parent)
    items: list[ImageItem] = []
    found = []
    for key, split, entries in data_yaml.split_entries(data):
        for index, entry in enumerate(entries):
            images_dir = data_yaml.resolve_split_dir(entry, base, path.parent)
            if images_dir is None:
                problems.add(f"{path.name}: {key}", f"{entry} not found", "split skipped")
                continue
            if confined and not _inside(path.parent, images_dir):
                problems.add(
                    f"{path.name}: {key}",
                    f"{entry} leads outside the dataset folder {path.parent}",
                    "split refused (pass the data.yaml itself to use folders it names elsewhere)",
                )
                continue
            labels_dir = yolo.labels_dir_for(images_dir)
            prefix = f"{index}-{images_dir.name}" if len(entries) > 1 else ""  # several folders in one split
            items += _yolo_items(
                images_dir,
                labels_dir,
                split,
                names,
                problems,
                root=path.parent,
                prefix=prefix,
                confine=path.parent if confined else None,
            )
            found.append(f"{split}={images_dir}")
    if not items:
        raise SamlabelError(f"{path}: none of its splits (train/val/test) point to an existing image folder")
    return _Found(kind=f"YOLO dataset ({path}; {'; '.join(found)})", names=names, items=items)


def _inside(root: Path, path: Path) -> bool:
    """``path`` lies inside ``root``, by its normalised path and with symlinks resolved."""
    return safepath.within(root, path) and safepath.within(root.resolve(), path.resolve())


def read_yolo_pair(images_dir: Path, labels_dir: Path, names, problems: Problems) -> _Found:
    """A bare ``images/`` + ``labels/`` pair; names from ``names`` or a classes.txt beside them."""
    if not names:
        for candidate in (images_dir.parent / "classes.txt", labels_dir / "classes.txt"):
            if candidate.is_file():
                names = [ln.strip() for ln in candidate.read_text(encoding="utf-8").splitlines() if ln.strip()]
                break
    if not names:
        raise SamlabelError(
            f"{images_dir.parent}: an images/ + labels/ pair needs class names: add --names a,b,c or a classes.txt"
        )
    items = _yolo_items(images_dir, labels_dir, "train", list(names), problems, root=images_dir.parent)
    return _Found(kind=f"YOLO images/labels pair ({images_dir.parent})", names=list(names), items=items)


def _yolo_items(
    images_dir: Path,
    labels_dir: Path,
    split: str,
    names,
    problems: Problems,
    *,
    root: Path,
    prefix: str = "",
    confine: Path | None = None,
) -> list[ImageItem]:
    """Images of one split with their label files; problems are named relative to ``root``.

    ``images_dir`` may be a .txt list of image paths (relative to its folder); each image's label
    file is then found the Ultralytics way, by replacing the last ``images`` folder with ``labels``.
    """
    if images_dir.is_file():  # a .txt list of images
        pairs = []
        for line in images_dir.read_text(encoding="utf-8").splitlines():
            if line.strip():
                p = Path(line.strip())
                p = Path(os.path.normpath(p if p.is_absolute() else images_dir.parent / p))
                pairs.append((p, _rel(p, images_dir.parent)))
        pairs = [(p, rel) for p, rel in pairs if p.is_file()]
        outside = [rel for p, rel in pairs if confine is not None and not _inside(confine, p)]
        if outside:
            problems.add(
                f"{images_dir.name}: {len(outside)} image(s), e.g. {outside[0]}",
                f"outside the dataset folder {confine}",
                "not read",
            )
            pairs = [(p, rel) for p, rel in pairs if rel not in outside]
        return _labeled(
            pairs, split, names, problems, root, prefix, lambda p: yolo.labels_dir_for(p.parent) / f"{p.stem}.txt"
        )
    else:
        pairs = sorted(
            ((p, p.relative_to(images_dir).as_posix()) for p in images_dir.rglob("*") if _is_image_file(p)),
            key=lambda pr: pr[1],
        )
    rel_of = {p: rel for p, rel in pairs}
    items = _labeled(pairs, split, names, problems, root, prefix, lambda p: yolo.label_path(labels_dir, rel_of[p]))
    used = {yolo.label_path(labels_dir, rel).resolve() for rel in rel_of.values()}
    if labels_dir.is_dir():
        for lf in sorted(labels_dir.rglob("*.txt")):
            if lf.resolve() not in used and lf.name != "classes.txt":
                problems.add(_rel(lf, root), "label file without an image", "ignored")
    return items


def _labeled(pairs, split, names, problems, root, prefix, label_of) -> list[ImageItem]:
    """Plan output names for ``pairs`` and attach each image's YOLO labels (``None`` = no label file)."""
    if prefix:
        pairs = [(p, f"{prefix}/{rel}") for p, rel in pairs]
    items = []
    for it in _plan_split(pairs, split):
        label_file = label_of(it.path)
        labels = _read_yolo_file(label_file, len(names), problems, root) if label_file.is_file() else None
        items.append(it.with_labels(labels))
    return items


def _read_yolo_file(path: Path, nc: int, problems: Problems, root: Path) -> SourceLabels:
    objects = []
    where_file = _rel(path, root)
    # utf-8-sig: a byte-order mark (Windows editors) must not cost the first line
    for number, line in enumerate(path.read_text(encoding="utf-8-sig", errors="replace").splitlines(), 1):
        where = f"{where_file}:{number}"
        try:
            parsed = yolo.parse_line(line)
        except ValueError as e:
            problems.add(where, str(e), "skipped")
            continue
        if parsed is None:
            continue
        cls, coords = parsed
        if not 0 <= cls < nc:
            problems.add(where, f"class id {cls} outside 0..{nc - 1}", "skipped")
            continue
        if len(coords) == 4:
            xc, yc, w, h = coords
            if w <= 0 or h <= 0:
                problems.add(where, f"box of zero or negative size ({w:g} x {h:g})", "skipped")
                continue
            obj = _box_object(cls, (xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2), (), number, where, problems)
        elif len(coords) >= 6 and len(coords) % 2 == 0:
            obj = _polygon_object(cls, [coords.reshape(-1, 2)], number, where, problems)
        else:
            problems.add(where, f"expected 4 box values or >= 6 polygon values, got {len(coords)}", "skipped")
            continue
        if obj is not None:
            objects.append(obj)
    return SourceLabels(objects=tuple(objects))


def _box_object(cls, xyxy, polygons, source_id, where, problems) -> SourceObject | None:
    x0, y0, x1, y1 = xyxy
    clipped = (max(x0, 0.0), max(y0, 0.0), min(x1, 1.0), min(y1, 1.0))
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        problems.add(where, "box empty after clipping to the image", "skipped")
        return None
    if clipped != (x0, y0, x1, y1):
        problems.add(where, "box partly outside the image", "clipped")
    return SourceObject(class_id=cls, xyxy_n=clipped, polygons_n=tuple(polygons), source_id=int(source_id))


def _polygon_object(cls, polys, source_id, where, problems) -> SourceObject | None:
    polys = [p for p in polys if len(p) >= 3]
    if not polys:
        problems.add(where, "polygon with fewer than 3 points", "skipped")
        return None
    allp = np.concatenate(polys)
    x0, y0 = allp.min(axis=0)
    x1, y1 = allp.max(axis=0)
    if x1 <= x0 or y1 <= y0:
        problems.add(where, "polygon of zero area", "skipped")
        return None
    outside = (allp < 0).any() or (allp > 1).any()
    polys = [np.clip(p, 0, 1) for p in polys]
    obj = _box_object(cls, (x0, y0, x1, y1), polys, source_id, where, problems if not outside else Problems())
    if obj is not None and outside:
        problems.add(where, "polygon partly outside the image", "clipped")
    elif obj is None and outside:
        problems.add(where, "polygon entirely outside the image", "skipped")
    return obj


# ---------------------------------------------------------------------------------------------- COCO


def read_coco_splits(splits: dict[str, tuple[Path, Path]], problems: Problems, *, kind: str) -> _Found:
    """COCO json files, one per split, each with the folder its ``file_name`` entries are relative to."""
    names: list[str] | None = None
    items: list[ImageItem] = []
    for split, (json_path, root) in splits.items():
        coco = coco_format.load(json_path)
        cats = coco_format.drop_roboflow_supercategory(coco_format.parse_categories(coco, json_path), coco)
        split_names = [str(c["name"]) for c in cats]
        if names is None:
            names = split_names
        elif split_names != names:
            raise SamlabelError(f"{json_path}: categories {split_names} differ from another split's {names}")
        cat_to_class = {c["id"]: i for i, c in enumerate(cats)}
        items += _coco_items(coco, json_path, root, split, cat_to_class, problems)
    if not names:
        raise SamlabelError(f"{kind}: no categories")
    return _Found(kind=f"{kind} ({', '.join(str(p) for p, _ in splits.values())})", names=names, items=items)


def _coco_items(coco, json_path, root: Path, split, cat_to_class, problems: Problems) -> list[ImageItem]:
    where_json = json_path.name if json_path.parent == root else str(json_path)
    images: dict[object, dict] = {}  # by id as the JSON gives it: a number or a string
    listed = coco.get("images", [])
    for index, img in enumerate(listed if isinstance(listed, list) else []):
        iid = img.get("id") if isinstance(img, dict) else None
        if not isinstance(iid, (int, str)) or isinstance(iid, bool):
            problems.add(f"{where_json}: image #{index}", "not an object with a number or string id", "skipped")
            continue
        if iid in images:
            problems.add(f"{where_json}: image {iid}", "duplicate image id", "second entry ignored")
            continue
        images[iid] = img
    per_image: dict[object, list[SourceObject]] = {iid: [] for iid in images}
    seen_ann: set = set()
    for index, ann in enumerate(coco.get("annotations", [])):
        aid = ann.get("id") if isinstance(ann, dict) else None
        where = f"{where_json}: annotation {aid if aid is not None else f'#{index}'}"
        if not isinstance(ann, dict):
            problems.add(where, "not an object", "skipped")
            continue
        if not all(isinstance(ann.get(k), (int, str, type(None))) for k in ("id", "image_id", "category_id")):
            problems.add(where, "id, image_id or category_id is not a number or string", "skipped")
            continue
        if aid is not None and aid in seen_ann:
            problems.add(where, "duplicate annotation id", "skipped")
            continue
        seen_ann.add(aid)
        img = images.get(ann.get("image_id"))
        if img is None:
            problems.add(where, f"unknown image id {ann.get('image_id')}", "skipped")
            continue
        if ann.get("category_id") not in cat_to_class:
            problems.add(where, f"unknown category id {ann.get('category_id')}", "skipped")
            continue
        if ann.get("iscrowd") in (1, True):  # a region of many objects, not one instance
            problems.add(where, "crowd annotation (iscrowd 1)", "skipped, as Ultralytics' convert_coco does")
            continue
        source_id = aid if isinstance(aid, int) and not isinstance(aid, bool) else index
        try:
            obj = _coco_object({**ann, "id": source_id}, img, cat_to_class[ann["category_id"]], where, problems)
        except (TypeError, ValueError, KeyError, IndexError) as e:
            problems.add(where, f"malformed annotation ({type(e).__name__}: {e})", "skipped")
            continue
        if obj is not None:
            per_image[img["id"]].append(obj)
    pairs = []
    labels_by_rel = {}
    left_out = set()  # listed in the json but refused: not to be taken for an unlabeled image either
    for iid, img in sorted(images.items(), key=lambda kv: str(kv[1].get("file_name"))):
        name = str(img.get("file_name", ""))
        where = f"{where_json}: image {iid}"
        rel = safe_relative(name)
        if rel is None:
            problems.add(where, f"file_name {name!r} is absolute or escapes the image folder", "refused")
            continue
        if rel in labels_by_rel:
            problems.add(where, f"file_name {name!r} listed twice", "second entry ignored")
            continue
        if not _positive_size(img):
            problems.add(where, "no width/height", "image left out")
            left_out.add(rel)
            continue
        path = root / rel
        if not path.is_file():
            problems.add(where, f"image file {name!r} not found in {root}", "skipped")
            continue
        pairs.append((path, rel))
        declared_hw = (round(float(img["height"])), round(float(img["width"])))
        labels_by_rel[rel] = SourceLabels(objects=tuple(per_image[iid]), declared_hw=declared_hw)
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if _is_image_file(p) and rel not in labels_by_rel and rel not in left_out:
            pairs.append((p, rel))  # on disk but not in the json: unlabeled
    return [it.with_labels(labels_by_rel.get(it.rel.split("/", 1)[1])) for it in _plan_split(pairs, split)]


def _positive_size(img: dict) -> bool:
    try:
        return float(img.get("width") or 0) > 0 and float(img.get("height") or 0) > 0
    except (TypeError, ValueError):
        return False


def _coco_object(ann, img, cls, where, problems: Problems) -> SourceObject | None:
    if not _positive_size(img):
        return None  # the image itself is reported and left out
    w, h = float(img["width"]), float(img["height"])
    bbox = ann.get("bbox")
    seg = ann.get("segmentation")
    polys: list[np.ndarray] = []
    rle = None
    if isinstance(seg, list) and seg:
        parts, bad = coco_format.parse_polygons(seg)
        polys = [p / [w, h] for p in parts]
        if bad:
            problems.add(where, "polygon part with fewer than 3 points or an odd count", "part dropped")
    elif coco_format.is_rle(seg):
        if list(seg.get("size", [])) != [int(h), int(w)]:
            problems.add(where, f"RLE size {seg.get('size')} is not the image's [{int(h)}, {int(w)}]", "box used")
        else:
            rle = seg
    if rle is not None:
        mask = rle_to_mask(rle)
        if mask.area == 0:
            problems.add(where, "empty RLE mask", "box used")
            rle = None
        else:
            x0, y0, x1, y1 = mask.xyxy
            return SourceObject(cls, (x0 / w, y0 / h, x1 / w, y1 / h), (), rle, int(ann.get("id", 0)))
    if polys:
        return _polygon_object(cls, polys, ann.get("id", 0), where, problems)
    if not bbox or len(bbox) != 4:
        problems.add(where, "neither segmentation nor bbox", "skipped")
        return None
    x, y, bw, bh = (float(v) for v in bbox)
    if not all(math.isfinite(v) for v in (x, y, bw, bh)) or bw <= 0 or bh <= 0:
        problems.add(where, f"bbox of zero or negative size {bbox}", "skipped")
        return None
    return _box_object(cls, (x / w, y / h, (x + bw) / w, (y + bh) / h), (), ann.get("id", 0), where, problems)


# ------------------------------------------------------------------------------------------- helpers


def _plan_split(pairs, split: str) -> list[ImageItem]:
    """Unique output names within ``split``; the item's identity ``rel`` is prefixed with the split."""
    items = plan_items(pairs, {split: 1.0})
    return [ImageItem(path=it.path, rel=f"{split}/{it.rel}", name=it.name, split=split) for it in items]


def _is_image_file(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith(".")


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)
