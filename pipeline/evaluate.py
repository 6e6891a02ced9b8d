"""Measure a labeled dataset against ground truth: COCO mask and box AP, per-instance mask and boundary IoU.

Both sides are datasets ``pipeline.sources`` reads (samlabel's output, a data.yaml / YOLO-seg
dataset, a Roboflow COCO export, a bare COCO json with its images). Images are paired by source
path (samlabel records each image's original path as ``source`` in its COCO files) or else by file
name; classes are paired by name. Images are processed one at a time and masks are kept as crops
(``CropMask``) or compressed RLE, so memory follows the number of objects, not their pixels.
"""

from __future__ import annotations

import contextlib
import heapq
import io
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from scipy.optimize import linear_sum_assignment

from pipeline.errors import SamlabelError
from pipeline.formats import coco as coco_format
from pipeline.formats import layout
from pipeline.images import upright_hw
from pipeline.masks import CropMask, full_rle
from pipeline.sources import read_dataset, to_instances
from pipeline.types import ImageItem, Instances, SourceLabels

#: How prediction scores (which rank detections for AP) are made; also in the result as ``"score"``.
SCORE = "confidence x mask_score"

_EXAMPLES = 5


@dataclass(frozen=True)
class EvalImage:
    """One image of a dataset as evaluation needs it.

    Attributes:
        path: the image file.
        rel: its identity in the dataset (split and path), used in messages and ``worst``.
        name: the dataset's flat output name (``a/x.jpg`` -> ``a_x.jpg``).
        source: the original image path a samlabel dataset records (COCO ``images[].source``), or None.
        labels: the image's objects, normalised to the image; ``to_instances`` places them on its pixels.
        scores: prediction score by ``source_id`` (COCO annotation id), where the dataset stores one.
    """

    path: Path
    rel: str
    name: str
    source: str | None
    labels: SourceLabels
    scores: Mapping[int, float] = field(default_factory=dict)


@dataclass(frozen=True)
class EvalSet:
    """A dataset's class names (in class-id order), images, and the problems its reader met."""

    names: list[str]
    images: list[EvalImage]
    problems: list[dict] = field(default_factory=list)


# ----------------------------------------------------------------------------------------- the entry


