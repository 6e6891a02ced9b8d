"""One pass over a dataset's instances: counts, histograms, flag counts, and which instances the gallery shows.

Memory is bounded whatever the dataset size: one split's COCO file is held at a time (or one YOLO label file),
histograms are fixed bins, and the gallery keeps only its best candidates (``Smallest``).
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path

import numpy as np

from pipeline.formats import coco as coco_format
from pipeline.formats import layout
from pipeline.formats.data_yaml import SPLITS
from pipeline.formats.yolo import read_label_file
from pipeline.images import IMAGE_SUFFIXES
from pipeline.quality import FLAG_MEANINGS, WRITTEN_SIGNALS

#: What each quality flag means (shown as a tooltip and in the flag table); unknown flags are shown as they are.
FLAGS = FLAG_MEANINGS

#: Per-instance numbers shown on a card, in this order, when the annotation has them.
NUMBERS = ("mask_score", "confidence", *WRITTEN_SIGNALS, "area")

#: Numbers drawn as histograms over [0, 1].
HISTOGRAMS = ("mask_score", "box_fit", "stability_score")

HIST_BINS = 50

#: COCO category ids above this are not turned into class names (a malformed file must not allocate millions).
MAX_CATEGORY_ID = 100_000


@dataclass
class Histogram:
    """Counts of values in ``HIST_BINS`` equal bins over [0, 1]; values outside are counted in the edge bins."""

    counts: np.ndarray = field(default_factory=lambda: np.zeros(HIST_BINS, dtype=np.int64))
    n: int = 0
    total: float = 0.0
    outside: int = 0

    def add(self, value: float) -> None:
        self.n += 1
        self.total += value
        if not 0.0 <= value <= 1.0:
            self.outside += 1
        self.counts[min(max(int(value * HIST_BINS), 0), HIST_BINS - 1)] += 1

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else math.nan

    def share_below(self, threshold: float) -> float:
        """Fraction of values below ``threshold`` (exact when it falls on a bin edge, as 0.5 does)."""
        if not self.n:
            return math.nan
        return float(self.counts[: int(round(threshold * HIST_BINS))].sum()) / self.n


@dataclass(frozen=True)
class Item:
    """One instance as the scan sees it (no pixels).

    Attributes:
        split: split folder name (``train``, ``valid``, ``test``).
        file_name: the image's file name inside ``DIR/<split>/images``.
        image_id: COCO image id, or None for an instance read from a YOLO label file.
        ann_id: COCO annotation id, or the line number (0-based) in the YOLO label file.
        ordinal: index of the instance among its image's instances (what the sample's hash uses).
        class_id: index into data.yaml's names.
        flags: quality flag names (empty when the dataset has none).
        numbers: the ``NUMBERS`` the annotation has (``box_fit`` computed from bbox and det_bbox when missing).
        flags_known: the annotation carries a ``flags`` list (the run checked it; an empty list: none raised).
    """

    split: str
    file_name: str
    image_id: int | None
    ann_id: int
    ordinal: int
    class_id: int
    flags: tuple[str, ...] = ()
    numbers: dict = field(default_factory=dict)
    flags_known: bool = False

    @property
    def image(self) -> str:
        """The image's path relative to the dataset folder."""
        return f"{self.split}/images/{self.file_name}"


class Smallest:
    """The ``k`` values with the smallest keys seen so far, in O(k) memory; ties keep the first seen."""

    def __init__(self, k: int) -> None:
        self.k = k
        self._items: list[tuple[object, Item]] = []

    def add(self, key: object, value: Item) -> None:
        if self.k <= 0:
            return
        self._items.append((key, value))
        if len(self._items) >= 2 * self.k + 64:
            self._prune()

    def _prune(self) -> None:
        self._items.sort(key=itemgetter(0))  # stable: equal keys keep their order of arrival
        del self._items[self.k :]

    def result(self) -> list[Item]:
        self._prune()
        return [v for _, v in self._items]


