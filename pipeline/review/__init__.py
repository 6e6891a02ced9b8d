"""``samlabel review``: fix the masks that need it in the browser, with SAM clicks.

Modules: ``store`` (the dataset side: queue, instances, durable saves), ``server`` (the FastAPI app, its
token guard, and ``serve``), ``sam`` (the SAM stage behind one small adapter), ``rle`` (masks in and out
of the API), ``static/`` (the page: one HTML, JS and CSS file, no build step, nothing fetched from elsewhere).
"""

from __future__ import annotations

from pipeline.review.store import ReviewStore


def serve(*args, **kwargs):
    """``pipeline.review.server.serve`` (imported on first use: FastAPI and uvicorn load only for review)."""
    from pipeline.review.server import serve as _serve

    return _serve(*args, **kwargs)


__all__ = ["ReviewStore", "serve"]
