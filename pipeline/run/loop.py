"""Compose the stages over a stream of images: read -> detect -> segment -> write, resumably.

Each finished image's ``ImageRecord`` is appended to the journal (``pipeline.run.state``) after its
image and label file are in place. A run started again on the same DIR with the same inputs and
settings skips what the journal lists; data.yaml, the COCO files and report.json are rebuilt from
the journal at the end (``pipeline.run.report``), so an interrupted and resumed run ends equal to a
clean one.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.config import Settings
from pipeline.errors import ImageReadError, SamlabelError
from pipeline.formats import layout
from pipeline.images import MIN_SIDE, LoadedImage, load_image
from pipeline.run import report as run_report
from pipeline.run import state as run_state
from pipeline.run.outputs import to_record, write_files
from pipeline.types import ImageItem, ImageRecord, Instances

LOGGER = logging.getLogger(__name__)

Detect = Callable[[np.ndarray], Instances]
Segment = Callable[[np.ndarray, Instances], Instances]

#: Images read ahead of the model, and finished images waiting for their files: bounds the memory a run holds
#: (at most the image in the model, ``PREFETCH`` being read and ``PREFETCH`` + 1 being written).
PREFETCH = 1


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
    segmenter: Segment | None,
    detector: Detect | None = None,
    command: str = "label",
    overwrite: bool = False,
    progress: bool = True,
    fingerprint_extra: dict | None = None,
    prelude: dict | None = None,
    discard_reviews: bool = False,
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
        seconds: Counter = Counter()
        saved = [0]  # images this run finished
        unfinished: list[dict] = []  # images a Ray run could not finish (not journaled: the next run retries them)
        try:
            if settings.engine == "ray":  # the same stages on a Ray cluster
                from pipeline.run import ray_engine

                unfinished = ray_engine.process(todo, out=out, journal=journal, settings=settings, detector=detector,
                                                segmenter=segmenter, command=command, progress=progress,
                                                seconds=seconds)  # fmt: skip
                saved[0] = len(todo) - len(unfinished)
            else:
                _process(todo, out=out, journal=journal, settings=settings, detector=detector, segmenter=segmenter,
                         command=command, progress=progress, seconds=seconds, saved=saved)  # fmt: skip
        except BaseException:  # an interrupted run still adds what it did to the dataset's totals
            with contextlib.suppress(OSError):
                _add_run(out, time.perf_counter() - started, saved[0], seconds)
            raise
        this_run = _add_run(out, time.perf_counter() - started, saved[0], seconds)
        timings = run_report.timings(this_run, run_state.runs(out))
        report = run_report.finalize(
            out, names=names, settings=settings, state=state, wanted={it.rel for it in items}, timings=timings,
            prelude={**(prelude or {}), **({"unfinished_images": unfinished} if unfinished else {})},
        )  # fmt: skip
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


def _process(
    todo, *, out, journal, settings, detector, segmenter, command, progress, seconds: Counter, saved: list[int]
) -> None:
    """The loop: read ahead on one thread, models here, files and the journal line on another.

    ``saved[0]`` counts the images whose journal line is written (the bar does not count when disabled).
    """
    bar = tqdm(
        total=len(todo),
        unit="img",
        desc=command,
        disable=not progress,
        dynamic_ncols=True,
        # always images/s (tqdm would switch to s/img below one image per second)
        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_noinv_fmt}]",
    )
    with journal.appender() as append:

        def finish(item: ImageItem, loaded) -> None:  # writer thread: files, then the journal line
            if isinstance(loaded, ImageRecord):  # skipped while reading
                record = loaded
            else:
                t = time.perf_counter()
                image, instances = loaded
                record, lines = to_record(item, image, instances, settings)
                write_files(record, item, image, lines, out, settings)
                seconds["write"] += time.perf_counter() - t
            append(record)
            saved[0] += 1
            bar.update()

        try:
            with _Stages(prefetch=PREFETCH) as stages:
                for item, loaded in stages.read(todo, lambda it: read_item(it, seconds)):
                    if not isinstance(loaded, ImageRecord):
                        loaded = (loaded, infer_item(item, loaded, detector, segmenter, settings, seconds))
                    stages.write(finish, item, loaded)
        except KeyboardInterrupt:
            LOGGER.error("interrupted: %d images are saved; run the same command again to resume", saved[0])
            raise
        except SamlabelError:  # some are OSErrors too (weights not found): their own message, not a write failure
            raise
        except OSError as e:
            raise SamlabelError(
                f"writing to {out} failed ({e}); finished images are saved, free space or fix the "
                "folder and run the same command again to resume"
            ) from e
        finally:
            bar.close()


class _Stages:
    """Overlap reading and writing with the model work, which stays on the calling thread.

    ``read`` yields ``(item, fn(item))`` in order while a thread reads up to ``prefetch`` images
    ahead; ``write`` hands a finished image to a second thread (at most ``prefetch`` waiting). The
    writer's errors are raised in the caller; on exit, every image handed over is written first, so
    an interrupted run keeps everything it finished.
    """

    def __init__(self, prefetch: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        self.prefetch = prefetch
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="samlabel-read")
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="samlabel-write")
        self._pending: deque = deque()

    def read(self, items: Sequence[ImageItem], fn: Callable) -> Iterator[tuple[ImageItem, object]]:
        it = iter(items)
        ahead = deque((item, self._reader.submit(fn, item)) for item in itertools.islice(it, self.prefetch))
        while ahead:
            item, future = ahead.popleft()
            nxt = next(it, None)
            if nxt is not None:
                ahead.append((nxt, self._reader.submit(fn, nxt)))
            yield item, future.result()

    def write(self, fn: Callable, *args) -> None:
        while self._pending and (self._pending[0].done() or len(self._pending) >= self.prefetch):
            self._pending.popleft().result()  # raises the writer's error here
        self._pending.append(self._writer.submit(fn, *args))

    def __enter__(self) -> _Stages:
        return self

    def __exit__(self, *exc) -> None:
        self._reader.shutdown(wait=True, cancel_futures=True)
        self._writer.shutdown(wait=True)  # finish what was handed over, even when interrupted
        while self._pending:
            future = self._pending.popleft()
            if exc[0] is None:
                future.result()


def read_item(item: ImageItem, seconds: Counter) -> LoadedImage | ImageRecord:
    """The decoded image, or the record of an image that cannot be used."""
    t = time.perf_counter()
    try:
        image = load_image(item.path)
    except ImageReadError as e:  # skipped images are named once, at the end (run_report.log_summary)
        LOGGER.debug("skipped %s", e)
        return ImageRecord.skipped(item, str(e))
    seconds["read"] += time.perf_counter() - t
    if min(image.hw) < MIN_SIDE:
        reason = f"{item.path}: {image.hw[1]}x{image.hw[0]} pixels; Ultralytics drops images under {MIN_SIDE} px a side"
        LOGGER.debug("skipped %s", reason)
        return ImageRecord.skipped(item, reason)
    return image


def infer_item(
    item: ImageItem, image: LoadedImage, detector, segmenter, settings: Settings, seconds: Counter
) -> Instances:
    """Detect (unless the item has source labels) and segment what has no mask."""
    if item.labels is not None:
        instances = item.labels.to_instances(image.hw, resegment=settings.resegment)
    else:
        t = time.perf_counter()
        instances = detector(image.rgb)
        seconds["detect"] += time.perf_counter() - t
    if any(m is None for m in instances.masks):
        t = time.perf_counter()
        if segmenter is None:
            raise SamlabelError("instances need masks but no segmenter was given")
        instances = segmenter(image.rgb, instances)
        seconds["segment"] += time.perf_counter() - t
    return instances
