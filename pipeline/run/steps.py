"""The per-image steps both engines run (read, then detect + segment), their progress bar and their result.

An engine (``pipeline.run.local``, ``pipeline.run.ray_engine``) differs from the other only in how it
schedules these steps; ``to_record`` and ``write_files`` (``pipeline.run.outputs``) finish each image.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from tqdm import tqdm

from pipeline.config import Settings
from pipeline.errors import ImageReadError, SamlabelError
from pipeline.images import MIN_SIDE, LoadedImage, load_image
from pipeline.proposals import select_proposals
from pipeline.run.stages import LazyStage
from pipeline.sources.labels import to_instances
from pipeline.types import DetectorStage, GeneratorStage, ImageItem, ImageRecord, Instances, SegmenterStage

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pipeline.run.stages import DetectorRecipe, Recipe, SegmenterRecipe
    from pipeline.run.state import Journal

LOGGER = logging.getLogger(__name__)


@dataclass
class Job:
    """What an engine is given: where the images go and how, and the counters it keeps up to date.

    Attributes:
        out: the dataset folder.
        journal: the run's journal; only the engine's driver appends to it, once per finished image.
        settings: the run's settings.
        detector, segmenter: stage objects, or ``Recipe``s (``pipeline.run.stages``) a Ray replica builds.
        command: the command name (the progress bar's label).
        progress: show a progress bar.
        seconds: time per stage (``read``, ``detect``, ``segment``, ``propose``, ``write``; ``load``: a SAM loaded
            on its first image), added to as images finish.
        saved: images journaled so far (read after an interruption too).
        generator: the automatic mask generator (stage object or ``Recipe``) whose masks that overlap no
            instance become the image's proposals (``settings.propose``); None without ``--propose``.
    """

    out: Path
    journal: Journal
    settings: Settings
    detector: DetectorStage | DetectorRecipe | None
    segmenter: SegmenterStage | SegmenterRecipe | None
    command: str
    progress: bool
    seconds: Counter = field(default_factory=Counter)
    saved: int = 0
    generator: GeneratorStage | Recipe | None = None


@dataclass
class EngineResult:
    """What an engine returns: images journaled, and those it could not finish (``{"source", "reason"}``, not
    journaled, so the next run retries them)."""

    saved: int
    unfinished: list[dict] = field(default_factory=list)


class Engine(Protocol):
    """Runs ``todo`` (images not yet in the journal), journaling each finished image."""

    def __call__(self, todo: Sequence[ImageItem], job: Job) -> EngineResult: ...


def progress_bar(total: int, desc: str, *, progress: bool) -> tqdm:
    """The run's progress bar, in images per second."""
    return tqdm(
        total=total,
        unit="img",
        desc=desc,
        disable=not progress,
        dynamic_ncols=True,
        # always images/s (tqdm would switch to s/img below one image per second)
        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_noinv_fmt}]",
    )


def add_seconds(seconds: Counter, stage: str, *, since: float) -> None:
    """Add the time from ``since`` (a ``time.perf_counter()``) to now to ``seconds[stage]``.

    A ``Counter`` holds float values (its ``update`` adds them, as ``Job.seconds`` needs); typeshed types
    its values as int, hence the one ignore here.
    """
    seconds[stage] += time.perf_counter() - since  # type: ignore[assignment]


def read_item(item: ImageItem, seconds: Counter) -> LoadedImage | ImageRecord:
    """The decoded image, or the record of an image that cannot be used."""
    t = time.perf_counter()
    try:
        image = load_image(item.path)
    except ImageReadError as e:  # skipped images are named once, at the end (run_report.log_summary)
        LOGGER.debug("skipped %s", e)
        return ImageRecord.skipped(item, str(e))
    add_seconds(seconds, "read", since=t)
    if min(image.hw) < MIN_SIDE:
        reason = f"{item.path}: {image.hw[1]}x{image.hw[0]} pixels; Ultralytics drops images under {MIN_SIDE} px a side"
        LOGGER.debug("skipped %s", reason)
        return ImageRecord.skipped(item, reason)
    return image


def infer_item(
    item: ImageItem,
    image: LoadedImage,
    detector: DetectorStage | None,
    segmenter: SegmenterStage | None,
    settings: Settings,
    seconds: Counter,
) -> Instances:
    """Detect (unless the item has source labels) and segment what has no mask."""
    if item.labels is not None:
        instances = to_instances(item.labels, image.hw, resegment=settings.resegment)
    else:
        if detector is None:
            raise SamlabelError("images without source labels need a detector, and none was given")
        t = time.perf_counter()
        instances = detector(image.rgb)
        add_seconds(seconds, "detect", since=t)
    if any(m is None for m in instances.masks):
        if segmenter is None:
            raise SamlabelError("instances need masks but no segmenter was given")
        if isinstance(segmenter, LazyStage) and not segmenter.loaded:  # loading SAM is start-up, not segmenting
            t = time.perf_counter()
            segmenter.load()
            add_seconds(seconds, "load", since=t)
        t = time.perf_counter()
        instances = segmenter(image.rgb, instances)
        add_seconds(seconds, "segment", since=t)
    return instances


def propose_item(
    image: LoadedImage,
    instances: Instances,
    generator: GeneratorStage | None,
    settings: Settings,
    seconds: Counter,
) -> Instances | None:
    """The image's proposals (``pipeline.proposals``): the generator's masks that overlap none of ``instances``;
    None when the run makes none (``settings.propose`` off)."""
    if not settings.propose:
        return None
    if generator is None:
        raise SamlabelError("--propose needs the automatic mask generator, and none was given")
    t = time.perf_counter()
    generated = generator(image.rgb, covered=instances)
    proposals = select_proposals(generated, instances, iou=settings.propose_iou)
    add_seconds(seconds, "propose", since=t)
    return proposals
