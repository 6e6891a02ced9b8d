"""``write_report_html``: the dataset on disk in, ``DIR/report.html`` out (one file, nothing outside it)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import yaml

from pipeline import fsio, safepath
from pipeline.errors import ImageReadError, SamlabelError
from pipeline.formats import coco as coco_format
from pipeline.formats.data_yaml import SPLITS
from pipeline.formats.yolo import read_label_file
from pipeline.images import load_image
from pipeline.quality import QualityThresholds
from pipeline.report import charts, page, proposals, thumbs
from pipeline.report.scan import (
    HISTOGRAMS,
    Item,
    Scan,
    annotation_id,
    coco_path,
    dataset_layout,
    scan_dataset,
    usable,
)

MAX_FLAGGED = 60
MAX_SAMPLE = 24
THUMB_SIZE = 256

#: Bytes of one card's markup and escaped text at most (names and paths are cut to ``page.TEXT_CHARS``).
CARD_TEXT_BYTES = 8 * 1024
#: Bytes of everything else at most: CSS, header, tables and lists (rows capped by ``page.LIST_ROWS`` and
#: ``page.CLASS_ROWS``, text by ``page.TEXT_CHARS``).
PAGE_TEXT_BYTES = 2 * 1024 * 1024


class DatasetNotFoundError(SamlabelError, FileNotFoundError):
    """The report's dataset folder does not exist."""


class ReportSettingsError(SamlabelError, ValueError):
    """A bound given to ``write_report_html`` is out of range."""


