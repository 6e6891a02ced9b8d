"""Compose the stages over a stream of images: read -> detect -> segment -> write, resumably.

Each finished image's ``ImageRecord`` is appended to the journal (``pipeline.run.state``) after its
image and label file are in place. A run started again on the same DIR with the same inputs and
settings skips what the journal lists; data.yaml, the COCO files and report.json are rebuilt from
the journal at the end (``pipeline.run.report``), so an interrupted and resumed run ends equal to a
clean one.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.config import Settings
from pipeline.errors import SamlabelError
from pipeline.formats import layout
from pipeline.options import Engine as EngineName
from pipeline.run import local, ray_engine
from pipeline.run import report as run_report
from pipeline.run import state as run_state
from pipeline.run.steps import Engine, Job
from pipeline.types import DetectorStage, GeneratorStage, ImageItem, SegmenterStage

if TYPE_CHECKING:
    from pipeline.run.stages import DetectorRecipe, Recipe, SegmenterRecipe

LOGGER = logging.getLogger(__name__)

#: The engines, by ``--engine``: the same steps (``pipeline.run.steps``), scheduled in this process or on Ray.
ENGINES: dict[EngineName, Engine] = {"local": local.process, "ray": ray_engine.process}


@dataclass
class RunResult:
    """What a run produced: the dataset folder and its report (the content of report.json)."""

    out: Path
    report: dict = field(default_factory=dict)


def run_dataset(
    items: Sequence[ImageItem],
    *,
    out: str | Path,
    names: Sequence[str],
    settings: Settings,
    segmenter: SegmenterStage | SegmenterRecipe | None,
    detector: DetectorStage | DetectorRecipe | None = None,
    command: str = "label",
    overwrite: bool = False,
    progress: bool = True,
    fingerprint_extra: dict | None = None,
    prelude: dict | None = None,
    discard_reviews: bool = False,
    generator: GeneratorStage | Recipe | None = None,
) -> RunResult:
    """Process every item into the dataset at ``out`` and write data.yaml, COCO files and report.json.

    Args:
        items: images with their output name and split (and source labels, for ``convert``).
        out: dataset folder; created here if missing (not by the checks before).
        names: class names in class-id order.
        settings: run settings (formats, COCO encoding, simplification, resegment).
        segmenter: fills missing masks; may be ``None`` when every instance already has one.
        detector: finds instances in images whose item has no source labels (``label``).
        command: the command name, recorded in the state and report.
        overwrite: start afresh even if ``out`` holds another run's dataset.
        progress: show a progress bar.
        fingerprint_extra: more inputs that must match for a resume (e.g. the source dataset).
        prelude: findings from before the run (e.g. source problems) merged into the report.
        discard_reviews: let ``overwrite`` clear images checked in ``samlabel review`` (refused otherwise).
        generator: the automatic mask generator whose masks no instance accounts for are each image's proposals
            (used when ``settings.propose``).

    Raises:
        SamlabelError: ``out`` cannot be written, or holds a different run and ``overwrite`` is False.
    """
    out = Path(out)
    run_state.create_out(out)  # the run starts: only now is the folder made
    run_state.refuse_foreign(out, overwrite)
    with run_state.locked(out):  # before anything is checked or cleared: two runs never interleave
        fp = run_state.fingerprint(command, settings, names, items, fingerprint_extra)
        state = run_state.prepare(
            out,
            command=command,
            settings=settings,
            fingerprint=fp,
            names=names,
            overwrite=overwrite,
            discard_reviews=discard_reviews,
        )
        _complete_pending_save(out)
        journal = run_state.Journal(out)
        journal.drop_torn_tail()
        run_state.drop_temp_files(out, layout.get(settings.layout))  # what a killed run left half-written
        done = journal.done()
        todo = [it for it in items if it.rel not in done]
        if done:
            LOGGER.info("resuming %s: %d of %d images already done", out, len(items) - len(todo), len(items))
        started = time.perf_counter()
        job = Job(out, journal, settings, detector=detector, segmenter=segmenter, command=command, progress=progress,
                  generator=generator)  # fmt: skip
        try:
            result = ENGINES[settings.engine](todo, job)
        except BaseException:  # an interrupted run still adds what it did to the dataset's totals
            with contextlib.suppress(OSError):
                _add_run(out, time.perf_counter() - started, job.saved, job.seconds)
            raise
        unfinished = result.unfinished  # images a Ray run could not finish (not journaled: retried next run)
        this_run = _add_run(out, time.perf_counter() - started, result.saved, job.seconds)
        timings = run_report.timings(this_run, run_state.runs(out))
        report = run_report.finalize(
            out,
            names=names,
            settings=settings,
            state=state,
            wanted={it.rel for it in items},
            timings=timings,
            prelude={**(prelude or {}), **({"unfinished_images": unfinished} if unfinished else {})},
        )
    run_report.log_summary(out, report)
    if unfinished:
        raise SamlabelError(
            f"{len(unfinished)} image(s) not finished ({unfinished[0]['source']}: {unfinished[0]['reason']}; all in "
            f"{out / 'report.json'}); the others are saved: run the same command again to retry them"
        )
    return RunResult(out=out, report=report)


def _complete_pending_save(out: Path) -> None:
    """A review save a kill interrupted after its journal append: its label file is brought in line first
    (the COCO files and report.json are rebuilt from the journal at the end anyway)."""
    from pipeline.review.store import complete_pending_save

    if complete_pending_save(out, lock=False):
        LOGGER.info("%s: completed a review save that was interrupted", out)


def _add_run(out: Path, elapsed: float, images: int, seconds: Counter) -> dict:
    """This run's share; recorded in the run state when it did something (a re-run of a finished dataset does not)."""
    share = {"seconds": elapsed, "images": images, "stage_seconds": dict(seconds)}
    if images:
        run_state.add_run(out, share)
    return share
