"""``--engine ray``: the local run's stages on a Ray cluster, as one Ray Data pipeline.

::

    planned items -> read + decode -> detector + SAM        -> record + files -> driver: journal, progress bar
    (from_items)     CPU tasks        actor pool: a replica     CPU tasks
                                      per GPU (share) or per
                                      CPU share, built there

Each row carries one image (``_Work``, pickled), keyed by its ``rel``. Workers read the source and
write the image and label files (atomically, under their final names: a retried task writes the same
bytes again). Only the driver appends to the journal, once per ``rel``, as rows arrive; data.yaml,
COCO and report.json are assembled from the journal as in a local run (``pipeline.run.report``).
So a worker that dies is retried by Ray without losing or doubling an image, and a driver killed
mid-run loses only rows that had not arrived, which the next run redoes.

The models run the image's calls one at a time, at the thread count a local run uses
(``pipeline.threads``), so both engines write the same bytes; batches only amortize Ray's dispatch.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import pickle
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config import Settings
from pipeline.errors import SamlabelError
from pipeline.images import LoadedImage
from pipeline.run.outputs import to_record, write_files
from pipeline.run.stages import GeneratorRecipe, build
from pipeline.run.state import STATE_DIR
from pipeline.run.steps import EngineResult, Job, add_seconds, infer_item, progress_bar, propose_item, read_item
from pipeline.threads import default_threads
from pipeline.types import ImageItem, ImageRecord, Instances

if TYPE_CHECKING:
    from ray.data import Dataset

LOGGER = logging.getLogger(__name__)

INSTALL = 'pip install "samlabel[ray]"'
#: Tries of a stage on one image whose worker dies each time, before the image is reported unfinished.
TRIES = 3
#: Images per model call batch on a GPU replica (dispatch only: each image is still one model call).
GPU_BATCH = 4
#: Seconds the start-up check waits for every node to answer.
PROBE_TIMEOUT = 120
LOST = "a Ray worker died on it each time it was tried (killed, out of memory or crashed; see the Ray logs)"


def require_ray() -> None:
    """Raises SamlabelError, in one line with the install command, when Ray Data cannot be imported."""
    try:
        import ray.data  # noqa: F401
    except ImportError as e:
        raise SamlabelError(f"--engine ray needs Ray Data, which is not importable here ({e}); {INSTALL}") from None


@dataclass(frozen=True)
class _Work:
    """One image on its way through the pipeline (what a row carries).

    Attributes:
        item: the planned image (its ``rel`` keys the row).
        image, instances: the decoded image and its instances, between the stages that need them.
        proposals: the image's proposals (``--propose``), between the model and the write stage.
        record: the finished record (written, or skipped as unreadable); sent to the driver.
        error: an unexpected failure on this image: reported, not journaled, so the next run retries it.
        fatal: a settings or weights problem (``SamlabelError``): the driver ends the run with it.
        seconds: time per stage on the workers, as the local run's ``stage_seconds``.
    """

    item: ImageItem
    image: LoadedImage | None = None
    instances: Instances | None = None
    proposals: Instances | None = None
    record: ImageRecord | None = None
    error: str | None = None
    fatal: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class _Run:
    """What every worker function is given: where the run is, and its settings.

    Attributes:
        cwd: the driver's working folder: workers resolve relative paths (``--out``, sources) from it, as the
            driver does (a local Ray's workers start there; a cluster's start elsewhere).
        out: the dataset folder, as the driver names it.
        tries: this run's folder of tries per stage and image (see ``_step``).
        settings: the run's settings.
    """

    cwd: str
    out: str
    tries: str
    settings: Settings

    def enter(self) -> None:
        """Called first by every worker function: the driver logs each image's outcome (the same warning from
        the worker would show twice), and paths resolve as on the driver."""
        logging.getLogger("pipeline").setLevel(logging.ERROR)
        if os.getcwd() != self.cwd:
            os.chdir(self.cwd)


def process(todo: Sequence[ImageItem], job: Job) -> EngineResult:
    """Run ``todo`` on Ray and journal each finished image; the result lists the images not finished.

    ``job.detector`` and ``job.segmenter`` are stage objects (pickled to every model replica) or ``Recipe``s
    (built by every replica). Ray is joined at ``settings.ray_address``, or started here and stopped
    at the end.

    Raises:
        SamlabelError: Ray is missing or unreachable, ``out`` or the images are not shared with every
            node, a stage cannot be built, or the cluster failed mid-run (finished images are saved).
    """
    require_ray()
    if not todo:
        return EngineResult(saved=0)
    import ray

    out, settings = job.out, job.settings

    started_here = _connect(settings)
    run = _Run(cwd=os.getcwd(), out=str(out), tries=str(out / STATE_DIR / "tries"), settings=settings)
    shutil.rmtree(run.tries, ignore_errors=True)  # a killed run's counts: its images start afresh
    try:
        check_shared(run, todo[0].path)
        Path(run.tries).mkdir(parents=True)
        generator = job.generator if settings.propose else None
        ds = _pipeline(todo, run=run, detector=job.detector, segmenter=job.segmenter, generator=generator)
        return _collect(ds, todo, job)
    except ray.exceptions.RayError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SamlabelError(
            f"the Ray run failed ({first}); finished images are saved, run the same command again to resume"
        ) from e
    finally:
        shutil.rmtree(run.tries, ignore_errors=True)
        if started_here:
            ray.shutdown()


def _connect(settings: Settings) -> bool:
    """Join the cluster (or start a local Ray); True if this call started the connection."""
    import ray

    if ray.is_initialized():
        return False
    try:
        ray.init(address=settings.ray_address, include_dashboard=False, logging_level=logging.WARNING)
    except ConnectionError as e:
        raise SamlabelError(
            f"--ray-address {settings.ray_address}: no Ray cluster there ({e}); start one (ray start --head, "
            "ray up) or leave --ray-address unset to run on a local Ray"
        ) from None
    return True


def check_shared(run: _Run, source: Path) -> None:
    """Prove that every node with CPUs or GPUs can write ``run.out`` and read ``source``, and that this driver
    sees what they write there: a task pinned to each node writes a probe file, which the driver must read.

    Raises:
        SamlabelError: a node cannot write ``out`` or read ``source``, or its probe is not visible here.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = uuid.uuid4().hex[:12]
    nodes = [n for n in ray.nodes() if n.get("Alive") and (n["Resources"].get("CPU") or n["Resources"].get("GPU"))]
    task = ray.remote(num_cpus=0, max_retries=1)(_probe)
    refs = [
        task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
            run, f".samlabel-probe-{token}-{i}", str(source)
        )
        for i, n in enumerate(nodes)
    ]
    try:
        answers = ray.get(refs, timeout=PROBE_TIMEOUT)
    except ray.exceptions.GetTimeoutError:
        raise SamlabelError(
            f"the Ray nodes did not answer the start-up check within {PROBE_TIMEOUT} s; check the cluster (ray status)"
        ) from None
    fix = "put --out and the images on storage every node mounts at the same path (NFS ...)"
    out = Path(run.out)
    try:
        for node, (name, error) in zip(nodes, answers, strict=True):
            where = f"Ray node {node['NodeManagerAddress']}"
            if error:
                raise SamlabelError(f"{where}: {error}; {fix}")
            if not _visible(out / name, name):
                raise SamlabelError(
                    f"--out {out} is not shared with {where}: a task there wrote {name}, not seen here; {fix}"
                )
    finally:
        for name, _ in answers:
            (out / name).unlink(missing_ok=True)


