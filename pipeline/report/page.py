"""The report's HTML text: pure functions from the collected data to one self-contained, escaped page.

Every piece of user data (paths, class names, reasons, settings) goes through ``_e`` (truncated, then
``html.escape``); images are ``data:`` URIs; the CSS is inline; nothing refers outside the file.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from pipeline.report.charts import CHART_PX
from pipeline.report.proposals import ProposalCard, ProposalSection
from pipeline.report.scan import FLAGS, NUMBERS, Item, Scan

#: Rows shown at most in each list (skipped images, dropped instances, source problems, flagged without COCO).
LIST_ROWS = 30
#: Classes shown at most in the class table (the rest are summed in one row).
CLASS_ROWS = 200
#: Characters kept of one piece of user text (a name, a path, a reason) before escaping.
TEXT_CHARS = 160


@dataclass(frozen=True)
class Card:
    """One gallery card: the instance, and its thumbnail JPEG or the reason there is none."""

    item: Item
    class_name: str
    color_hex: str
    jpeg: bytes | None = None
    size_wh: tuple[int, int] | None = None
    problem: str | None = None


@dataclass(frozen=True)
class Chart:
    """One histogram: what it counts, its SVG document (``charts.histogram_svg``) and a caption."""

    key: str
    svg: str
    caption: str


@dataclass
class Page:
    """Everything the page shows (see ``render``)."""

    root: str
    scan: Scan
    report: dict | None
    charts: list[Chart]
    flagged: list[Card]
    sample: list[Card]
    bounds: dict
    notes: list[str] = field(default_factory=list)
    review_threshold: float | None = None
    class_colors: dict[int, str] = field(default_factory=dict)
    proposals: ProposalSection | None = None


def render(page: Page) -> str:
    """The whole HTML document."""
    title = f"samlabel report: {page.root}"
    body = "".join(
        [
            _header(page),
            _summary(page),
            _notes(page),
            _classes(page),
            _quality(page),
            _gallery(page),
            _proposals(page),
            _run(page),
            _problems(page),
            _footer(page),
        ]
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title, 400)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}</body>\n</html>\n"
    )


def _e(value, limit: int = TEXT_CHARS) -> str:
    """User text, cut to ``limit`` characters and HTML-escaped (quotes too: safe in attributes)."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        text = text[: limit - 1] + "\u2026"
    return html.escape(text, quote=True)


def _num(value) -> str:
    if isinstance(value, bool) or value is None:
        return _e(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "&ndash;"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}" if abs(value) < 0.001 else f"{value:.3f}"
    return _e(value)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: Sequence[int] = ()) -> str:
    """A table; ``headers`` and ``rows`` hold HTML already escaped; columns in ``right`` are numbers."""

    def cell(tag: str, i: int, c: str) -> str:
        return f'<{tag} class="r">{c}</{tag}>' if i in right else f"<{tag}>{c}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(cell("td", i, c) for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _section(ident: str, title: str, content: str) -> str:
    return f'<section id="{ident}"><h2>{title}</h2>{content}</section>\n'


def _header(page: Page) -> str:
    command = (page.report or {}).get("command")
    sub = f"written by <code>samlabel {_e(command, 40)}</code>" if command else "no report.json: numbers from the files"
    return (
        '<header><h1>samlabel report</h1><div class="path">'
        f'Dataset <code id="dataset-path">{_e(page.root, 400)}</code></div><div class="sub">{sub}</div></header>\n'
    )