def evaluate(
    pred: str | Path,
    gt: str | Path,
    *,
    pred_images: str | Path | None = None,
    gt_images: str | Path | None = None,
    pred_names: Sequence[str] | None = None,
    gt_names: Sequence[str] | None = None,
    match_iou: float = 0.5,
    boundary_ratio: float = 0.02,
    worst: int = 10,
) -> dict:
    """Compare predictions with ground truth, image by image.

    Images: a PRED image whose COCO entry has ``source`` (or whose own file) is a GT image's file
    pairs with it; the others pair by file name where the name is unique among the GT images left
    (see :func:`match_images`). Only paired images are evaluated; the others are counted. A file
    listed in two splits (a data.yaml whose val is its train) counts once.
    Classes pair by name; objects of a class only one side has are counted, not evaluated.

    Scores: a prediction's score is its detector ``confidence`` times SAM's ``mask_score`` (COCO
    annotation fields samlabel writes); the one present if only one is, 1 if neither (YOLO files
    carry no scores: AP then follows file order among equal scores).

    AP: pycocotools' COCOeval, ``segm`` (masks) and ``bbox``; boxes are the masks' tight boxes where
    there is a mask. A GT object without a mask is, for ``segm``, an ignore region of its box (COCO's
    crowd rule: predictions inside it are neither right nor wrong); a prediction without a mask
    only takes part in ``bbox``. AR is COCO's AR@100. A metric with no ground truth is None.

    Matching: per image and class, the one-to-one assignment of predictions to GT objects (both with
    masks) that maximises the summed mask IoU over pairs with IoU >= ``match_iou`` (and > 0)
    (Hungarian, ``scipy.optimize.linear_sum_assignment``). ``matched`` pairs get a mask IoU and a
    boundary IoU (Cheng et al. 2021: each mask's pixels within ``d`` of its outline, the image border
    counting as outline, ``d = max(1, round(boundary_ratio x image diagonal))``; IoU of the two
    bands), averaged over matched pairs. ``missed``: GT objects left unmatched; ``unmatched``:
    predictions left unmatched.

    Args:
        pred: the predictions, e.g. samlabel's output folder.
        gt: the ground truth.
        pred_images: image folder of a bare COCO json ``pred`` (as ``--images``).
        gt_images: image folder of a bare COCO json ``gt``.
        pred_names: class names of a bare images/ + labels/ ``pred`` (as ``--names``).
        gt_names: class names of a bare images/ + labels/ ``gt``.
        match_iou: least mask IoU of a matched pair; 0 matches any overlap.
        boundary_ratio: boundary band width as a fraction of the image diagonal (the paper's 2 %).
        worst: how many of the lowest-IoU matched instances to list.

    Returns:
        ``{"segm": {"AP", "AP50", "AP75", "AR"}, "bbox": {...}, "mask_iou": {"mean", "per_class"},
        "boundary_iou": {"mean", "per_class"}, "matched", "missed", "unmatched", "per_class",
        "images": {"matched", "by_path", "by_name", "pred_only", "gt_only", "skipped", ...},
        "classes": {"evaluated", "pred_only", "gt_only"}, "instances": {...}, "worst": [...],
        "source_problems": {"pred", "gt"} (what the dataset readers reported, with a few examples),
        "score": "confidence x mask_score", "match_iou", "boundary_ratio"}``.

    Raises:
        SamlabelError: a dataset cannot be read, no image pairs up, or no class name is shared.
    """
    if not 0 <= match_iou <= 1:
        raise SamlabelError(f"match_iou must be in [0, 1], got {match_iou}")
    if not boundary_ratio > 0:
        raise SamlabelError(f"boundary_ratio must be > 0, got {boundary_ratio}")
    pred_set = _load(pred, images=pred_images, names=pred_names)
    gt_set = _load(gt, images=gt_images, names=gt_names)
    pairs, image_stats = match_images(pred_set.images, gt_set.images, pred=str(pred), gt=str(gt))
    acc = _Accumulator(pred_set.names, gt_set.names, match_iou=match_iou, worst=worst, pred=pred, gt=gt)
    skipped = []
    for image_id, (p, g) in enumerate(pairs, 1):
        hw, problem = _pair_size(p.path, g.path)
        if problem:
            skipped.append({"image": g.rel, "reason": problem})
            continue
        d = boundary_dilation(hw, ratio=boundary_ratio)
        acc.add(image_id, g.rel, hw, d, pred=to_instances(p.labels, hw), gt=to_instances(g.labels, hw), scores=p.scores)
    image_stats["skipped"] = len(skipped)
    image_stats["skipped_examples"] = skipped[:_EXAMPLES]
    result = acc.result()
    result["images"] = image_stats
    result["source_problems"] = {
        side: {"count": len(ds.problems), "examples": ds.problems[:_EXAMPLES]}
        for side, ds in (("pred", pred_set), ("gt", gt_set))
    }
    result["match_iou"] = match_iou
    result["boundary_ratio"] = boundary_ratio
    return result


# ------------------------------------------------------------------------------------------ reading


