"""The Python API; each function mirrors a CLI command with the same option names."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.config import load_settings
from pipeline.errors import SamlabelError
from pipeline.images import IMAGE_SUFFIXES
from pipeline.run import RunResult, check_writable, run_dataset
from pipeline.sources import find_images, parse_split, plan_items

LOGGER = logging.getLogger(__name__)


def label(
    sources: str | Path | Sequence[str | Path],
    out: str | Path,
    *,
    config: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    detector: Any = None,
    segmenter: Any = None,
    **settings: Any,
) -> RunResult:
    """Auto-label images: detector boxes become SAM box prompts; writes YOLO-seg + COCO to ``out``.

    Args:
        sources: image files, folders (searched recursively) or glob patterns.
        out: dataset folder (created; an unfinished run there with the same settings is resumed).
        config: YAML file of settings; keyword ``settings`` override it.
        overwrite: replace a dataset from a different run in ``out``.
        progress: show a progress bar.
        detector: weights (path or name, as ``--detector``), or a ready stage object: a callable
            ``rgb -> Instances`` with a ``names`` attribute.
        segmenter: weights (path or name, as ``--segmenter``), or a ready stage object: a callable
            ``(rgb, Instances) -> Instances``.
        **settings: any field of ``pipeline.config.Settings`` (``conf=0.3``, ``split="train=1"`` ...).

    Returns:
        The output folder and the run report (also in ``out/report.json``).
    """
    detector, segmenter = (
        _stage_or_setting(detector, "detector", settings),
        _stage_or_setting(segmenter, "segmenter", settings),
    )
    cfg = load_settings(config, **settings)
    if isinstance(sources, (str, Path)):
        sources = [sources]
    items = plan_items(find_images(sources), parse_split(cfg.split))
    if not items:
        raise SamlabelError(
            f"no images found in {', '.join(map(str, sources))} (suffixes: {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    LOGGER.info("found %d images in %s", len(items), ", ".join(map(str, sources)))
    check_writable(out)
    if detector is None:
        from pipeline.detect import Detector

        detector = Detector(
            cfg.detector,
            classes=cfg.classes,
            conf=cfg.conf,
            iou=cfg.iou,
            max_det=cfg.max_det,
            imgsz=cfg.imgsz,
            device=cfg.device,
        )
    if segmenter is None:
        from pipeline.segment import Segmenter

        segmenter = Segmenter(cfg.segmenter, device=cfg.device, batch=cfg.sam_batch)
    return run_dataset(
        items,
        out=out,
        names=list(detector.names),
        settings=cfg,
        detector=detector,
        segmenter=segmenter,
        command="label",
        overwrite=overwrite,
        progress=progress,
    )


def _stage_or_setting(value: Any, name: str, settings: dict[str, Any]) -> Any:
    """A str/Path is a weights setting (moved into ``settings``); anything else is a stage object."""
    if isinstance(value, (str, Path)):
        settings[name] = str(value)
        return None
    return value