def _summary(page: Page) -> str:
    scan, report = page.scan, page.report or {}
    images = sum(s.images for s in scan.splits.values())
    per_split = ", ".join(f"{_e(k)} {v.images:,}" for k, v in scan.splits.items()) or "no splits"
    tiles = [
        ("Images", f"{images:,}", per_split, False),
        ("Instances", f"{scan.n_instances:,}", f"{len(scan.names)} classes", False),
    ]
    listed = _report_flagged(page)
    if scan.flag_counts:
        tiles.append(("Flagged", f"{scan.n_flagged:,}", _share(scan.n_flagged, scan.n_instances), True))
    elif scan.n_flags_known:  # the annotations carry flags, and none is raised
        tiles.append(("Flagged", "0", _share(0, scan.n_instances), False))
    elif listed:
        tiles.append(("Flagged", f"{len(listed):,}", "listed in report.json", True))
    else:
        tiles.append(("Flagged", "&ndash;", "no quality flags in the annotations", False))
    hist = scan.histograms.get("mask_score")
    if page.review_threshold is not None and hist is not None:
        low = round(hist.share_below(page.review_threshold) * hist.n)
        tiles.append((f"mask_score &lt; {page.review_threshold:g}", f"{low:,}", _share(low, hist.n), low > 0))
    for label, key in (
        ("Skipped images", "skipped_images"),
        ("Dropped instances", "dropped_instances"),
        ("Source problems", "source_problems"),
    ):
        if isinstance(report.get(key), list):
            n = len(report[key])
            tiles.append((label, f"{n:,}", "listed below" if n else "none", n > 0))
    if page.proposals is not None:
        n = page.proposals.total
        tiles.append(
            ("Proposals", f"{n:,}", f"in {page.proposals.n_images:,} images, listed below" if n else "none", n > 0)
        )
    timings = _dict(report.get("timings"))
    total = _dict(timings.get("total"))  # older reports: this run only
    speed = total.get("images_per_second", timings.get("images_per_second"))
    if _is_number(speed):
        seconds = total.get("seconds", timings.get("this_run_seconds"))
        hint = f"{_num(seconds)} s in all runs" if "seconds" in total else f"{_num(seconds)} s this run"
        tiles.append(("Speed", f"{speed:,.1f} img/s", hint if _is_number(seconds) else "", False))
    cards = "".join(
        f'<div class="tile{" warn" if warn else ""}"><div class="label">{label}</div>'
        f'<div class="value">{value}</div><div class="hint">{hint}</div></div>'
        for label, value, hint, warn in tiles
    )
    return f'<section id="summary" class="tiles">{cards}</section>\n'


def _dict(value: object) -> dict:
    """``value`` if it is a mapping as report.json holds one, else an empty one (report.json is read back)."""
    return value if isinstance(value, dict) else {}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _share(n: int, total: int) -> str:
    return f"{100 * n / total:.1f}% of {total:,}" if total else "&ndash;"


def _notes(page: Page) -> str:
    notes = list(page.notes) + list(page.scan.notes)
    note = (page.report or {}).get("data_yaml_note")
    if note:
        notes.append(f"data.yaml: {note}")
    if not notes:
        return ""
    items = "".join(f"<li>{_e(n, 600)}</li>" for n in notes[:LIST_ROWS])
    return f'<section id="notes" class="notes"><ul>{items}</ul></section>\n'


def _classes(page: Page) -> str:
    scan = page.scan
    splits = list(scan.splits)
    scores, flags = bool(scan.score_sum), bool(scan.n_flags_known)  # columns only where the data has them
    headers = ["class", *(_e(s) for s in splits), "total"] + ["mean mask_score"] * scores + ["flagged"] * flags
    ids = sorted({c for s in scan.splits.values() for c in s.per_class} | set(range(len(scan.names))))
    rows = []
    for c in ids[:CLASS_ROWS]:
        counts = [scan.splits[s].per_class.get(c, 0) for s in splits]
        score = scan.score_sum.get(c, (0.0, 0))
        swatch = f'<span class="swatch" style="background:{page.class_colors.get(c, "#999")}"></span>'
        row = [f"{swatch}{_e(scan.class_name(c))}", *(f"{n:,}" for n in counts), f"<b>{sum(counts):,}</b>"]
        if scores:
            row.append(_num(score[0] / score[1]) if score[1] else "&ndash;")
        if flags:
            row.append(f"{scan.flagged_per_class.get(c, 0):,}")
        rows.append(row)
    if len(ids) > CLASS_ROWS:
        rest = sum(scan.splits[s].per_class.get(c, 0) for s in splits for c in ids[CLASS_ROWS:])
        more = [f"&hellip; {len(ids) - CLASS_ROWS:,} more classes", *([""] * len(splits)), f"{rest:,}"]
        rows.append(more + [""] * (len(headers) - len(more)))
    split_rows = [
        [
            _e(s),
            f"{v.images:,}",
            f"{v.images_without_instances:,}",
            f"{sum(v.per_class.values()):,}",
            _SOURCES[v.source],
        ]
        for s, v in scan.splits.items()
    ]
    content = (
        '<div class="cols">'
        + _table(headers, rows, right=range(1, len(headers)))
        + _table(["split", "images", "without instances", "instances", "read from"], split_rows, right=(1, 2, 3))
        + "</div>"
    )
    return _section("classes", "Classes and splits", content)


