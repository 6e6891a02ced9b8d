"""The HTML report of a samlabel dataset: one self-contained page that shows how good a run is and what to look at.

``write_report_html(DIR)`` reads only what is on disk (data.yaml, report.json, the COCO files or the YOLO label
files, the images it shows), so it can be rebuilt for any existing dataset (``samlabel report DIR``).

Modules:
    scan.py    one pass over the instances: counts, histograms, flag counts and the gallery's picks (bounded)
    thumbs.py  one thumbnail: the crop around an instance, drawn with OpenCV at the thumbnail's resolution
    charts.py  histogram charts as small SVG documents (no plotting library)
    page.py    the HTML text (pure: data in, escaped HTML out)
    write.py   ``write_report_html``: reads the dataset, draws the thumbnails, writes DIR/report.html atomically
"""

from __future__ import annotations

from pipeline.report.write import MAX_FLAGGED, MAX_SAMPLE, THUMB_SIZE, size_bound, write_report_html

__all__ = ["MAX_FLAGGED", "MAX_SAMPLE", "THUMB_SIZE", "size_bound", "write_report_html"]