def _load(src: str | Path, *, images: str | Path | None = None, names: Sequence[str] | None = None) -> EvalSet:
    """Read a dataset through ``pipeline.sources`` (the only use of its API in this module).

    A folder with COCO files per split (samlabel's output, a Roboflow COCO export) and a COCO json
    are read through their COCO files: exact masks, and the ``source`` and scores kept beside them.
    """
    src = Path(src)
    if src.suffix.lower() == ".zip":
        raise SamlabelError(f"{src}: extract the zip first and evaluate the folder")
    coco_files = _coco_files(src, images)
    if not coco_files:
        ds = read_dataset(src, images=images, names=names, keep_unlabeled=True)
        found = [EvalImage(path=it.path, rel=it.rel, name=it.name, source=None, labels=_labels(it)) for it in ds.items]
        return EvalSet(names=list(ds.names), images=_once(found), problems=[q.to_dict() for q in ds.problems])
    all_names, out, problems = None, [], []
    for json_path, root in coco_files:
        ds = read_dataset(json_path, images=root, keep_unlabeled=True)
        problems += [q.to_dict() for q in ds.problems]
        if all_names is not None and list(ds.names) != all_names:
            raise SamlabelError(f"{json_path}: categories {list(ds.names)} differ from another split's {all_names}")
        all_names = list(ds.names)
        sources, scores = _coco_extras(json_path)
        split = root.name if json_path.parent.name == "annotations" else json_path.parent.name  # COCO layout
        prefix = f"{split}/" if len(coco_files) > 1 else ""
        for it in ds.items:
            file_name = it.path.relative_to(root).as_posix()
            out.append(
                EvalImage(
                    path=it.path,
                    rel=prefix + file_name,
                    name=it.name,
                    source=sources.get(file_name),
                    labels=_labels(it),
                    scores=scores.get(file_name, {}),
                )
            )
    return EvalSet(names=all_names or [], images=_once(out), problems=problems)


def _labels(item: ImageItem) -> SourceLabels:
    """An item's labels; an image without a label file (kept by ``keep_unlabeled``) has no objects."""
    return item.labels if item.labels is not None else SourceLabels()


def _once(images: list[EvalImage]) -> list[EvalImage]:
    """Each file once: a data.yaml may list one folder as two splits (samlabel's does when a split is empty)."""
    seen: set[str] = set()
    out = []
    for im in images:
        key = _real(im.path)
        if key not in seen:
            seen.add(key)
            out.append(im)
    return out


def _coco_files(src: Path, images: str | Path | None) -> list[tuple[Path, Path]]:
    """(COCO json, folder its file names are relative to) of a COCO-based dataset; [] for others."""
    if src.is_file() and src.suffix.lower() == ".json":
        if images is None:
            raise SamlabelError(f"{src}: a COCO json needs its image folder (images=...)")
        return [(src, Path(images))]
    if not src.is_dir():
        return []
    found = []
    for split in ("train", "valid", "val", "test"):
        json_path = src / split / "_annotations.coco.json"
        if json_path.is_file():
            # samlabel puts images in <split>/images/, Roboflow beside the json
            root = src / split / "images" if (src / split / "images").is_dir() else src / split
            found.append((json_path, root))
    return found or list(layout.coco_splits(src).values())  # annotations/instances_<split>.json + images/<split>/


def _coco_extras(json_path: Path) -> tuple[dict[str, str], dict[str, dict[int, float]]]:
    """What ``read_dataset`` does not keep: each image's ``source`` and each annotation's score.

    Returns:
        (file_name -> source, file_name -> {source_id -> confidence x mask_score}); ``source_id`` is
        the annotation id (its index where the id is not an integer), as ``read_dataset`` assigns it.
    """
    coco = coco_format.load(json_path)
    file_names, sources = {}, {}
    for img in coco.get("images", []):
        if isinstance(img, dict) and isinstance(img.get("file_name"), str):
            name = _clean(img["file_name"])
            file_names[img.get("id")] = name
            if isinstance(img.get("source"), str):
                sources[name] = img["source"]
    scores: dict[str, dict[int, float]] = {}
    for index, ann in enumerate(coco.get("annotations", [])):
        if not isinstance(ann, dict) or ann.get("image_id") not in file_names:
            continue
        aid = ann.get("id")
        source_id = aid if isinstance(aid, int) and not isinstance(aid, bool) else index
        factors = [ann[k] for k in ("confidence", "mask_score") if _finite(ann.get(k))]
        if factors:
            scores.setdefault(file_names[ann["image_id"]], {})[source_id] = float(np.prod(factors))
    return sources, scores