_SOURCES = {"coco": "COCO file", "yolo": "YOLO labels (no scores)", "none": "no labels"}


def _quality(page: Page) -> str:
    scan, parts = page.scan, []
    counts, where = _flag_counts(page)
    if counts:
        rows = [
            [f'<span class="flag">{_e(f)}</span>', f"{n:,}", _share(n, scan.n_instances), _e(FLAGS.get(f, ""))]
            for f, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:LIST_ROWS]
        ]
        parts.append(
            f"<h3>Flags ({where})</h3>" + _table(["flag", "instances", "share", "meaning"], rows, right=(1, 2))
        )
    elif page.scan.n_flags_known:
        parts.append('<p class="muted">No instance is flagged: the annotations carry quality flags, none raised.</p>')
    else:
        parts.append('<p class="muted">No quality flags in this dataset\'s annotations.</p>')
    if page.charts:
        figures = "".join(
            f'<figure class="chart"><img src="data:image/svg+xml;base64,{_b64(c.svg.encode("utf-8"))}" '
            f'width="{CHART_PX[0]}" height="{CHART_PX[1]}" alt="histogram of {_e(c.key)}">'
            f"<figcaption><b>{_e(c.key)}</b> {c.caption}</figcaption></figure>"
            for c in page.charts
        )
        parts.append(f'<div class="charts">{figures}</div>')
    else:
        parts.append('<p class="muted">No mask_score, box_fit or stability_score to draw (YOLO labels carry none).</p>')
    parts.append(_report_quality(page))
    return _section("quality", "Quality", "".join(parts))


def _flag_counts(page: Page) -> tuple[dict, str]:
    """Instances per flag: from the annotations, else (when they carry no flags at all) from report.json's
    ``quality.flag_counts``."""
    if page.scan.flag_counts or page.scan.n_flags_known:
        return dict(page.scan.flag_counts), "from the annotations"
    quality = (page.report or {}).get("quality")
    counts = quality.get("flag_counts") if isinstance(quality, dict) else None
    if isinstance(counts, dict):
        counts = {str(k): v for k, v in counts.items() if _is_number(v) and v > 0 and isinstance(v, int)}
        if counts:
            return counts, "from report.json"
    return {}, ""


def _report_flagged(page: Page) -> list[dict]:
    """report.json's ``quality.flagged`` entries (dicts), when the annotations carry no flags of their own (the
    annotations, when they carry flags, are what the page counts, even where report.json says otherwise)."""
    quality = (page.report or {}).get("quality")
    flagged = quality.get("flagged") if isinstance(quality, dict) else None
    if page.scan.n_flags_known or not isinstance(flagged, list):
        return []
    return [f for f in flagged if isinstance(f, dict)]


def _report_quality(page: Page) -> str:
    """report.json's ``quality.per_class`` (a table of whatever numbers it holds), when present."""
    quality = (page.report or {}).get("quality")
    per_class = quality.get("per_class") if isinstance(quality, dict) else None
    if not isinstance(per_class, dict) or not per_class:
        return ""
    columns: list[str] = []
    for stats in per_class.values():
        for k in stats if isinstance(stats, dict) else ():
            if k not in columns and len(columns) < 10:
                columns.append(k)
    rows = [
        [_e(name), *(_cell(stats.get(k), 40) if isinstance(stats, dict) else "" for k in columns)]
        for name, stats in list(per_class.items())[:CLASS_ROWS]
    ]
    return "<h3>Per class (report.json)</h3>" + _table(
        ["class", *(_e(k, 40) for k in columns)], rows, right=range(1, len(columns) + 1)
    )


