"""samlabel: images or box datasets in, YOLO-seg + COCO instance-segmentation datasets out."""

from __future__ import annotations

from pipeline import threads  # noqa: F401  (first: reads OMP_NUM_THREADS before Ultralytics changes it)
from pipeline.api import convert, label
from pipeline.config import Settings, load_settings
from pipeline.errors import SamlabelError
from pipeline.run import RunResult
from pipeline.types import CropMask, ImageItem, Instances
from pipeline.validate import validate

__all__ = [
    "CropMask",
    "ImageItem",
    "Instances",
    "RunResult",
    "SamlabelError",
    "Settings",
    "convert",
    "label",
    "load_settings",
    "validate",
]
__version__ = "0.1.0"