def _clean(name: str) -> str:
    return "/".join(p for p in PurePosixPath(name.replace("\\", "/")).parts if p != ".")


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _pair_size(pred_path: Path, gt_path: Path) -> tuple[tuple[int, int], str | None]:
    """The pair's (H, W), or a reason to skip it (unreadable, or the two files differ in size)."""
    try:
        hw = upright_hw(gt_path)
        pred_hw = hw if os.path.realpath(pred_path) == os.path.realpath(gt_path) else upright_hw(pred_path)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        return (0, 0), f"not a readable image ({type(e).__name__}: {e})"
    if pred_hw != hw:
        return hw, f"PRED's image is {pred_hw[1]}x{pred_hw[0]}, GT's {hw[1]}x{hw[0]} (width x height)"
    return hw, None


# ---------------------------------------------------------------------------------------- matching


def match_images(
    preds: Sequence[EvalImage], gts: Sequence[EvalImage], *, pred: str = "PRED", gt: str = "GT"
) -> tuple[list[tuple[EvalImage, EvalImage]], dict]:
    """Pair PRED images with GT images: by path first, then by unique file name.

    By path: PRED's recorded ``source`` (samlabel's COCO files), or else PRED's own file, is GT's
    file or GT's recorded ``source`` (paths compared resolved; a relative ``source`` is taken from
    the current folder, as samlabel recorded it). The rest pair by file name (the source's name,
    then the PRED file's name) with a GT image of that file name or flat dataset name, where
    exactly one GT image left has it. Each GT image pairs at most once.

    Returns:
        (pairs, counts): counts has ``matched``, ``by_path``, ``by_name``, ``pred_only``,
        ``gt_only`` and a few examples of each unpaired side.

    Raises:
        SamlabelError: no pair at all, naming a few images of each side.
    """
    by_path: dict[str, set[int]] = {}
    for j, g in enumerate(gts):
        for key in {_real(g.path), *([_real(g.source)] if g.source else [])}:
            by_path.setdefault(key, set()).add(j)
    taken: dict[int, EvalImage] = {}
    leftover, n_path = [], 0
    for p in preds:
        candidates: list[str | Path] = [*([p.source] if p.source else []), p.path]
        for candidate in candidates:
            js = by_path.get(_real(candidate), set())
            if len(js) == 1 and next(iter(js)) not in taken:
                taken[next(iter(js))] = p
                n_path += 1
                break
        else:
            leftover.append(p)
    by_name: dict[str, set[int]] = {}
    for j, g in enumerate(gts):
        if j not in taken:
            for key in {g.path.name, PurePosixPath(g.name).name}:
                by_name.setdefault(key, set()).add(j)
    pred_only = []
    for p in leftover:
        keys = ([Path(p.source).name] if p.source else []) + [p.path.name]
        for key in keys:
            js = by_name.get(key, set())
            if len(js) == 1 and next(iter(js)) not in taken:
                taken[next(iter(js))] = p
                break
        else:
            pred_only.append(p)
    pairs = [(taken[j], gts[j]) for j in sorted(taken)]
    gt_only = [g for j, g in enumerate(gts) if j not in taken]
    if not pairs:
        raise SamlabelError(
            f"no image of PRED ({pred}) matches an image of GT ({gt}) by source path or file name. "
            f"PRED has {_some(p.rel for p in preds)}; GT has {_some(g.rel for g in gts)}. "
            "Evaluate predictions made from GT's images (samlabel records each image's source path)"
        )
    return pairs, {
        "matched": len(pairs),
        "by_path": n_path,
        "by_name": len(pairs) - n_path,
        "pred_only": len(pred_only),
        "gt_only": len(gt_only),
        "pred_only_examples": [p.rel for p in pred_only[:_EXAMPLES]],
        "gt_only_examples": [g.rel for g in gt_only[:_EXAMPLES]],
    }


def _real(path: str | Path) -> str:
    return os.path.realpath(path)