def _cell(value, limit: int = TEXT_CHARS) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _num(value)
    if isinstance(value, dict):
        return _e(", ".join(f"{k}: {v}" for k, v in value.items()), limit)
    return _e("" if value is None else value, limit)


def _gallery(page: Page) -> str:
    scan, b = page.scan, page.bounds
    legend = (
        '<p class="muted">Each card: the instance\'s mask filled in its class colour and outlined, its prompt box '
        "white on black, other instances lighter. Flagged first (most flags, then lowest mask_score); then a "
        "sample of the unflagged, classes in turn, ordered by a hash of the image name (the same every time).</p>"
    )
    if not scan.n_instances:
        return _section("gallery", "Gallery", '<p class="muted">No instances in this dataset.</p>')
    parts = [legend]
    if scan.flag_counts:
        head = f"Flagged: {len(page.flagged):,} of {scan.n_flagged:,} shown (at most {b['max_flagged']})"
        parts.append(f'<h3 id="flagged-title">{head}</h3><div class="grid" id="flagged">')
        parts += [_card(c, "flagged", i) for i, c in enumerate(page.flagged)]
        parts.append("</div>")
    parts.append(_flagged_table(page))
    head = f"Sample: {len(page.sample):,} of {scan.n_unflagged:,} unflagged shown (at most {b['max_sample']})"
    parts.append(f'<h3 id="sample-title">{head}</h3><div class="grid" id="sample">')
    parts += [_card(c, "sample", i) for i, c in enumerate(page.sample)]
    parts.append("</div>")
    return _section("gallery", "Gallery", "".join(parts))


def _proposals(page: Page) -> str:
    """Proposals (``--propose``): their count per image, and the images with the most, proposals dashed."""
    section = page.proposals
    if section is None:
        return ""
    head = (
        f'<p class="muted" id="proposals-total">{section.total:,} proposals in {section.n_images:,} images: masks '
        "SAM's automatic generator found that no instance accounts for (what the detector or the annotators "
        "missed). They are not in the label files; give them a class or dismiss them in "
        "<code>samlabel review</code> (queue order: most proposals).</p>"
    )
    if not section.per_image:
        return _section("proposals", "Proposals", head)
    more = f" (first {len(section.per_image)} of {section.n_images:,}; all in report.json)"
    rows = [[_e(image), _num(n)] for image, n in section.per_image]
    table = f"<h3>Per image{more if section.n_images > len(rows) else ''}</h3>" + _table(
        ["image", "proposals"], rows, right=(1,)
    )
    legend = (
        '<p class="muted">Each card: the whole image, its instances outlined in their class colours, its proposals '
        "with a dashed white outline.</p>"
    )
    cards = "".join(_proposal_card(c, i) for i, c in enumerate(section.cards))
    return _section(
        "proposals", "Proposals", head + table + legend + f'<div class="grid" id="proposal-cards">{cards}</div>'
    )


def _thumb(jpeg: bytes | None, size_wh: tuple[int, int] | None, problem: str | None, *, alt: str) -> str:
    """A card's thumbnail: the JPEG inline, or why there is none."""
    if jpeg is None:
        return f'<div class="thumb missing" role="img" aria-label="{_e(alt)}">{_e(problem or "", 300)}</div>'
    w, h = size_wh or (0, 0)
    return f'<img class="thumb" src="data:image/jpeg;base64,{_b64(jpeg)}" width="{w}" height="{h}" alt="{_e(alt)}">'


