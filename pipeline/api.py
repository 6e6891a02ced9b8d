"""The Python API; each function mirrors a CLI command with the same option names."""

from __future__ import annotations

import functools
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import load_settings
from pipeline.device import check_device
from pipeline.errors import SamlabelError
from pipeline.images import IMAGE_SUFFIXES
from pipeline.run import RunResult, check_writable, run_dataset
from pipeline.run.stages import (
    DetectorRecipe,
    EverythingRecipe,
    GeneratorRecipe,
    SegmenterRecipe,
    build,
    check_segmenter,
    concept_recipe,
)
from pipeline.run.state import STATE_DIR
from pipeline.sources import find_images, parse_split, plan_items, read_dataset
from pipeline.types import DetectorStage, GeneratorStage, SegmenterStage
from pipeline.weights import is_sam3_file

LOGGER = logging.getLogger(__name__)


def label(
    sources: str | Path | Sequence[str | Path],
    out: str | Path,
    *,
    config: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    detector: str | Path | DetectorStage | None = None,
    segmenter: str | Path | SegmenterStage | None = None,
    discard_reviews: bool = False,
    generator: GeneratorStage | None = None,
    **settings: Any,
) -> RunResult:
    """Auto-label images: detector boxes become SAM box prompts (``mode="everything"``: SAM's automatic mask
    generator finds every object, as one class); writes YOLO-seg + COCO to ``out``.

    Args:
        sources: image files, folders (searched recursively) or glob patterns.
        out: dataset folder (created; an unfinished run there with the same settings is resumed).
        config: YAML file of settings; keyword ``settings`` override it.
        overwrite: replace a dataset from a different run in ``out``.
        progress: show a progress bar.
        discard_reviews: let ``overwrite`` replace a dataset with images checked in ``samlabel review``.
        detector: weights (path or name, as ``--detector``), or a ready stage object: a callable
            ``rgb -> Instances`` with a ``names`` attribute.
        segmenter: weights (path or name, as ``--segmenter``), or a ready stage object: a callable
            ``(rgb, Instances) -> Instances``.
        generator: with ``propose=True``, a ready automatic mask generator (``GeneratorStage``) instead of the
            one the settings describe.
        **settings: any field of ``pipeline.config.Settings`` (``conf=0.3``, ``split="train=1"`` ...).

    Returns:
        The output folder and the run report (also in ``out/report.json``).
    """
    det: DetectorStage | DetectorRecipe | None = _stage_or_setting(detector, "detector", settings)
    seg: SegmenterStage | SegmenterRecipe | None = _stage_or_setting(segmenter, "segmenter", settings)
    cfg = load_settings(config, **settings)
    _require_engine(cfg)
    if isinstance(sources, (str, Path)):
        sources = [sources]
    skipped: list[dict] = []  # files named that cannot be used, listed with the unreadable ones
    items = plan_items(find_images(sources, exclude=Path(out), skipped=skipped), parse_split(cfg.split))
    if not items:
        left_out = f"; left out: {skipped[0]['reason']}" if skipped else ""
        left_out += f" and {len(skipped) - 1} more" if len(skipped) > 1 else ""
        raise SamlabelError(
            f"no images found in {', '.join(map(str, sources))} (suffixes: {', '.join(sorted(IMAGE_SUFFIXES))})"
            + left_out
        )
    # Files with image suffixes; which of them are unreadable shows when they are read (listed at the end).
    found = len(items) + sum(Path(s["source"]).suffix.lower() in IMAGE_SUFFIXES for s in skipped)
    LOGGER.info("found %d image files in %s", found, ", ".join(map(str, sources)))
    check_writable(out)
    if cfg.mode == "everything" and cfg.propose:
        raise SamlabelError("--propose finds what a detector missed; --mode everything keeps every mask already")
    concept = concept_recipe(det, cfg) if cfg.mode == "detect" else None  # SAM 3 weights, or a concept model object
    fingerprint = concept.fingerprint() if concept is not None else None
    if cfg.exemplars is not None and concept is None:
        raise SamlabelError(
            f"--exemplars: --detector {cfg.detector} takes no example boxes; they prompt a concept model (sam3.pt)"
        )
    if cfg.mode == "everything":  # the generator's instances come with masks: no SAM stage after it
        det, seg = _everything_source(cfg, detector=det, segmenter=seg), None
    elif concept is not None:  # its stage finds the masks
        seg = SegmenterRecipe(cfg, lazy=True) if seg is None else seg  # only exemplar images' own boxes need SAM
        if cfg.engine == "ray":
            det = concept
        else:
            check_device(cfg.device)
            det, seg = concept.build(), build(seg)
    else:
        det, seg = _detect_stages(cfg, detector=det, segmenter=seg)
    return run_dataset(
        items,
        out=out,
        names=list(det.names),
        settings=cfg,
        detector=det,
        segmenter=seg,
        generator=_generator(generator, cfg, seg),
        command="label",
        overwrite=overwrite,
        progress=progress,
        prelude={"skipped_images": skipped} if skipped else None,
        discard_reviews=discard_reviews,
        fingerprint_extra=fingerprint or None,
    )


def _generator(stage: GeneratorStage | None, cfg, segmenter: Any = None) -> Any:
    """The stage ``--propose`` runs: the one given, else the settings' ``GeneratorRecipe`` (built here on the run's
    own SAM stage when it is one, so an image is encoded once for its boxes and its grid; on Ray, each replica builds
    it); None without ``--propose``."""
    if not cfg.propose or stage is not None:
        return stage
    recipe = GeneratorRecipe(cfg)
    if cfg.engine == "ray":
        return recipe
    shared = segmenter if hasattr(segmenter, "set_image") and hasattr(segmenter, "predict") else None
    return recipe.build(shared)