def _probe(run: _Run, name: str, source: str) -> tuple[str, str | None]:
    """On one node: write ``out/name`` (holding its own name) and check ``source`` is readable; (name, error)."""
    try:
        run.enter()
    except OSError as e:
        return name, f"the driver's working folder {run.cwd} is not there ({e})"
    try:
        (Path(run.out) / name).write_text(name)
    except OSError as e:
        return name, f"cannot write to {run.out} there ({e})"
    if not os.access(source, os.R_OK):
        return name, f"cannot read {source} there"
    return name, None


def _visible(path: Path, text: str, tries: int = 10) -> bool:
    """``path`` exists with ``text`` in it (shared file systems may show a new file a moment late)."""
    for _ in range(tries):
        try:
            if path.read_text() == text:
                return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def _pipeline(todo: Sequence[ImageItem], *, run: _Run, detector, segmenter, generator=None) -> Dataset:
    """The Ray Data dataset: read tasks -> model actors -> write tasks, one row per image."""
    import ray
    from ray.data import ActorPoolStrategy, TaskPoolStrategy

    threads = default_threads()  # the local run's count, so both engines compute the same numbers
    gpus = run.settings.ray_gpus_per_actor
    batch = GPU_BATCH if gpus else 1
    blocks = math.ceil(len(todo) / batch)
    actors = min(run.settings.ray_actors or _auto_actors(gpus, threads), blocks)  # no replica without work
    # Reads (a few ms an image) and records + files (tens of ms) reserve no CPU: whole CPUs for them would leave a
    # small node no room for its model replica, which does the work; their number is capped instead.
    io: dict[str, Any] = dict(num_cpus=0, compute=TaskPoolStrategy(size=min(2 * actors, len(todo))), batch_size=1)
    rows = [{"rel": it.rel, "work": _dumps(_Work(item=it))} for it in todo]
    ds: Dataset = ray.data.from_items(rows, override_num_blocks=blocks)
    # the batch functions take the default batch format, a dict of arrays; Ray types them for any format
    ds = ds.map_batches(_read_batch, fn_kwargs=dict(run=run), **io)  # type: ignore[arg-type]
    ds = ds.map_batches(
        _Models,
        fn_constructor_kwargs=dict(
            detector=detector, segmenter=segmenter, generator=generator, run=run, threads=threads, gpus=gpus
        ),
        compute=ActorPoolStrategy(size=actors),
        batch_size=batch,
        num_gpus=gpus or None,
        num_cpus=1 if gpus else _cpus_per_actor(threads),
    )
    ds = ds.map_batches(_write_batch, fn_kwargs=dict(run=run), **io)  # type: ignore[arg-type]
    ds.context.enable_progress_bars = False  # the driver shows its own bar (images/s), as a local run does
    LOGGER.info(
        "Ray: %d model replica(s) (%s), %d threads each, %d images",
        actors,
        f"{gpus:g} GPU each" if gpus else "CPU",
        threads,
        len(todo),
    )
    return ds


