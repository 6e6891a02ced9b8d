"""The options with a fixed set of values, each declared once as a ``Literal``; the tuples of values (the CLI's
choices, the checks in ``pipeline.config``) are read from the types, so the two cannot drift apart."""

from __future__ import annotations

from typing import Literal, get_args

#: Dataset layout: ``roboflow`` (<split>/images, labels, _annotations.coco.json) or ``coco``
#: (annotations/instances_<split>.json, images/<split>/).
Layout = Literal["roboflow", "coco"]
#: COCO ``segmentation`` encoding.
CocoMasks = Literal["polygon", "rle"]
#: Output formats (a run writes a non-empty subset).
Format = Literal["yolo", "coco"]
#: SAM image-encoder runtime.
Runtime = Literal["torch", "onnx", "auto"]
#: ``--multimask`` strategies: one SAM mask per box (``off``), or the best of SAM's 3 by score or box fit.
Multimask = Literal["off", "score", "box-fit"]
#: Where the models run: this process, or a Ray cluster.
Engine = Literal["local", "ray"]
#: What makes a ``label`` run's instances: the detector's boxes prompting SAM (``detect``), or SAM's automatic mask
#: generator, every object of the image as one class (``everything``).
Mode = Literal["detect", "everything"]

LAYOUTS: tuple[Layout, ...] = get_args(Layout)
COCO_MASKS: tuple[CocoMasks, ...] = get_args(CocoMasks)
FORMATS: tuple[Format, ...] = get_args(Format)
RUNTIMES: tuple[Runtime, ...] = get_args(Runtime)
MULTIMASK: tuple[Multimask, ...] = get_args(Multimask)
ENGINES: tuple[Engine, ...] = get_args(Engine)
MODES: tuple[Mode, ...] = get_args(Mode)
