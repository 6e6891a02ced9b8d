"""Histogram PNGs for the report, drawn on matplotlib's Agg canvas (no pyplot: no global figure or backend state)."""

from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

#: Chart size in pixels (width, height) and the PNG byte limit a chart must fit (it does by a wide margin).
CHART_PX = (360, 200)
CHART_BYTES = 64 * 1024

_DPI = 100


def histogram_png(counts: np.ndarray, *, xlabel: str, threshold: float | None = None) -> bytes:
    """A bar chart of ``counts`` (bins of equal width over [0, 1]) as PNG bytes, ``CHART_PX`` pixels.

    Args:
        counts: int (B,) instances per bin.
        xlabel: what is counted (the number's name).
        threshold: draws a dashed vertical line there (e.g. the review threshold of mask_score).

    Raises:
        ValueError: the PNG came out larger than ``CHART_BYTES`` (it cannot with bars on a small canvas).
    """
    counts = np.asarray(counts)
    fig = Figure(figsize=(CHART_PX[0] / _DPI, CHART_PX[1] / _DPI), dpi=_DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 1.0 / len(counts)
    ax.bar(np.arange(len(counts)) * width, counts, width=width, align="edge", color="#4c6ef5", linewidth=0)
    if threshold is not None:
        ax.axvline(threshold, color="#e03131", linestyle="--", linewidth=1, zorder=3)
    ax.set_xlim(0, 1)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel("instances", fontsize=8)
    ax.tick_params(labelsize=7)
    locator = ax.yaxis.get_major_locator()
    if isinstance(locator, MaxNLocator):  # the default AutoLocator is one
        locator.set_params(integer=True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.tight_layout(pad=0.4)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})  # no version stamp: same data, same bytes
    data = buf.getvalue()
    if len(data) > CHART_BYTES:
        raise ValueError(f"histogram PNG of {len(data)} bytes exceeds {CHART_BYTES}")
    return data