def _auto_actors(gpus: float, threads: int) -> int:
    """One replica per ``gpus`` of the cluster's GPUs, or per ``threads`` of its CPUs."""
    import ray

    resources = ray.cluster_resources()
    if gpus:
        n = int(resources.get("GPU", 0) / gpus)
        if n < 1:
            raise SamlabelError(
                f"--ray-gpus-per-actor {gpus:g}: the Ray cluster has {resources.get('GPU', 0):g} GPUs; set "
                "--ray-actors N (an autoscaling cluster adds the nodes), or --ray-gpus-per-actor 0 to run on CPU"
            )
        return n
    if resources.get("GPU"):
        LOGGER.info("the Ray cluster has %g GPUs; --ray-gpus-per-actor 1 puts the models on them", resources["GPU"])
    return max(1, int(resources.get("CPU", 1) // threads))


def _cpus_per_actor(threads: int) -> float:
    """A CPU replica reserves its thread count, at most the CPUs of the largest node (so that it can be placed)."""
    import ray

    largest = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=1)
    return max(1, min(threads, largest))


# ---- on the workers ------------------------------------------------------------------------------------------


def _dumps(work: _Work) -> bytes:
    return pickle.dumps(work, protocol=pickle.HIGHEST_PROTOCOL)


def _loads(data: bytes) -> _Work:
    return pickle.loads(data)  # rows written by this run's own workers


def _map(batch: dict, fn: Callable[[_Work], _Work]) -> dict:
    works = [fn(_loads(data)) for data in batch["work"]]
    return {"rel": [w.item.rel for w in works], "work": [_dumps(w) for w in works]}


def _step(work: _Work, fn: Callable[[_Work, Counter], _Work], *, stage: str, run: _Run) -> _Work:
    """Run one stage on one image; its failure is the image's, never the worker's or the run's.

    Ray retries a task whose worker died, without end. A file per stage and image in ``run.tries`` counts the
    tries that did not come back (written before, removed after): after ``TRIES`` the image is given up.
    """
    if work.record is not None or work.error or work.fatal:
        return work  # skipped while reading, or failed earlier: passed on untouched
    mark = Path(run.tries) / f"{stage}-{hashlib.sha256(work.item.rel.encode()).hexdigest()[:24]}"
    died = int(mark.read_text() or 0) if mark.is_file() else 0
    if died >= TRIES:
        return replace(work, error=LOST)
    mark.write_text(str(died + 1))
    seconds = Counter(work.seconds)
    try:
        work = fn(work, seconds)
    except SamlabelError as e:  # settings, weights, device: the same on every image
        work = replace(work, fatal=str(e))
    except Exception as e:  # noqa: BLE001 - one image's failure must not end a cluster run; it is reported and retried
        LOGGER.debug("%s failed", work.item.path, exc_info=True)
        work = replace(work, error=f"{type(e).__name__}: {e}")
    mark.unlink(missing_ok=True)
    return replace(work, seconds=dict(seconds))


def _read_batch(batch: dict, *, run: _Run) -> dict:
    run.enter()

    def read(work: _Work, seconds: Counter) -> _Work:
        loaded = read_item(work.item, seconds)
        return replace(work, record=loaded) if isinstance(loaded, ImageRecord) else replace(work, image=loaded)

    return _map(batch, lambda w: _step(w, read, stage="read", run=run))


class _Models:
    """One model replica (a Ray actor): builds its stages here and runs them image by image.

    Args:
        detector, segmenter, generator: stage objects or ``Recipe``s (``pipeline.run.stages``); generator None
            without ``--propose``.
        run: where the run is, and its settings.
        threads: PyTorch threads per model call (the driver's ``default_threads()``).
        gpus: GPUs this replica holds; 0 hides every GPU from it.
    """

    def __init__(self, *, detector, segmenter, run: _Run, threads: int, gpus: float, generator=None) -> None:
        run.enter()
        os.environ["SAMLABEL_THREADS"] = str(threads)  # Ray sets OMP_NUM_THREADS to the actor's CPUs
        if not gpus:
            os.environ["CUDA_VISIBLE_DEVICES"] = ""  # a CPU replica never lands on a GPU another replica holds
        self.run = run
        self.fatal: str | None = None
        try:
            self.detector, self.segmenter = build(detector), build(segmenter)
            if isinstance(generator, GeneratorRecipe):  # on this replica's own SAM: one encoding per image
                shared = self.segmenter if hasattr(self.segmenter, "set_image") else None
                self.generator = generator.build(shared)
            else:
                self.generator = build(generator)
        except SamlabelError as e:  # reported by the driver in one line
            self.fatal = str(e)

    def __call__(self, batch: dict) -> dict:
        return _map(batch, self._one)

    def _one(self, work: _Work) -> _Work:
        if self.fatal is not None:
            return replace(work, fatal=self.fatal)

        def infer(w: _Work, seconds: Counter) -> _Work:
            assert w.image is not None  # read: an image not skipped while reading is decoded
            instances = infer_item(w.item, w.image, self.detector, self.segmenter, self.run.settings, seconds)
            proposals = propose_item(w.image, instances, self.generator, self.run.settings, seconds)
            return replace(w, instances=instances, proposals=proposals)

        return _step(work, infer, stage="models", run=self.run)


def _write_batch(batch: dict, *, run: _Run) -> dict:
    run.enter()

    def write(work: _Work, seconds: Counter) -> _Work:
        assert work.image is not None and work.instances is not None  # read and inferred: not skipped
        t = time.perf_counter()
        record, lines = to_record(work.item, work.image, work.instances, run.settings, proposals=work.proposals)
        write_files(record, work.item, work.image, lines, Path(run.out), run.settings)
        add_seconds(seconds, "write", since=t)
        return replace(work, record=record)

    # the driver needs the record only: the pixels and masks stay here
    return _map(
        batch, lambda w: replace(_step(w, write, stage="write", run=run), image=None, instances=None, proposals=None)
    )


# ---- on the driver -------------------------------------------------------------------------------------------


def _collect(ds, todo: Sequence[ImageItem], job: Job) -> EngineResult:
    """Journal each image's record as its row arrives (once per ``rel``); the images left unfinished."""
    bar = progress_bar(len(todo), f"{job.command} (ray)", progress=job.progress)
    done: set[str] = set()
    failed: dict[str, str] = {}
    try:
        with job.journal.appender() as append:
            for row in ds.iter_rows():
                work = _loads(row["work"])
                if work.fatal is not None:
                    raise SamlabelError(work.fatal)
                job.seconds.update(work.seconds)
                rel = work.item.rel
                if work.record is None:
                    failed[rel] = work.error or LOST
                    LOGGER.warning("%s: not finished (%s); the next run retries it", work.item.path, failed[rel])
                    continue
                if rel in done:
                    continue  # a row delivered twice would still be journaled once
                if work.record.status == "skipped":
                    LOGGER.warning("skipped %s", work.record.reason)
                append(work.record)
                job.saved += 1
                done.add(rel)
                bar.update()
    except KeyboardInterrupt:
        LOGGER.error("interrupted: %d images are saved; run the same command again to resume", len(done))
        raise
    finally:
        bar.close()
    unfinished = [{"source": str(it.path), "reason": failed.get(it.rel, LOST)} for it in todo if it.rel not in done]
    return EngineResult(saved=len(done), unfinished=unfinished)
