"""The Python API; each function mirrors a CLI command with the same option names."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import load_settings
from pipeline.errors import SamlabelError
from pipeline.images import IMAGE_SUFFIXES
from pipeline.run import RunResult, check_writable, run_dataset
from pipeline.sources import find_images, parse_split, plan_items, read_dataset

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
    _require_engine(cfg)
    if isinstance(sources, (str, Path)):
        sources = [sources]
    items = plan_items(find_images(sources, exclude=Path(out)), parse_split(cfg.split))
    if not items:
        raise SamlabelError(
            f"no images found in {', '.join(map(str, sources))} (suffixes: {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    LOGGER.info("found %d images in %s", len(items), ", ".join(map(str, sources)))
    check_writable(out)
    if cfg.engine == "ray":  # each Ray model replica builds its own stages (stage objects are pickled to it)
        from pipeline.run.stages import DetectorRecipe

        detector = DetectorRecipe(cfg) if detector is None else detector
        segmenter = _LazySegmenter(cfg) if segmenter is None else segmenter
    if detector is None or segmenter is None:
        check_device(cfg.device)
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

        segmenter = Segmenter(cfg.segmenter, device=cfg.device, batch=cfg.sam_batch, runtime=cfg.runtime)
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


def convert(
    src: str | Path,
    out: str | Path,
    *,
    images: str | Path | None = None,
    names: Sequence[str] | None = None,
    config: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    segmenter: Any = None,
    **settings: Any,
) -> RunResult:
    """Turn a box (or polygon) dataset into a segmentation dataset; its own boxes prompt SAM.

    Splits, class names and their order, every image and each image's source path are kept.
    Objects that already have a polygon or RLE keep it (unless ``resegment=True``); an image none
    of whose objects needs SAM is not encoded, and SAM is not even loaded if no image needs it.

    Args:
        src: a data.yaml, YOLO folder, Roboflow YOLO or COCO export, a COCO json (with ``images``),
            or a .zip of one of these.
        out: dataset folder to write.
        images: image folder of a bare COCO json.
        names: class names of a bare images/ + labels/ pair without classes.txt.
        config: YAML settings file; keyword ``settings`` override it.
        overwrite: replace a dataset from a different run in ``out``.
        progress: show a progress bar.
        segmenter: weights (path or name, as ``--segmenter``), or a ready stage object.
        **settings: fields of ``pipeline.config.Settings`` (``link=True``, ``coco_masks="rle"`` ...).
    """
    segmenter = _stage_or_setting(segmenter, "segmenter", settings)
    cfg = load_settings(config, **settings)
    _require_engine(cfg)
    _refuse_overlap(Path(src), Path(out))
    if images is not None:
        _refuse_overlap(Path(images), Path(out), flag="--images")
    check_writable(out)
    ds = read_dataset(
        src,
        images=images,
        names=names,
        keep_unlabeled=cfg.keep_unlabeled,
        extract_to=Path(out) / ".samlabel" / "source",
    )
    LOGGER.info("detected %s", ds.describe())
    for problem in ds.problems:
        LOGGER.warning("%s: %s (%s)", problem.where, problem.problem, problem.action)
    if not ds.items:
        raise SamlabelError(f"{src}: no labeled images to convert ({len(ds.unlabeled)} images without labels)")
    if segmenter is None:
        # Built on first use: images whose source masks are kept never load SAM, while a source mask that
        # turns out unusable on its image (an RLE made for another size) is redone from its box.
        needs_sam = any(cfg.resegment or not o.has_mask for it in ds.items for o in it.labels.objects)
        if needs_sam and cfg.engine != "ray":  # on Ray, the device is the workers' (checked there)
            check_device(cfg.device)
        segmenter = _LazySegmenter(cfg)  # on Ray, pickled unbuilt: each replica builds SAM if it needs it
    prelude = {
        "source": {"detected": ds.describe(), "path": str(src)},
        "source_problems": [p.to_dict() for p in ds.problems],
        "unlabeled_images": list(ds.unlabeled),
    }
    return run_dataset(
        ds.items,
        out=out,
        names=ds.names,
        settings=cfg,
        segmenter=segmenter,
        command="convert",
        overwrite=overwrite,
        progress=progress,
        fingerprint_extra={"source": ds.describe(), "labels": _labels_digest(ds)},
        prelude=prelude,
    )


def _require_engine(cfg) -> None:
    """``--engine ray`` without Ray installed fails now, in one line that says how to install it."""
    if cfg.engine == "ray":
        from pipeline.run.ray_engine import require_ray

        require_ray()


def _refuse_overlap(src: Path, out: Path, flag: str = "the source") -> None:
    """The output folder must not be, contain, or lie inside the source dataset (or its image folder)."""
    a, b = src.resolve(), out.resolve()
    if a.is_file() and a.suffix.lower() == ".zip":
        return  # read from the archive; extracted inside the output folder
    root = a.parent if a.is_file() else a
    if b == root or b in root.parents or root in b.parents:
        raise SamlabelError(f"--out {out} overlaps {flag} {src}; write the dataset to a folder outside it")


def check_device(device: str | None) -> None:
    """Fail now, in one line, on a ``--device`` this machine does not have (not mid-run with a trace)."""
    if device in (None, "", "cpu"):
        return
    from ultralytics.utils.torch_utils import select_device

    try:
        select_device(device, verbose=False)
    except Exception as e:  # noqa: BLE001 - Ultralytics raises ValueError, torch may raise others
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SamlabelError(f"--device {device}: not usable here ({first}); use --device cpu or a valid GPU") from None


class _LazySegmenter:
    """Builds the SAM stage on first use, so images that need no SAM never load its weights."""

    def __init__(self, cfg) -> None:
        self._cfg = cfg
        self._stage = None

    def __call__(self, rgb, instances):
        if self._stage is None:
            from pipeline.segment import Segmenter

            check_device(self._cfg.device)
            self._stage = Segmenter(
                self._cfg.segmenter, device=self._cfg.device, batch=self._cfg.sam_batch, runtime=self._cfg.runtime
            )
        return self._stage(rgb, instances)


def _labels_digest(ds) -> str:
    import hashlib

    h = hashlib.sha256()
    for it in ds.items:
        h.update(it.rel.encode())
        for o in it.labels.objects:
            h.update(repr((o.class_id, [round(v, 6) for v in o.xyxy_n], o.source_id, o.rle)).encode())
            for poly in o.polygons_n:
                h.update(np.round(poly, 6).tobytes())
    return h.hexdigest()
