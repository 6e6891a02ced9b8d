"""samlabel: images or box datasets in, YOLO-seg + COCO instance-segmentation datasets out."""

from __future__ import annotations

from pipeline.api import label
from pipeline.config import Settings, load_settings
from pipeline.errors import SamlabelError
from pipeline.run import RunResult
from pipeline.types import CropMask, ImageItem, Instances

__all__ = [
    "CropMask",
    "ImageItem",
    "Instances",
    "RunResult",
    "SamlabelError",
    "Settings",
    "label",
    "load_settings",
]
__version__ = "0.1.0"