def _proposal_card(card: ProposalCard, rank: int) -> str:
    thumb = _thumb(card.jpeg, card.size_wh, card.problem, alt=f"{card.count} proposals in {card.image}")
    return (
        f'<figure class="card proposal" data-kind="proposal" data-rank="{rank}">{thumb}<figcaption>'
        f'<div class="cls"><span class="swatch dashed"></span>{card.count:,} unlabeled</div>'
        f'<div class="where" title="{_e(card.image, 400)}">{_e(card.image)}</div></figcaption></figure>'
    )


def _flagged_table(page: Page) -> str:
    """report.json's flagged list, as text, when the annotations carry no flags (e.g. a YOLO-only dataset)."""
    flagged = _report_flagged(page)
    if not flagged:
        return ""
    rows = [
        [_e(f.get("image", "")), _e(f.get("class", "")), _e(", ".join(map(str, f.get("flags") or ())))]
        + [_cell(f.get(k)) for k in ("mask_score", "box_fit")]
        for f in flagged[: page.bounds["max_flagged"]]
    ]
    note = (
        f"<h3>Flagged in report.json: {len(flagged):,} (first {len(rows)}; thumbnails need the COCO files, "
        "which carry the scores and flags per instance)</h3>"
    )
    return note + _table(["image", "class", "flags", "mask_score", "box_fit"], rows, right=(3, 4))


def _card(card: Card, kind: str, rank: int) -> str:
    item = card.item
    thumb = _thumb(card.jpeg, card.size_wh, card.problem, alt=f"{card.class_name} in {item.image}")
    flags = "".join(f'<span class="flag" title="{_e(FLAGS.get(f, f))}">{_e(f)}</span>' for f in item.flags)
    nums = "".join(f"<dt>{k}</dt><dd>{_num(item.numbers[k])}</dd>" for k in NUMBERS if k in item.numbers)
    which = f"{'annotation' if item.image_id is not None else 'label line'} {item.ann_id}"
    return (
        f'<figure class="card {kind}" data-kind="{kind}" data-rank="{rank}">{thumb}<figcaption>'
        f'<div class="cls"><span class="swatch" style="background:{card.color_hex}"></span>{_e(card.class_name)}</div>'
        f"{f'<div class=flags>{flags}</div>' if flags else ''}"
        f"{f'<dl class=nums>{nums}</dl>' if nums else ''}"
        f'<div class="where" title="{_e(item.image, 400)}">{_e(item.image)}</div>'
        f'<div class="where">{which}</div></figcaption></figure>'
    )


def _run(page: Page) -> str:
    report = page.report
    if not report:
        return _section("run", "Run", '<p class="muted">No report.json in this dataset.</p>')
    settings = _dict(report.get("settings"))
    rows = [
        [_e(k), f"<code>{_e(json.dumps(v, ensure_ascii=False, default=str), 200)}</code>"] for k, v in settings.items()
    ]
    timings = _dict(report.get("timings"))
    t_rows = []
    for k, v in timings.items():
        if isinstance(v, dict):
            for kk, vv in v.items():  # total / this_run: {seconds, ..., stage_seconds: {stage: s}}
                if isinstance(vv, dict):
                    t_rows += [[_e(f"{k}: {kk}: {name}"), _num(x)] for name, x in vv.items()]
                else:
                    t_rows.append([_e(f"{k}: {kk}"), _num(vv)])
        else:
            t_rows.append([_e(k), _num(v)])
    content = (
        '<div class="cols">'
        + _table(["setting", "value"], rows[:60])
        + _table(["timing", "value"], t_rows[:60], right=(1,))
    )
    return _section("run", f"Run: <code>{_e(report.get('command', '?'), 40)}</code>", content + "</div>")


