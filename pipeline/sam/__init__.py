"""The SAM stage: ``set_image`` once per image, then cheap ``predict`` calls (boxes, points, mask inputs).

Public API::

    seg = Segmenter("mobile_sam.pt", runtime="auto")   # or Segmenter("my.pt", arch="mobile_sam")
    emb = seg.set_image(rgb)                             # one encoder pass
    pred = seg.predict(emb, boxes=xyxy)                  # or points=..., point_labels=..., mask_input=...
    pred.mask(0), pred.scores, pred.logits               # CropMask at image size; float32 (N, K); (N, K, 256, 256)
    seg(rgb, instances)                                  # the pipeline stage: every unmasked box -> mask

Modules: ``build`` (checkpoint -> model by architecture; SAM 3's interactive head from
``pipeline.concepts.sam3_build``), ``checkpoint`` (state dicts read with ``weights_only``, key mismatches), ``prompts`` (checks, encoder-input pixels),
``torch_backend`` (Ultralytics' predictors: the reference), ``onnx_backend`` / ``onnx_export`` /
``onnx_cache`` (ONNX Runtime sessions, exports, the cache folder), ``box_decoder`` / ``prompt_decoder``
(the exported decoder graphs), ``upsample`` (low-res logits -> image masks), ``segmenter`` (the stage).

``ARCHS`` (the architecture names, from Ultralytics' ``sam_model_map``) is computed on first access, so
importing this package does not import Ultralytics.
"""

from __future__ import annotations

from pipeline.sam.build import load_sam, sam_archs
from pipeline.sam.segmenter import RUNTIMES, ImageEmbedding, Prediction, Segmenter
from pipeline.sam.upsample import Upsampler

__all__ = [
    "ARCHS",
    "RUNTIMES",
    "ImageEmbedding",
    "Prediction",
    "Segmenter",
    "Upsampler",
    "load_sam",
    "sam_archs",
]


def __getattr__(name: str):
    if name == "ARCHS":
        return sam_archs()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