def _detect_stages(cfg, *, detector, segmenter) -> tuple[Any, Any]:
    """``--mode detect``: the detector and SAM stages (given objects kept; on Ray, recipes each replica builds)."""
    if cfg.engine == "ray":  # each Ray model replica builds its own stages (stage objects are pickled to it)
        detector = DetectorRecipe(cfg) if detector is None else detector
        if segmenter is None and is_sam3_file(cfg.segmenter):  # never downloaded: missing or onnx refused here
            check_segmenter(cfg)
        segmenter = SegmenterRecipe(cfg, lazy=True) if segmenter is None else segmenter
    if detector is None or segmenter is None:
        check_device(cfg.device)
    if detector is None:
        detector = DetectorRecipe(cfg).build()
    if segmenter is None:
        segmenter = SegmenterRecipe(cfg).build()
    return detector, segmenter


def _everything_source(cfg, *, detector, segmenter) -> Any:
    """``--mode everything``: SAM's automatic mask generator as the instance source (one class, ``cfg.name``).

    A ready SAM object (a ``pipeline.sam.Segmenter``, or anything with its ``set_image`` and ``predict``) is used
    by the generator; a detector is refused, since nothing would use it.
    """
    if detector is not None:
        raise SamlabelError("--mode everything finds the objects with SAM alone; leave out the detector")
    if segmenter is not None and not (hasattr(segmenter, "set_image") and hasattr(segmenter, "predict")):
        raise SamlabelError(
            "--mode everything prompts SAM with points: the segmenter must be SAM weights or a pipeline.sam.Segmenter "
            f"(set_image + predict), got {type(segmenter).__name__}"
        )
    if segmenter is not None:
        return EverythingRecipe(cfg).build(segmenter)
    if cfg.engine != "ray":
        check_device(cfg.device)
        return EverythingRecipe(cfg).build()
    check_segmenter(cfg)  # refused here, in one line, not on every Ray worker
    return EverythingRecipe(cfg)


def _stage_or_setting(value: Any, name: str, settings: dict[str, Any]) -> Any:  # the stage, or None
    """A str/Path is a weights setting (moved into ``settings``); anything else is a stage object."""
    if isinstance(value, (str, Path)):
        settings[name] = str(value)
        return None
    return value


def _leave_no_folder_if_refused(fn):
    """A call refused before its run starts leaves no ``out`` behind when it made it (a .zip extracts there)."""

    @functools.wraps(fn)
    def call(src, out, **kwargs):
        fresh = not Path(out).exists()
        try:
            return fn(src, out, **kwargs)
        except BaseException:
            if fresh and not (Path(out) / STATE_DIR / "state.json").exists():  # no run started in it
                shutil.rmtree(out, ignore_errors=True)
            raise

    return call


@_leave_no_folder_if_refused
def convert(
    src: str | Path,
    out: str | Path,
    *,
    images: str | Path | None = None,
    names: Sequence[str] | None = None,
    config: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    segmenter: str | Path | SegmenterStage | None = None,
    discard_reviews: bool = False,
    generator: GeneratorStage | None = None,
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
        generator: with ``propose=True`` (which objects did the source's annotators miss?), a ready automatic
            mask generator instead of the one the settings describe.
        discard_reviews: let ``overwrite`` replace a dataset with images checked in ``samlabel review``.
        **settings: fields of ``pipeline.config.Settings`` (``link=True``, ``coco_masks="rle"`` ...).
    """
    seg: SegmenterStage | SegmenterRecipe | None = _stage_or_setting(segmenter, "segmenter", settings)
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
    if seg is None:
        # Built on first use: images whose source masks are kept never load SAM, while a source mask that
        # turns out unusable on its image (an RLE made for another size) is redone from its box.
        objects = (o for it in ds.items if it.labels is not None for o in it.labels.objects)  # read_dataset: all set
        needs_sam = any(cfg.resegment or not o.has_mask for o in objects)
        if needs_sam and cfg.engine != "ray":  # refused now, in one line; on Ray the device is the workers'
            check_device(cfg.device)
        if needs_sam:
            check_segmenter(cfg)
        recipe = SegmenterRecipe(cfg, lazy=True)  # on Ray, each replica builds it (and SAM only if it needs it)
        seg = recipe if cfg.engine == "ray" else recipe.build()
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
        segmenter=seg,
        generator=_generator(generator, cfg, seg),
        command="convert",
        overwrite=overwrite,
        progress=progress,
        discard_reviews=discard_reviews,
        fingerprint_extra={"source": ds.describe(), "labels": _labels_digest(ds)},
        prelude=prelude,
    )


def _require_engine(cfg) -> None:
    """``--engine ray`` without Ray installed fails now, in one line that says how to install it."""
    if cfg.engine == "ray":
        from pipeline.run.ray_engine import require_ray

        require_ray()


def _refuse_overlap(src: Path, out: Path, flag: str = "the source") -> None:
    """The output folder must not be, contain, or lie inside the source dataset (or its image folder).

    A data.yaml's dataset is its folder; a COCO json is the file alone (its images are ``--images``, checked
    on their own), so a new folder beside it is fine, one that contains it is not.
    """
    a, b = src.resolve(), out.resolve()
    if a.is_file() and a.suffix.lower() == ".zip":
        return  # read from the archive; extracted inside the output folder
    if a.is_file() and a.suffix.lower() == ".json":
        if b == a or b in a.parents:
            raise SamlabelError(f"--out {out} overlaps {flag} {src} (it contains it); write the dataset elsewhere")
        return
    root = a.parent if a.is_file() else a
    if b == root or b in root.parents or root in b.parents:
        raise SamlabelError(f"--out {out} overlaps {flag} {src}; write the dataset to a folder outside it")


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