def flagged_key(item: Item) -> tuple:
    """Gallery order of flagged instances: most flags, then lowest mask_score, then where they are."""
    score = item.numbers.get("mask_score", math.inf)
    return (-len(item.flags), score, _split_rank(item.split), item.file_name, item.ann_id)


def sample_key(item: Item) -> bytes:
    """A hash of the image's path and the instance's place in it: a deterministic, seed-free shuffle."""
    text = f"{item.split}/{item.file_name}#{item.ordinal}"
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()


def _split_rank(split: str) -> int:
    return SPLITS.index(split) if split in SPLITS else len(SPLITS)


@dataclass
class SplitSummary:
    """What one split holds: where the instances were read from, images, and instances per class id."""

    source: str  # "coco", "yolo" or "none"
    images: int = 0
    images_without_instances: int = 0
    per_class: Counter = field(default_factory=Counter)


@dataclass
class Scan:
    """The dataset's instances summed up, and the gallery's picks.

    Attributes:
        names: class names (from data.yaml or report.json; extended from COCO categories when those know more).
        splits: per split, in ``SPLITS`` order, what it holds.
        histograms: per number in ``HISTOGRAMS``, its histogram (only numbers some instance has).
        box_fit_computed: some ``box_fit`` values were computed here (IoU of the mask's box and the prompt box).
        flag_counts: instances per flag.
        flagged_per_class: flagged instances per class id.
        score_sum: per class id, (sum of mask_score, count) for the per-class mean.
        n_flagged / n_unflagged: instances with / without flags.
        n_flags_known: instances whose annotation carries a ``flags`` list (flagged or not): when 0, the
            annotations say nothing about flags (a YOLO-only dataset, or one written before flags existed).
        flagged: the first ``max_flagged`` flagged instances in ``flagged_key`` order.
        sample: up to ``max_sample`` unflagged instances, classes taken in turn, each in ``sample_key`` order.
        notes: problems met while reading (unreadable files), for the page.
    """

    names: list[str]
    splits: dict[str, SplitSummary] = field(default_factory=dict)
    histograms: dict[str, Histogram] = field(default_factory=dict)
    box_fit_computed: bool = False
    flag_counts: Counter = field(default_factory=Counter)
    flagged_per_class: Counter = field(default_factory=Counter)
    score_sum: dict = field(default_factory=lambda: defaultdict(lambda: [0.0, 0]))
    n_flagged: int = 0
    n_unflagged: int = 0
    n_flags_known: int = 0
    flagged: list[Item] = field(default_factory=list)
    sample: list[Item] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def n_instances(self) -> int:
        return self.n_flagged + self.n_unflagged

    def class_name(self, class_id: int) -> str:
        return self.names[class_id] if 0 <= class_id < len(self.names) else f"class {class_id}"


def dataset_layout(root: Path) -> layout.Layout:
    """The dataset's layout (Roboflow's, or COCO's ``annotations/`` + ``images/<split>``) from its files."""
    return layout.detect(root) or layout.ROBOFLOW


def coco_path(root: Path, split: str) -> Path:
    return root / dataset_layout(root).coco_file(split)


def images_dir(root: Path, split: str) -> Path:
    return root / dataset_layout(root).images_dir(split)


def scan_dataset(
    root: Path,
    names: Sequence[str],
    *,
    max_flagged: int,
    max_sample: int,
    cache: dict | None = None,
) -> Scan:
    """Read every split's instances once and sum them up (see ``Scan``).

    Args:
        root: the dataset folder.
        names: class names in class-id order (may be empty: then taken from the COCO categories).
        max_flagged: flagged instances the gallery shows at most.
        max_sample: unflagged instances the gallery shows at most.
        cache: if given, receives ``{split: coco}`` of the last COCO file read, so a caller's second pass
            need not read that one again (at most one split is held).
    """
    scan = Scan(names=list(names))
    flagged = Smallest(max_flagged)
    per_class_sample: dict[int, Smallest] = {}
    for split in SPLITS:
        items = _split_items(root, split, scan, cache)
        if items is None:
            continue
        for item in items:
            _add(scan, item)
            if item.flags:
                flagged.add(flagged_key(item), item)
            else:
                per_class_sample.setdefault(item.class_id, Smallest(max_sample)).add(sample_key(item), item)
    scan.flagged = flagged.result()
    scan.sample = _take_in_turn([per_class_sample[c].result() for c in sorted(per_class_sample)], max_sample)
    return scan