def thumb_bytes(thumb_size: int) -> int:
    """JPEG bytes one thumbnail may take: 0.75 byte per pixel of a square thumbnail (48 KiB at 256 px)."""
    return max(8 * 1024, thumb_size * thumb_size * 3 // 4)


def size_bound(*, max_flagged: int = MAX_FLAGGED, max_sample: int = MAX_SAMPLE, thumb_size: int = THUMB_SIZE) -> int:
    """Bytes ``report.html`` takes at most with these bounds (about 8.5 MB with the defaults).

    Each thumbnail is at most ``thumb_bytes(thumb_size)`` of JPEG, base64 in the page (4/3 larger), with
    ``CARD_TEXT_BYTES`` of text; each histogram at most ``charts.CHART_BYTES`` of SVG; the rest at most
    ``PAGE_TEXT_BYTES``. A real dataset's page is far smaller (thumbnails are 10-25 KB each).
    """

    def b64(n: int) -> int:
        return 4 * ((n + 2) // 3)

    cards = (max_flagged + max_sample + proposals.MAX_PROPOSAL_IMAGES) * (
        b64(thumb_bytes(thumb_size)) + CARD_TEXT_BYTES
    )
    return cards + len(HISTOGRAMS) * (b64(charts.CHART_BYTES) + 2048) + PAGE_TEXT_BYTES


def write_report_html(
    dataset_dir: str | Path,
    *,
    max_flagged: int = MAX_FLAGGED,
    max_sample: int = MAX_SAMPLE,
    thumb_size: int = THUMB_SIZE,
) -> Path:
    """Write ``DIR/report.html``: the run's numbers, class counts, quality histograms and a gallery of instances.

    The page is one self-contained file (inline CSS, images as base64 ``data:`` URIs, no script, nothing
    fetched), so it can be opened from disk or mailed. It is built from the files alone (data.yaml,
    report.json, ``<split>/_annotations.coco.json`` or, without those, ``<split>/labels/*.txt``, and the
    images shown), so it can be rebuilt for any dataset; the same dataset gives the same bytes.

    Bounds, whatever the dataset size:
        - at most ``max_flagged`` + ``max_sample`` thumbnails, each at most ``thumb_size`` px a side and
          ``thumb_bytes(thumb_size)`` bytes of JPEG; the file at most ``size_bound(...)`` bytes;
        - one COCO file in memory at a time; only the images shown are decoded, one at a time.

    Gallery: flagged instances first (most flags, then lowest mask_score, then split, image, annotation id),
    then a sample of the unflagged ones: per class the instances with the smallest hash of (image path,
    place in the image), classes taken in turn. A YOLO-only dataset (no COCO files) has no scores or flags
    per instance: its gallery is the sample alone, drawn from the YOLO polygons. A missing or unreadable
    image, or an annotation that cannot be drawn, gives a card that says why.

    Args:
        dataset_dir: the dataset folder samlabel wrote (holding data.yaml and the split folders).
        max_flagged: flagged instances shown at most (0 to show none).
        max_sample: unflagged instances shown at most (0 to show none).
        thumb_size: longer side of a thumbnail in pixels, 64 to 1024.

    Returns:
        The path of the report (``DIR/report.html``), written atomically.

    Raises:
        DatasetNotFoundError: ``dataset_dir`` is not a folder.
        ReportSettingsError: a bound is out of range.
    """
    root = Path(dataset_dir)
    _check_bounds(max_flagged=max_flagged, max_sample=max_sample, thumb_size=thumb_size)
    if not root.is_dir():
        raise DatasetNotFoundError(f"{root} is not a folder; give the dataset folder samlabel wrote (with data.yaml)")
    notes: list[str] = []
    report = _read_report(root, notes)
    cache: dict = {}
    scan = scan_dataset(
        root, _read_names(root, report, notes), max_flagged=max_flagged, max_sample=max_sample, cache=cache
    )
    colors = {c: thumbs.class_color(c) for c in _class_ids(scan)}
    cards = _draw_cards(root, scan, cache, colors, thumb_size=thumb_size)
    threshold = _review_threshold(report)
    proposal_section = proposals.collect(
        root,
        report,
        colors=colors,
        load=lambda split, name: _load(root, split, name),
        thumb_size=thumb_size,
        encode=lambda bgr: thumbs.encode_jpeg(bgr, max_bytes=thumb_bytes(thumb_size)),
    )
    content = page.Page(
        root=str(root),
        scan=scan,
        report=report,
        charts=_charts(scan, threshold),
        flagged=[cards[id(item)] for item in scan.flagged],
        sample=[cards[id(item)] for item in scan.sample],
        bounds={
            "max_flagged": max_flagged,
            "max_sample": max_sample,
            "thumb_size": thumb_size,
            "thumb_bytes": thumb_bytes(thumb_size),
            "size_bound": size_bound(max_flagged=max_flagged, max_sample=max_sample, thumb_size=thumb_size),
        },
        notes=notes,
        review_threshold=threshold,
        class_colors=colors,
        proposals=proposal_section,
    )
    out = root / "report.html"
    fsio.write_text(out, page.render(content))
    return out


def _check_bounds(*, max_flagged: int, max_sample: int, thumb_size: int) -> None:
    for name, value, lo, hi in (
        ("max_flagged", max_flagged, 0, 10_000),
        ("max_sample", max_sample, 0, 10_000),
        ("thumb_size", thumb_size, 64, 1024),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ReportSettingsError(f"{name} must be an integer from {lo} to {hi}, got {value!r}")


def _read_report(root: Path, notes: list[str]) -> dict | None:
    path = root / "report.json"
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_bytes())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        notes.append(f"report.json could not be read ({type(e).__name__}: {e}); numbers below come from the files")
        return None
    if not isinstance(report, dict):
        notes.append("report.json does not hold an object; ignored")
        return None
    return report


def _read_names(root: Path, report: dict | None, notes: list[str]) -> list[str]:
    """Class names: data.yaml's ``names`` (list, or dict of index -> name), else report.json's, else none."""
    path = root / "data.yaml"
    if path.is_file():
        try:
            names = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("names")
        except (OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError) as e:
            notes.append(f"data.yaml could not be read ({type(e).__name__}); class names from the other files")
            names = None
        if isinstance(names, dict) and all(isinstance(k, int) and k >= 0 for k in names):
            names = [str(names.get(i, f"class {i}")) for i in range(max(names, default=-1) + 1)]
        if isinstance(names, list):
            return [str(n) for n in names]
    names = (report or {}).get("names")
    return [str(n) for n in names] if isinstance(names, list) else []


def _class_ids(scan: Scan) -> list[int]:
    seen = {c for s in scan.splits.values() for c in s.per_class}
    return sorted(seen | set(range(len(scan.names))))


def _review_threshold(report: dict | None) -> float:
    low = (report or {}).get("low_score_instances")
    value = low.get("below_mask_score") if isinstance(low, dict) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1:
        return float(value)
    return QualityThresholds().min_mask_score  # report.json's threshold when it does not say: the default


def _charts(scan: Scan, threshold: float) -> list[page.Chart]:
    out = []
    for key in HISTOGRAMS:
        hist = scan.histograms.get(key)
        if hist is None:
            continue
        caption = f"n = {hist.n:,}, mean {hist.mean:.3f}"
        if key == "mask_score":
            caption += f"; {100 * hist.share_below(threshold):.1f}% below {threshold:g} (dashed)"
        if key == "box_fit" and scan.box_fit_computed:
            caption += "; computed here: IoU of the mask's tight box (bbox) and the prompt box (det_bbox)"
        if hist.outside:
            caption += f"; {hist.outside:,} values outside [0, 1] counted in the edge bins"
        svg = charts.histogram_svg(hist.counts, xlabel=key, threshold=threshold if key == "mask_score" else None)
        out.append(page.Chart(key=key, svg=svg, caption=caption))
    return out


def _draw_cards(
    root: Path, scan: Scan, cache: dict, colors: dict[int, str], *, thumb_size: int
) -> dict[int, page.Card]:
    """Cards of the gallery's items keyed by ``id(item)``: split by split (the cached COCO file first), one image
    decoded at a time."""
    by_split: dict[str, dict[tuple, list[Item]]] = defaultdict(lambda: defaultdict(list))
    for item in [*scan.flagged, *scan.sample]:
        by_split[item.split][(item.file_name, item.image_id or 0)].append(item)
    order = sorted(by_split, key=lambda s: (s not in cache, SPLITS.index(s) if s in SPLITS else len(SPLITS)))
    cards: dict[int, page.Card] = {}
    for split in order:
        source = scan.splits[split].source
        draw = _coco_cards if source == "coco" else _yolo_cards
        for item, jpeg, size_wh, problem in draw(root, split, by_split[split], cache, thumb_size):
            cards[id(item)] = page.Card(
                item=item,
                class_name=scan.class_name(item.class_id),
                color_hex=colors.get(item.class_id, "#999999"),
                jpeg=jpeg,
                size_wh=size_wh,
                problem=problem,
            )
        cache.pop(split, None)
    return cards


def _coco_cards(root: Path, split: str, wanted: dict[tuple, list[Item]], cache: dict, thumb_size: int):
    """(item, jpeg, (w, h), problem) for the wanted items of one split, from its COCO file."""
    try:
        coco = cache[split] if split in cache else coco_format.load_instances(coco_path(root, split))
    except (OSError, ValueError) as e:
        for items in wanted.values():
            yield from ((item, None, None, f"COCO file unreadable: {e}") for item in items)
        return
    ids = {item.image_id for items in wanted.values() for item in items}
    anns: dict[int, list[dict]] = defaultdict(list)
    for ann in coco["annotations"]:
        if usable(ann) and ann["image_id"] in ids:
            anns[ann["image_id"]].append(ann)
    del coco  # the split's file is no longer needed: only the wanted images' annotations are kept
    cache.pop(split, None)
    for key in sorted(wanted):  # (file name, image id): one image decoded at a time
        items = wanted[key]
        rgb, problem = _load(root, split, key[0])
        image_id = items[0].image_id
        image_anns = anns.get(image_id, []) if image_id is not None else []
        shapes: dict[int, thumbs.Shape | str] = {}  # annotation id -> its shape, or why it has none
        for ordinal, ann in enumerate(image_anns):
            try:
                shapes[annotation_id(ann, ordinal)] = thumbs.shape_from_coco(ann)
            except (ValueError, TypeError) as e:
                shapes[annotation_id(ann, ordinal)] = str(e)
        neighbours = thumbs.Neighbours([v for v in shapes.values() if not isinstance(v, str)])
        for item in items:
            yield _one(item, rgb, problem, shapes.get(item.ann_id, "annotation not found"), neighbours, thumb_size)
        del rgb


def _yolo_cards(root: Path, split: str, wanted: dict[tuple, list[Item]], cache: dict, thumb_size: int):
    """(item, jpeg, (w, h), problem) for the wanted items of one split, from its YOLO label files."""
    for key in sorted(wanted):  # (file name, 0)
        items = wanted[key]
        rgb, problem = _load(root, split, key[0])
        shapes: dict = {}
        if rgb is not None:
            label = root / dataset_layout(root).label_file(split, key[0])
            try:
                rows = read_label_file(label)
            except (OSError, ValueError, UnicodeDecodeError) as e:
                rgb, problem = None, f"label file unreadable: {label.name}: {e}"
            else:
                shapes = dict(enumerate(thumbs.shapes_from_yolo(rows, rgb.shape[:2])))
        neighbours = thumbs.Neighbours(list(shapes.values()))
        for item in items:
            yield _one(item, rgb, problem, shapes.get(item.ann_id, "label line not found"), neighbours, thumb_size)


def _one(item: Item, rgb, problem: str | None, focus, neighbours: thumbs.Neighbours, thumb_size: int):
    """(item, jpeg, (w, h), problem) of one card; ``focus`` is the item's Shape or why it has none."""
    if rgb is None:
        return item, None, None, problem
    if isinstance(focus, str):
        return item, None, None, f"cannot draw this instance: {focus}"
    try:
        bgr = thumbs.render(rgb, focus, neighbours, thumb_size=thumb_size)
        jpeg, size_wh = thumbs.encode_jpeg(bgr, max_bytes=thumb_bytes(thumb_size))
    except (ValueError, TypeError) as e:  # a malformed segmentation (e.g. an RLE for another image size)
        return item, None, None, f"cannot draw this instance: {e}"
    return item, jpeg, size_wh, None


def _load(root: Path, split: str, file_name: str):
    """(rgb, None) or (None, reason) for the image ``DIR/<split>/images/<file_name>``."""
    rel = Path(file_name)
    if rel.is_absolute() or ".." in rel.parts:
        return None, f"file name {file_name!r} leaves the images folder; not read"
    try:  # also through a symlinked folder
        path = safepath.inside(root, f"{dataset_layout(root).images_dir(split)}/{rel.as_posix()}", what="image")
    except safepath.UnsafePathError as e:
        return None, f"{e}; not read"
    if not path.is_file():
        return None, f"image not found: {path.relative_to(root)}"
    try:
        return load_image(path).rgb, None
    except ImageReadError as e:
        return None, f"image unreadable: {e}"