def _problems(page: Page) -> str:
    report = page.report or {}
    parts = []
    lists = (
        ("Skipped images", "skipped_images", ("source", "reason")),
        ("Dropped instances", "dropped_instances", ("image", "class", "reason", "mask_score", "confidence")),
        ("Source problems", "source_problems", ("where", "problem", "action")),
    )
    for title, key, columns in lists:
        entries = report.get(key)
        if not isinstance(entries, list) or not entries:
            continue
        rows = [[_cell(e.get(c)) for c in columns] for e in entries[:LIST_ROWS] if isinstance(e, dict)]
        more = f" (first {LIST_ROWS} of {len(entries):,}; all in report.json)" if len(entries) > LIST_ROWS else ""
        parts.append(f"<h3>{title}: {len(entries):,}{more}</h3>" + _table([_e(c) for c in columns], rows))
    if not parts:
        return ""
    return _section("problems", "Problems", "".join(parts))


def _footer(page: Page) -> str:
    b = page.bounds
    return (
        f"<footer>Bounds: at most {b['max_flagged']} flagged + {b['max_sample']} sampled thumbnails, each at most "
        f"{b['thumb_size']} px a side and {b['thumb_bytes'] // 1024} KiB (JPEG); this file at most "
        f"{b['size_bound'] / 1e6:.1f} MB. Rebuild with <code>samlabel report DIR</code>.</footer>\n"
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


CSS = """
:root{--fg:#1d2330;--muted:#667085;--line:#e4e7ec;--bg:#f6f7f9;--card:#fff;--warn:#c2410c}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
header{padding:20px 28px 14px;background:#1d2330;color:#fff}
header h1{margin:0 0 4px;font-size:22px}
header code{background:rgba(255,255,255,.12);padding:1px 6px;border-radius:4px;word-break:break-all}
header .sub{color:#c0c6d4;font-size:13px;margin-top:4px}
section{padding:6px 28px 14px}
h2{font-size:17px;margin:18px 0 10px;border-bottom:1px solid var(--line);padding-bottom:4px}
h3{font-size:14px;margin:16px 0 8px}
.tiles{display:flex;flex-wrap:wrap;gap:12px;padding-top:18px}
.tile{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:10px 14px;min-width:150px}
.tile .label{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.tile .value{font-size:24px;font-weight:600}
.tile .hint{color:var(--muted);font-size:12px}
.tile.warn .value{color:var(--warn)}
.notes ul{background:#fff7ed;border:1px solid #fed7aa;border-radius:8px;padding:8px 28px;margin:8px 0}
.cols{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}
table{border-collapse:collapse;background:var(--card);border:1px solid var(--line);font-size:13px}
th,td{padding:4px 10px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{background:#f0f2f5;font-weight:600}
th.r,td.r{text-align:right;font-variant-numeric:tabular-nums}
td code{font-size:12px;word-break:break-all}
.swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px;vertical-align:baseline}
.charts{display:flex;flex-wrap:wrap;gap:16px;margin-top:12px}
.chart{margin:0;background:var(--card);border:1px solid var(--line);border-radius:8px;padding:8px}
.chart img{display:block}
.chart figcaption{font-size:12px;color:var(--muted);max-width:360px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:12px}
.card{margin:0;background:var(--card);border:1px solid var(--line);border-radius:8px;overflow:hidden}
.card.flagged{border-color:#fdba74}
.card.proposal{border-style:dashed;border-color:#98a2b3}
.swatch.dashed{border:1px dashed #1d2330;background:#fff}
.thumb{display:block;width:100%;height:auto;aspect-ratio:1/1;object-fit:contain;background:#111}
.thumb.missing{display:flex;align-items:center;justify-content:center;padding:12px;color:#ddd;
  font-size:12px;text-align:center;word-break:break-word}
.card figcaption{padding:8px 10px;font-size:12px}
.cls{font-weight:600;font-size:13px}
.flag{display:inline-block;background:#ffedd5;color:#9a3412;border-radius:10px;padding:0 7px;margin:3px 3px 0 0;
  font-size:11px}
.nums{display:grid;grid-template-columns:auto 1fr;gap:0 8px;margin:6px 0 4px}
.nums dt{color:var(--muted)}.nums dd{margin:0;font-variant-numeric:tabular-nums}
.where{color:var(--muted);white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.muted{color:var(--muted)}
footer{padding:14px 28px 28px;color:var(--muted);font-size:12px}
"""