def _take_in_turn(lists: list[list[Item]], k: int) -> list[Item]:
    """Round-robin over the classes' candidate lists, so a dominant class does not fill the whole sample."""
    out: list[Item] = []
    depth = 0
    while len(out) < k and any(depth < len(candidates) for candidates in lists):
        out += [candidates[depth] for candidates in lists if depth < len(candidates)][: k - len(out)]
        depth += 1
    return out


def _add(scan: Scan, item: Item) -> None:
    summary = scan.splits[item.split]
    summary.per_class[item.class_id] += 1
    for key in HISTOGRAMS:
        if key in item.numbers:
            scan.histograms.setdefault(key, Histogram()).add(float(item.numbers[key]))
    if "mask_score" in item.numbers:
        acc = scan.score_sum[item.class_id]
        acc[0] += float(item.numbers["mask_score"])
        acc[1] += 1
    scan.n_flags_known += item.flags_known
    if item.flags:
        scan.n_flagged += 1
        scan.flag_counts.update(item.flags)
        scan.flagged_per_class[item.class_id] += 1
    else:
        scan.n_unflagged += 1


def _split_items(root: Path, split: str, scan: Scan, cache: dict | None) -> Iterator[Item] | None:
    """The split's instances from its COCO file, else from its YOLO label files; None when the split is absent."""
    lay = dataset_layout(root)
    if not (root / lay.images_dir(split)).is_dir() and not (root / lay.coco_file(split)).is_file():
        return None
    path = coco_path(root, split)
    if path.is_file():
        if cache is not None:
            cache.clear()  # before the next file is read: one split in memory at a time
        try:
            coco = coco_format.load_instances(path)
        except (OSError, ValueError) as e:
            scan.notes.append(f"{split}/{path.name} could not be read ({e})")
        else:
            if cache is not None:
                cache[split] = coco
            _extend_names(scan, coco)
            return _coco_items(coco, split, scan)
    if (root / lay.labels_dir(split)).is_dir():
        return _yolo_items(root / lay.images_dir(split), root / lay.labels_dir(split), split, scan)
    images = _image_names(root / lay.images_dir(split))
    scan.splits[split] = SplitSummary(source="none", images=len(images), images_without_instances=len(images))
    return iter(())


def _extend_names(scan: Scan, coco: dict) -> None:
    """Names from the COCO categories (id = class index + 1) where data.yaml and report.json gave none."""
    for cat in coco.get("categories") or []:
        if not isinstance(cat, dict) or not _is_id(cat.get("id")) or not 1 <= cat["id"] <= MAX_CATEGORY_ID:
            continue
        c = cat["id"] - 1
        while len(scan.names) <= c:
            scan.names.append(f"class {len(scan.names)}")
        if scan.names[c] == f"class {c}" and isinstance(cat.get("name"), str):
            scan.names[c] = cat["name"]