def _some(names) -> str:
    names = list(names)
    if not names:
        return "no images"
    shown = ", ".join(names[:3])
    return f"{len(names)} images ({shown}{', ...' if len(names) > 3 else ''})"


def match_instances(iou: np.ndarray, *, match_iou: float) -> list[tuple[int, int]]:
    """One-to-one pairs (row, col) maximising the summed IoU over pairs with IoU >= match_iou and > 0.

    Args:
        iou: float (P, G) IoU of each prediction with each GT object (one image, one class).
        match_iou: least IoU of a pair.
    """
    if iou.size == 0:
        return []
    eligible = (iou > 0) & (iou >= match_iou)
    rows, cols = linear_sum_assignment(np.where(eligible, iou, 0.0), maximize=True)
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if eligible[r, c]]


# ---------------------------------------------------------------------------------------- geometry


def boundary_dilation(hw: tuple[int, int], *, ratio: float = 0.02) -> int:
    """Boundary band width in pixels: ``max(1, round(ratio x diagonal))``, as the Boundary IoU reference."""
    return max(1, int(round(ratio * math.hypot(hw[0], hw[1]))))


def mask_boundary(mask: CropMask, dilation: int) -> np.ndarray:
    """The mask's pixels within ``dilation`` px (chessboard distance) of a pixel outside it, on its crop.

    Pixels outside the crop are outside the mask, and pixels beyond the image border count as outside
    too, as in the Boundary IoU reference (which pads the image with zeros before eroding), so the
    crop gives exactly what the full image would.

    Returns:
        bool array of ``mask.shape``, placed at ``(mask.x0, mask.y0)``.
    """
    bits = mask.bits.view(np.uint8)
    if bits.size == 0:
        return bits.astype(bool)
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * dilation + 1, 2 * dilation + 1))
    inner = cv2.erode(bits, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return (bits > inner).astype(bool)


def boundary_iou(a: CropMask, b: CropMask, *, dilation: int) -> float:
    """Boundary IoU (Cheng et al. 2021) of two masks: IoU of their :func:`mask_boundary` bands; 1.0 if both empty."""
    ba, bb = mask_boundary(a, dilation), mask_boundary(b, dilation)
    inter = _window_and(ba, a.x0, a.y0, bb, b.x0, b.y0)
    union = int(np.count_nonzero(ba)) + int(np.count_nonzero(bb)) - inter
    return 1.0 if union == 0 else inter / union


def _window_and(a: np.ndarray, ax: int, ay: int, b: np.ndarray, bx: int, by: int) -> int:
    """Pixels set in both crops (bits at image offsets), counted where the crops overlap."""
    x0, y0 = max(ax, bx), max(ay, by)
    x1, y1 = min(ax + a.shape[1], bx + b.shape[1]), min(ay + a.shape[0], by + b.shape[0])
    if x1 <= x0 or y1 <= y0:
        return 0
    return int(np.count_nonzero(a[y0 - ay : y1 - ay, x0 - ax : x1 - ax] & b[y0 - by : y1 - by, x0 - bx : x1 - bx]))


# -------------------------------------------------------------------------------------- accumulate


class _Accumulator:
    """Collects COCO annotations (compressed RLE) and per-instance IoUs image by image."""

    def __init__(self, pred_names, gt_names, *, match_iou: float, worst: int, pred, gt) -> None:
        self.classes = [n for n in dict.fromkeys(gt_names) if n in set(pred_names)]
        if not self.classes:
            raise SamlabelError(
                f"PRED ({pred}) has classes {list(pred_names)} and GT ({gt}) {list(gt_names)}: no name in common "
                "(classes are matched by name)"
            )
        index = {n: i for i, n in enumerate(self.classes)}
        self.pred_names, self.gt_names = list(pred_names), list(gt_names)
        self.pred_cls = np.array([index.get(n, -1) for n in pred_names] or [-1])
        self.gt_cls = np.array([index.get(n, -1) for n in gt_names] or [-1])
        self.match_iou, self.worst_n = match_iou, worst
        self.images: list[dict] = []
        self.gt_segm: list[dict] = []
        self.gt_bbox: list[dict] = []
        self.dt_segm: list[dict] = []
        self.dt_bbox: list[dict] = []
        self.only: dict[str, Counter[str]] = {"pred_only": Counter(), "gt_only": Counter()}
        self.counts: Counter[str] = Counter()
        self.per_class: dict[str, Counter[str]] = {n: Counter() for n in self.classes}
        self.sums = {n: np.zeros(2) for n in self.classes}  # summed (mask IoU, boundary IoU) per class
        self.worst: list[tuple] = []  # heap of the lowest IoUs: (-iou, -boundary iou, -sequence, record)
        self.seq = 0

    def add(self, image_id: int, rel: str, hw, dilation: int, *, pred: Instances, gt: Instances, scores) -> None:
        self.images.append({"id": image_id, "height": int(hw[0]), "width": int(hw[1]), "file_name": rel})
        g_cls = self._classes(gt, self.gt_cls, self.gt_names, "gt_only")
        p_cls = self._classes(pred, self.pred_cls, self.pred_names, "pred_only")
        g_masks = [self._add_gt(image_id, hw, gt, k, int(g_cls[k])) for k in range(len(gt)) if g_cls[k] >= 0]
        p_masks = [
            self._add_pred(image_id, hw, pred, k, int(p_cls[k]), scores) for k in range(len(pred)) if p_cls[k] >= 0
        ]
        self._match(rel, dilation, [m for m in g_masks if m], [m for m in p_masks if m])

    def _classes(self, inst: Instances, table: np.ndarray, names: list[str], side: str) -> np.ndarray:
        ids = inst.class_id
        cls = np.where((ids >= 0) & (ids < len(names)), table[np.clip(ids, 0, len(table) - 1)], -1)
        for k in np.flatnonzero(cls < 0):
            self.only[side][names[ids[k]] if 0 <= ids[k] < len(names) else str(int(ids[k]))] += 1
        return cls

    def _add_gt(self, image_id, hw, gt: Instances, k: int, c: int):
        mask = gt.masks[k]
        base = {"image_id": image_id, "category_id": c + 1}
        self.counts["gt"] += 1
        if mask is None or mask.area == 0:
            self.counts["gt_without_mask"] += 1
            bbox = _xywh(gt.xyxy[k])
            area = bbox[2] * bbox[3]
            self.gt_bbox.append({**base, "id": len(self.gt_bbox) + 1, "bbox": bbox, "area": area, "iscrowd": 0})
            # for segm, the box is an ignore region (a crowd region, in COCO's terms)
            region = mask_utils.frPyObjects(np.array([bbox], dtype=np.float64), hw[0], hw[1])[0]
            self.gt_segm.append(
                {**base, "id": len(self.gt_segm) + 1, "bbox": bbox, "area": area, "iscrowd": 1, "segmentation": region}
            )
            return None
        rle, bbox = full_rle(mask, hw), _xywh(mask.xyxy)
        ann = {**base, "bbox": bbox, "area": int(mask.area), "iscrowd": 0}
        self.gt_bbox.append({**ann, "id": len(self.gt_bbox) + 1})
        self.gt_segm.append({**ann, "id": len(self.gt_segm) + 1, "segmentation": rle})
        return c, mask, rle, int(gt.source_id[k])

    def _add_pred(self, image_id, hw, pred: Instances, k: int, c: int, scores):
        mask = pred.masks[k]
        sid = int(pred.source_id[k])
        score = float(scores.get(sid, 1.0))
        self.counts["pred"] += 1
        self.counts["pred_unscored"] += sid not in scores
        base = {"image_id": image_id, "category_id": c + 1, "score": score, "iscrowd": 0}
        if mask is None or mask.area == 0:
            self.counts["pred_without_mask"] += 1
            bbox = _xywh(pred.xyxy[k])
            self.dt_bbox.append({**base, "id": len(self.dt_bbox) + 1, "bbox": bbox, "area": bbox[2] * bbox[3]})
            return None
        rle, bbox = full_rle(mask, hw), _xywh(mask.xyxy)
        self.dt_bbox.append({**base, "id": len(self.dt_bbox) + 1, "bbox": bbox, "area": bbox[2] * bbox[3]})
        self.dt_segm.append(
            {**base, "id": len(self.dt_segm) + 1, "bbox": bbox, "area": int(mask.area), "segmentation": rle}
        )
        return c, mask, rle, sid

    def _match(self, rel: str, dilation: int, gts: list[tuple], preds: list[tuple]) -> None:
        iou = np.zeros((len(preds), len(gts)))
        if preds and gts:
            iou = np.asarray(mask_utils.iou([p[2] for p in preds], [g[2] for g in gts], [0] * len(gts)))
        p_cls, g_cls = np.array([p[0] for p in preds], int), np.array([g[0] for g in gts], int)
        for c, name in enumerate(self.classes):
            pi, gi = np.flatnonzero(p_cls == c), np.flatnonzero(g_cls == c)
            pairs = match_instances(iou[np.ix_(pi, gi)], match_iou=self.match_iou)
            stats = self.per_class[name]
            stats["matched"] += len(pairs)
            stats["missed"] += len(gi) - len(pairs)
            stats["unmatched"] += len(pi) - len(pairs)
            for r, col in pairs:
                p, g = preds[pi[r]], gts[gi[col]]
                m_iou = float(iou[pi[r], gi[col]])
                b_iou = boundary_iou(p[1], g[1], dilation=dilation)
                self.sums[name] += (m_iou, b_iou)
                record = {
                    "image": rel,
                    "class": name,
                    "iou": m_iou,
                    "boundary_iou": b_iou,
                    "pred_id": p[3],
                    "gt_id": g[3],
                }
                self.seq += 1
                heapq.heappush(self.worst, (-m_iou, -b_iou, -self.seq, record))
                if len(self.worst) > self.worst_n:
                    heapq.heappop(self.worst)

    def result(self) -> dict:
        image_ids = [im["id"] for im in self.images]
        totals = {k: sum(s[k] for s in self.per_class.values()) for k in ("matched", "missed", "unmatched")}

        def means(col: int) -> dict:
            per = {
                n: (float(self.sums[n][col] / s["matched"]) if s["matched"] else None)
                for n, s in self.per_class.items()
            }
            total = sum(float(self.sums[n][col]) for n in self.classes)
            return {"mean": total / totals["matched"] if totals["matched"] else None, "per_class": per}

        worst = [rec for *_, rec in sorted(self.worst, key=lambda t: (-t[0], -t[1], -t[2]))]
        return {
            "segm": coco_ap(self.images, self.classes, self.gt_segm, self.dt_segm, iou_type="segm"),
            "bbox": coco_ap(self.images, self.classes, self.gt_bbox, self.dt_bbox, iou_type="bbox"),
            "mask_iou": means(0),
            "boundary_iou": means(1),
            **totals,
            "per_class": {n: {k: s[k] for k in ("matched", "missed", "unmatched")} for n, s in self.per_class.items()},
            "classes": {
                "evaluated": list(self.classes),
                "pred_only": [n for n in self.pred_names if n not in self.classes],
                "gt_only": [n for n in self.gt_names if n not in self.classes],
                "pred_only_instances": dict(self.only["pred_only"]),
                "gt_only_instances": dict(self.only["gt_only"]),
            },
            "instances": {
                k: self.counts[k] for k in ("gt", "pred", "gt_without_mask", "pred_without_mask", "pred_unscored")
            },
            "worst": worst,
            "score": SCORE,
            "evaluated_images": len(image_ids),
        }


def _xywh(xyxy) -> list[float]:
    x0, y0, x1, y1 = (float(v) for v in xyxy)
    return [x0, y0, x1 - x0, y1 - y0]


def coco_ap(images: list[dict], classes: list[str], gt: list[dict], dt: list[dict], *, iou_type: str) -> dict:
    """AP, AP50, AP75 and AR@100 from pycocotools' COCOeval on in-memory annotations (its printing muted).

    Args:
        images: ``{"id", "height", "width"}`` of every evaluated image.
        classes: category names; category id ``i + 1`` is ``classes[i]``.
        gt: GT annotations (``id``, ``image_id``, ``category_id``, ``bbox``, ``area``, ``iscrowd``,
            and ``segmentation`` for ``segm``).
        dt: detections, the same fields plus ``score``.
        iou_type: ``"segm"`` or ``"bbox"``.

    Returns:
        ``{"AP", "AP50", "AP75", "AR"}``; None where COCOeval has nothing to measure (no GT).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    cats = [{"id": i + 1, "name": n} for i, n in enumerate(classes)]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt, coco_dt = COCO(), COCO()
        coco_gt.dataset = {"images": images, "categories": cats, "annotations": gt}
        coco_dt.dataset = {"images": images, "categories": cats, "annotations": dt}
        coco_gt.createIndex()
        coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        ev.params.imgIds = [im["id"] for im in images]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = ev.stats
    return {
        k: (float(stats[i]) if stats[i] >= 0 else None) for k, i in (("AP", 0), ("AP50", 1), ("AP75", 2), ("AR", 8))
    }


# ---------------------------------------------------------------------------------------------- table


def format_table(result: dict) -> str:
    """A plain-text summary of :func:`evaluate`'s result, for the terminal."""

    def num(v) -> str:
        return "-" if v is None else f"{v:.3f}"

    im, cl = result["images"], result["classes"]
    lines = [
        f"images: {im['matched']} paired ({im['by_path']} by path, {im['by_name']} by file name); "
        f"{im['pred_only']} only in PRED, {im['gt_only']} only in GT, {im.get('skipped', 0)} skipped",
        f"classes: {', '.join(cl['evaluated'])}"
        + (f"; only in PRED: {', '.join(cl['pred_only'])}" if cl["pred_only"] else "")
        + (f"; only in GT: {', '.join(cl['gt_only'])}" if cl["gt_only"] else ""),
        f"scores: {result['score']}",
        "",
        f"{'':8}{'AP':>8}{'AP50':>8}{'AP75':>8}{'AR@100':>8}",
    ]
    for kind in ("segm", "bbox"):
        r = result[kind]
        lines.append(f"{kind:8}" + "".join(f"{num(r[k]):>8}" for k in ("AP", "AP50", "AP75", "AR")))
    width = max([len("class"), len("all")] + [len(n) for n in cl["evaluated"]])
    lines += [
        "",
        f"matched at mask IoU >= {result.get('match_iou', 0.5):g}: "
        f"{result['matched']} matched, {result['missed']} missed (GT), {result['unmatched']} unmatched (PRED)",
        f"{'class':{width}}  {'matched':>7}  {'missed':>6}  {'unmatched':>9}  {'mask IoU':>8}  {'boundary IoU':>12}",
    ]
    for name in cl["evaluated"]:
        c = result["per_class"][name]
        lines.append(
            f"{name:{width}}  {c['matched']:>7}  {c['missed']:>6}  {c['unmatched']:>9}  "
            f"{num(result['mask_iou']['per_class'][name]):>8}  {num(result['boundary_iou']['per_class'][name]):>12}"
        )
    lines.append(
        f"{'all':{width}}  {result['matched']:>7}  {result['missed']:>6}  {result['unmatched']:>9}  "
        f"{num(result['mask_iou']['mean']):>8}  {num(result['boundary_iou']['mean']):>12}"
    )
    if result["worst"]:
        lines += ["", "lowest mask IoU among matched instances:"]
        lines += [
            f"  {w['image']}  {w['class']}  IoU {w['iou']:.3f}  boundary IoU {w['boundary_iou']:.3f}"
            for w in result["worst"]
        ]
    return "\n".join(lines)
