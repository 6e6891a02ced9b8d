"""``samlabel review``: fix the masks that need it in the browser, with SAM clicks.

Modules: ``store`` (the dataset side: queue, instances, durable saves; an edit goes through the run's
instance -> files step), ``server`` (the FastAPI app, its response models, and ``serve``), ``guard`` (the
ASGI front door: Host, token, body limits, security headers), ``sam`` (the SAM stage behind one small
adapter), ``static/`` (the page: HTML, CSS and ES modules served as they are, no build step, nothing
fetched from elsewhere). Masks cross the API as COCO RLE (``pipeline.masks``).
"""

from __future__ import annotations

from pipeline.review.store import ReviewStore


def serve(*args, **kwargs):
    """``pipeline.review.server.serve`` (imported on first use: FastAPI and uvicorn load only for review)."""
    from pipeline.review.server import serve as _serve

    return _serve(*args, **kwargs)


__all__ = ["ReviewStore", "serve"]
