"""Histogram charts for the report, written as small SVG documents (text: no plotting library, no fonts to ship).

A chart is a few dozen rectangles, lines and labels: building its SVG text takes well under a millisecond,
where matplotlib took about 0.35 s to import and 0.1 s per chart, at the end of every run. The browser draws
the text in its own sans-serif font, sharp at any zoom.
"""

from __future__ import annotations

import math

import numpy as np

#: Chart size in pixels (width, height) and the bytes a chart's SVG must fit (it does by a wide margin).
CHART_PX = (360, 200)
CHART_BYTES = 64 * 1024

BAR, THRESHOLD, INK, TEXT = "#4c6ef5", "#e03131", "#333333", "#222222"
#: The plot area inside the chart: left, top, right, bottom edges in pixels (room for ticks and labels).
_PLOT = (50, 8, 350, 162)
_X_TICKS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def histogram_svg(counts: np.ndarray, *, xlabel: str, threshold: float | None = None) -> str:
    """A bar chart of ``counts`` (bins of equal width over [0, 1]) as an SVG document, ``CHART_PX`` pixels.

    The y axis runs from 0 to a little above the largest count, with whole-number ticks; the x axis from 0 to 1.

    Args:
        counts: int (B,) instances per bin, B >= 1.
        xlabel: what is counted (the number's name); escaped here.
        threshold: draws a dashed vertical line there (e.g. the review threshold of mask_score).

    Raises:
        ValueError: ``counts`` is empty or negative, or the SVG came out larger than ``CHART_BYTES``.
    """
    counts = np.asarray(counts, dtype=np.int64).reshape(-1)
    if counts.size == 0 or (counts < 0).any():
        raise ValueError(f"a histogram needs one or more counts of 0 or more, got {counts.tolist()[:8]}")
    left, top, right, bottom = _PLOT
    step, y_max = _y_axis(int(counts.max()))

    def x_at(v: float) -> float:
        return left + (right - left) * v

    def y_at(v: float) -> float:
        return bottom - (bottom - top) * v / y_max

    w, h = CHART_PX
    width = (right - left) / counts.size
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
        f'font-family="DejaVu Sans, Helvetica, Arial, sans-serif" fill="{TEXT}">',
        f'<rect width="{w}" height="{h}" fill="#ffffff"/>',
        f'<g fill="{BAR}" shape-rendering="crispEdges">',
    ]
    parts += [
        f'<rect x="{_n(left + i * width)}" y="{_n(y_at(c))}" width="{_n(width)}" height="{_n(bottom - y_at(c))}"/>'
        for i, c in enumerate(counts.tolist())
        if c > 0
    ]
    parts.append("</g>")
    if threshold is not None and 0 <= threshold <= 1:
        x = _n(x_at(threshold))
        parts.append(f'<line x1="{x}" y1="{top}" x2="{x}" y2="{bottom}" stroke="{THRESHOLD}" stroke-dasharray="4 3"/>')
    parts.append(
        f'<g stroke="{INK}" stroke-width="1" shape-rendering="crispEdges">'
        f'<path d="M{left - 0.5},{top} V{bottom + 0.5} H{right}" fill="none"/>'
        + "".join(f'<path d="M{_n(x_at(v))},{bottom} v4"/>' for v in _X_TICKS)
        + "".join(f'<path d="M{left},{_n(y_at(v))} h-4"/>' for v in range(0, y_max + 1, step))
        + "</g>"
    )
    parts.append('<g font-size="10" text-anchor="middle">')
    parts += [f'<text x="{_n(x_at(v))}" y="{bottom + 15}">{v:.1f}</text>' for v in _X_TICKS]
    parts.append("</g>")
    parts.append('<g font-size="10" text-anchor="end">')
    parts += [f'<text x="{left - 6}" y="{_n(y_at(v) + 3.5)}">{v:,}</text>' for v in range(0, y_max + 1, step)]
    parts.append("</g>")
    parts.append(f'<text x="{_n(x_at(0.5))}" y="{bottom + 30}" font-size="11" text-anchor="middle">{_e(xlabel)}</text>')
    mid = _n((top + bottom) / 2)
    parts.append(
        f'<text x="12" y="{mid}" font-size="11" text-anchor="middle" transform="rotate(-90 12 {mid})">instances</text>'
    )
    parts.append("</svg>")
    svg = "".join(parts)
    if len(svg.encode("utf-8")) > CHART_BYTES:
        raise ValueError(f"histogram SVG of {len(svg.encode('utf-8'))} bytes exceeds {CHART_BYTES}")
    return svg


def _y_axis(largest: int) -> tuple[int, int]:
    """(tick step, axis top) for counts up to ``largest``: 1, 2 or 5 times a power of ten, at most 6 ticks above
    0, the top a whole step at or above the largest count (at least 1)."""
    largest = max(largest, 1)
    step = 1
    for power in range(0, 20):
        for mult in (1, 2, 5):
            step = mult * 10**power
            if math.ceil(largest / step) <= 5:
                return step, step * math.ceil(largest / step)
    return step, step * math.ceil(largest / step)  # pragma: no cover (counts below 10**20)


def _n(v: float) -> str:
    """A coordinate with at most 2 decimals (same data, same bytes)."""
    return f"{v:.2f}".rstrip("0").rstrip(".")


def _e(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