def _coco_items(coco: dict, split: str, scan: Scan) -> Iterator[Item]:
    images = {img["id"]: img for img in coco["images"] if isinstance(img, dict) and _is_id(img.get("id"))}
    summary = scan.splits[split] = SplitSummary(source="coco", images=len(images))
    ordinals: Counter = Counter()
    bad = 0
    for ann in coco["annotations"]:
        img = images.get(ann["image_id"]) if usable(ann) else None
        if img is None or not isinstance(img.get("file_name"), str):
            bad += 1
            continue
        ordinal = ordinals[img["id"]]
        ordinals[img["id"]] += 1
        numbers, computed = instance_numbers(ann)
        scan.box_fit_computed |= computed
        known = isinstance(ann.get("flags"), list)
        yield Item(
            split=split,
            file_name=img["file_name"],
            image_id=img["id"],
            ann_id=annotation_id(ann, ordinal),
            ordinal=ordinal,
            class_id=ann["category_id"] - 1,
            flags=tuple(f for f in ann["flags"] if isinstance(f, str)) if known else (),
            numbers=numbers,
            flags_known=known,
        )
    summary.images_without_instances = sum(1 for i in images if not ordinals[i])
    if bad:
        scan.notes.append(f"{split}/_annotations.coco.json: {bad} annotations without a known image or category")


def usable(ann) -> bool:
    """An annotation the report can place: a dict with integer ``image_id`` and ``category_id``."""
    return isinstance(ann, dict) and _is_id(ann.get("image_id")) and _is_id(ann.get("category_id"))


def annotation_id(ann: dict, ordinal: int) -> int:
    """The annotation's COCO id; without a valid one, ``-(ordinal + 1)`` (its place in its image, never a real id)."""
    return ann["id"] if _is_id(ann.get("id")) else -(ordinal + 1)


def instance_numbers(ann: dict) -> tuple[dict, bool]:
    """The ``NUMBERS`` an annotation carries, and whether ``box_fit`` had to be computed here.

    ``box_fit``, when the annotation lacks it, is the IoU of ``bbox`` (the mask's tight box) and ``det_bbox``
    (the prompt box), both COCO xywh: 1 when SAM's mask fills its box exactly.
    """
    out = {k: ann[k] for k in NUMBERS if _is_number(ann.get(k))}
    if "box_fit" in out:
        return out, False
    fit = box_iou_xywh(ann.get("bbox"), ann.get("det_bbox"))
    if fit is None:
        return out, False
    out["box_fit"] = round(fit, 4)
    return out, True


def box_iou_xywh(a, b) -> float | None:
    """IoU of two COCO xywh boxes; None when either is missing or malformed."""
    if not (_is_box(a) and _is_box(b)):
        return None
    ax0, ay0, aw, ah = (float(v) for v in a)
    bx0, by0, bw, bh = (float(v) for v in b)
    iw = max(0.0, min(ax0 + aw, bx0 + bw) - max(ax0, bx0))
    ih = max(0.0, min(ay0 + ah, by0 + bh) - max(ay0, by0))
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else None


def _is_id(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_box(v) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == 4 and all(_is_number(x) for x in v) and v[2] >= 0 <= v[3]


def _image_names(images_dir: Path) -> list[str]:
    if not images_dir.is_dir():
        return []
    return sorted(p.name for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _yolo_items(images_dir: Path, labels_dir: Path, split: str, scan: Scan) -> Iterator[Item]:
    images = _image_names(images_dir)
    by_stem: dict[str, str] = {}
    for name in images:
        by_stem.setdefault(Path(name).stem, name)
    summary = scan.splits[split] = SplitSummary(source="yolo", images=len(images))
    seen: set[str] = set()
    for label in sorted(labels_dir.glob("*.txt")):
        try:
            rows = read_label_file(label)
        except (OSError, ValueError, UnicodeDecodeError) as e:
            scan.notes.append(f"{split}/labels/{label.name} could not be read ({type(e).__name__}: {e})")
            continue
        file_name = by_stem.get(label.stem, label.stem)
        seen.add(file_name)
        if not rows:
            summary.images_without_instances += 1
        for line, (class_id, _polygon) in enumerate(rows):
            yield Item(split=split, file_name=file_name, image_id=None, ann_id=line, ordinal=line, class_id=class_id)
    summary.images_without_instances += sum(1 for name in images if name not in seen)
