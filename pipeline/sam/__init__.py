"""The SAM stage: one image-encoder pass per image, then cheap prompt decodes (boxes, points, masks)."""

from __future__ import annotations

from pipeline.sam.segmenter import Segmenter
from pipeline.sam.upsample import Upsampler

__all__ = ["Segmenter", "Upsampler"]
