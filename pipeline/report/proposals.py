"""The report's proposals (``--propose``): the images with the most masks no instance accounts for, drawn whole.

report.json says how many proposals each image has; their masks live only in the run's journal
(``.samlabel/journal.jsonl``, read here as untrusted input: a damaged journal costs the pictures, not the page).
Each thumbnail shows the whole image, its instances outlined in their class colours and its proposals with a
dashed outline (white dashes on black), as ``samlabel review`` draws them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from pipeline.errors import SamlabelError
from pipeline.formats import layout as layouts
from pipeline.masks import CropMask
from pipeline.report.thumbs import bgr as hex_to_bgr
from pipeline.types import ImageRecord

#: Images whose proposals are drawn at most (those with the most proposals).
MAX_PROPOSAL_IMAGES = 12
#: Images listed at most in the count table.
MAX_PROPOSAL_ROWS = 30

DASH, GAP = 6.0, 4.0


@dataclass(frozen=True)
class ProposalCard:
    """One image's thumbnail with its proposals, or why there is none."""

    image: str
    count: int
    jpeg: bytes | None = None
    size_wh: tuple[int, int] | None = None
    problem: str | None = None


@dataclass
class ProposalSection:
    """report.json's proposal counts and the thumbnails of the images with the most.

    Attributes:
        total: proposals over the dataset.
        per_image: (image path, proposals), most first, at most ``MAX_PROPOSAL_ROWS``.
        n_images: images with at least one proposal.
        cards: thumbnails of the first ``MAX_PROPOSAL_IMAGES`` of ``per_image``.
    """

    total: int
    per_image: list[tuple[str, int]]
    n_images: int
    cards: list[ProposalCard] = field(default_factory=list)


def counts(report: dict | None) -> tuple[int, list[tuple[str, int]]] | None:
    """(total, [(image, proposals), most first]) from report.json's ``proposals``; None when it has none or they
    are malformed."""
    section = (report or {}).get("proposals")
    if not isinstance(section, dict):
        return None
    total, images = section.get("total"), section.get("images")
    if not isinstance(total, int) or isinstance(total, bool) or not isinstance(images, dict):
        return None
    rows = [(str(k), v) for k, v in images.items() if isinstance(v, int) and not isinstance(v, bool) and v > 0]
    return total, sorted(rows, key=lambda r: (-r[1], r[0]))


def collect(
    root,
    report: dict | None,
    *,
    colors: dict[int, str],
    load: Callable[[str, str], tuple[np.ndarray | None, str | None]],
    thumb_size: int,
    encode: Callable[[np.ndarray], tuple[bytes, tuple[int, int]]],
) -> ProposalSection | None:
    """The proposals section, or None when report.json lists no proposals.

    Args:
        root: the dataset folder.
        report: report.json's content.
        colors: class id -> ``#rrggbb`` (the page's class colours).
        load: (split, file name) -> (rgb, None) or (None, why not).
        thumb_size: longer side of a thumbnail in pixels.
        encode: a BGR thumbnail -> (JPEG bytes, (w, h)).
    """
    found = counts(report)
    if found is None:
        return None
    total, rows = found
    section = ProposalSection(total=total, per_image=rows[:MAX_PROPOSAL_ROWS], n_images=len(rows))
    wanted = dict(rows[:MAX_PROPOSAL_IMAGES])
    if not wanted:
        return section
    records, problem = _records(root, set(wanted))
    for image, count in wanted.items():
        record = records.get(image)
        if record is None:
            section.cards.append(ProposalCard(image, count, problem=problem or "not in the run's journal"))
            continue
        rgb, why = load(record.split, record.name)
        if rgb is None:
            section.cards.append(ProposalCard(image, count, problem=why))
            continue
        try:
            jpeg, size_wh = encode(draw(rgb, record, colors, thumb_size=thumb_size))
        except (ValueError, cv2.error) as e:
            section.cards.append(ProposalCard(image, count, problem=f"cannot draw: {e}"))
            continue
        section.cards.append(ProposalCard(image, count, jpeg=jpeg, size_wh=size_wh))
    return section


def _records(root, wanted: set[str]) -> tuple[dict[str, ImageRecord], str | None]:
    """The newest journal record of each wanted image (by its path in the dataset), or why none could be read."""
    from pathlib import Path

    from pipeline.report.scan import dataset_layout
    from pipeline.run.state import Journal

    paths: layouts.Layout = dataset_layout(Path(root))
    out: dict[str, ImageRecord] = {}
    try:
        for _, record in Journal(Path(root)).records():
            if record.status == "ok" and paths.image(record.split, record.name) in wanted:
                out[paths.image(record.split, record.name)] = record
    except (SamlabelError, OSError) as e:
        return out, f"the run's journal could not be read ({str(e)[:200]})"
    return out, None


def draw(rgb: np.ndarray, record: ImageRecord, colors: dict[int, str], *, thumb_size: int) -> np.ndarray:
    """The whole image, scaled to ``thumb_size`` on its longer side, BGR uint8: instances outlined in their class
    colour, proposals dashed."""
    h, w = rgb.shape[:2]
    scale = thumb_size / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    inter = cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST
    bgr = np.ascontiguousarray(cv2.resize(rgb, size, interpolation=inter)[..., ::-1])
    for mask, class_id in zip(record.instances.masks, record.instances.class_id, strict=True):
        for contour in _contours(mask, scale, size):
            cv2.polylines(bgr, [contour], True, hex_to_bgr(colors.get(int(class_id), "#999999")), 2, cv2.LINE_AA)
    for mask in record.proposals.masks:
        for contour in _contours(mask, scale, size):
            cv2.polylines(bgr, [contour], True, (0, 0, 0), 3, cv2.LINE_AA)
            _dashed(bgr, contour, (255, 255, 255), 2)
    return bgr


def _contours(mask: CropMask | None, scale: float, size: tuple[int, int]) -> list[np.ndarray]:
    """The outlines of ``mask`` in the thumbnail (int32 (K, 1, 2) each)."""
    if mask is None or mask.area == 0:
        return []
    x0, y0, x1, y1 = mask.xyxy
    tx0, ty0 = int(x0 * scale), int(y0 * scale)
    tw, th = max(1, round(x1 * scale) - tx0), max(1, round(y1 * scale) - ty0)
    bits = cv2.resize(mask.bits.astype(np.uint8), (tw, th), interpolation=cv2.INTER_NEAREST)
    padded = cv2.copyMakeBorder(bits, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    contours, _ = cv2.findContours(padded, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE, offset=(tx0 - 1, ty0 - 1))
    return [c for c in contours if len(c) >= 2]


def _dashed(img: np.ndarray, contour: np.ndarray, color: tuple[int, int, int], thickness: int) -> None:
    """A closed polyline drawn as dashes of ``DASH`` px with gaps of ``GAP`` px, the pattern running on along it."""
    pts = contour.reshape(-1, 2).astype(np.float64)
    pts = np.vstack([pts, pts[:1]])
    period, pos = DASH + GAP, 0.0
    for a, b in zip(pts[:-1], pts[1:], strict=True):
        seg = float(np.hypot(*(b - a)))
        t = 0.0
        while t < seg:
            phase = pos % period
            step = min(seg - t, DASH - phase if phase < DASH else period - phase)
            if phase < DASH:
                p, q = a + (b - a) * (t / seg), a + (b - a) * ((t + step) / seg)
                cv2.line(img, _pt(p), _pt(q), color, thickness, cv2.LINE_AA)
            t, pos = t + step, pos + step


def _pt(p: np.ndarray) -> tuple[int, int]:
    return int(round(p[0])), int(round(p[1]))
