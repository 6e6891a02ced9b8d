"""The local engine: one process, the models on the calling thread, reading and writing on two others."""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from pipeline.errors import SamlabelError
from pipeline.run.outputs import to_record, write_files
from pipeline.run.stages import build
from pipeline.run.steps import EngineResult, Job, add_seconds, infer_item, progress_bar, propose_item, read_item
from pipeline.types import ImageItem, ImageRecord

LOGGER = logging.getLogger(__name__)

T = TypeVar("T")

#: Images read ahead of the model, and finished images waiting for their files: bounds the memory a run holds
#: (at most the image in the model, ``PREFETCH`` being read and ``PREFETCH`` + 1 being written).
PREFETCH = 1


def process(todo: Sequence[ImageItem], job: Job) -> EngineResult:
    """The loop: read ahead on one thread, models here, files and the journal line on another.

    ``job.saved`` counts the images whose journal line is written (the bar does not count when disabled).
    """
    out, settings, seconds = job.out, job.settings, job.seconds
    detector, segmenter = build(job.detector), build(job.segmenter)  # stage objects, or a Recipe's stage
    generator = build(job.generator) if settings.propose else None
    bar = progress_bar(len(todo), job.command, progress=job.progress)
    with job.journal.appender() as append:

        def finish(item: ImageItem, loaded) -> None:  # writer thread: files, then the journal line
            if isinstance(loaded, ImageRecord):  # skipped while reading
                record = loaded
            else:
                t = time.perf_counter()
                image, instances, proposals = loaded
                record, lines = to_record(item, image, instances, settings, proposals=proposals)
                write_files(record, item, image, lines, out, settings)
                add_seconds(seconds, "write", since=t)
            append(record)
            job.saved += 1
            bar.update()

        try:
            with _Stages(prefetch=PREFETCH) as stages:
                for item, loaded in stages.read(todo, lambda it: read_item(it, seconds)):
                    if isinstance(loaded, ImageRecord):
                        stages.write(finish, item, loaded)
                    else:
                        instances = infer_item(item, loaded, detector, segmenter, settings, seconds)
                        proposals = propose_item(loaded, instances, generator, settings, seconds)
                        stages.write(finish, item, (loaded, instances, proposals))
        except KeyboardInterrupt:
            LOGGER.error("interrupted: %d images are saved; run the same command again to resume", job.saved)
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
    return EngineResult(saved=job.saved)


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

    def read(self, items: Sequence[ImageItem], fn: Callable[[ImageItem], T]) -> Iterator[tuple[ImageItem, T]]:
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
