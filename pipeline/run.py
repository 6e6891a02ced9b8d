"""Compose the stages over a stream of images: read -> detect -> segment -> write, resumably.

Each finished image is appended to ``DIR/.samlabel/journal.jsonl`` (one JSON line, flushed and
synced) after its image and label file are in place. A run started again on the same DIR with the
same inputs and settings skips what the journal lists; data.yaml, the COCO files and report.json
are rebuilt from the journal at the end, so an interrupted and resumed run ends equal to a clean one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import itertools
import json
import logging
import os
import shutil
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from tqdm import tqdm

from pipeline import fsio
from pipeline.config import Settings
from pipeline.errors import ImageReadError, SamlabelError
from pipeline.images import MIN_SIDE, export_image, load_image
from pipeline.masks import mask_to_polygons, merge_polygons
from pipeline.sources import SPLITS
from pipeline.types import ImageItem, Instances
from pipeline.writers.coco import to_coco_annotation, write_coco
from pipeline.writers.yolo_seg import to_yolo_line, write_label_file

LOGGER = logging.getLogger(__name__)

STATE_DIR = ".samlabel"
FORMAT_VERSION = 1
#: Instances whose SAM score (predicted IoU) is below this are listed in report.json for review.
REVIEW_SCORE = 0.5

Detect = Callable[[np.ndarray], Instances]
Segment = Callable[[np.ndarray, Instances], Instances]


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
) -> RunResult:
    """Process every item into the dataset at ``out`` and write data.yaml, COCO files and report.json.

    Args:
        items: images with their output name and split (and known instances, for ``convert``).
        out: dataset folder; created if missing.
        names: class names in class-id order.
        settings: run settings (formats, COCO encoding, simplification).
        segmenter: fills missing masks; may be ``None`` when every instance already has one.
        detector: finds instances in images whose item carries none (``label``).
        command: the command name, recorded in the state and report.
        overwrite: start afresh even if ``out`` holds another run's dataset.
        progress: show a progress bar.
        fingerprint_extra: more inputs that must match for a resume (e.g. the source dataset).
        prelude: findings from before the run (e.g. source problems) merged into the report.

    Raises:
        SamlabelError: ``out`` cannot be written, or holds a different run and ``overwrite`` is False.
    """
    out = Path(out)
    check_writable(out)
    ours = (out / STATE_DIR / "state.json").is_file()
    if not ours and any(p.name != STATE_DIR for p in out.iterdir()) and not overwrite:
        raise SamlabelError(
            f"{out} is not empty and was not written by samlabel; choose a new --out or pass --overwrite"
        )
    (out / STATE_DIR).mkdir(exist_ok=True)
    journal_path = out / STATE_DIR / "journal.jsonl"
    with _locked(out / STATE_DIR / "lock"):  # before anything is checked or cleared: two runs never interleave
        state = _prepare_out(out, command, settings, names, items, overwrite, fingerprint_extra)
        _drop_torn_tail(journal_path)
        done = {r["rel"] for r in _read_journal(journal_path)}
        todo = [it for it in items if it.rel not in done]
        if done:
            LOGGER.info("resuming %s: %d of %d images already done", out, len(items) - len(todo), len(items))
        started = time.perf_counter()
        stage_seconds: Counter = Counter()
        with open(journal_path, "a", encoding="utf-8") as journal:
            bar = tqdm(
                total=len(todo),
                unit="img",
                desc=command,
                disable=not progress,
                dynamic_ncols=True,
                # always images/s (tqdm would switch to s/img below one image per second)
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_noinv_fmt}]",
            )

            saved = [0]  # images whose journal line is written (the bar does not count when disabled)

            def finish(item: ImageItem, loaded) -> None:  # writer thread: files, then the journal line
                record = _finish(item, loaded, out, names, settings, stage_seconds)
                journal.write(json.dumps(record, ensure_ascii=False) + "\n")
                journal.flush()
                os.fsync(journal.fileno())
                saved[0] += 1
                bar.update()

            try:
                with _Stages(prefetch=PREFETCH) as stages:
                    for item, loaded in stages.read(todo, lambda it: _read(it, stage_seconds)):
                        if not isinstance(loaded, dict):  # a dict is the record of a skipped image
                            loaded = _infer(item, loaded, detector, segmenter, stage_seconds)
                        stages.write(finish, item, loaded)
            except KeyboardInterrupt:
                LOGGER.error("interrupted: %d images are saved; run the same command again to resume", saved[0])
                raise
            except OSError as e:
                raise SamlabelError(
                    f"writing to {out} failed ({e}); finished images are saved, free space or fix the "
                    "folder and run the same command again to resume"
                ) from e
            finally:
                bar.close()
        elapsed = time.perf_counter() - started
        timings = {
            "this_run_seconds": round(elapsed, 3),
            "images_this_run": len(todo),
            "images_per_second": round(len(todo) / elapsed, 3) if elapsed > 0 and todo else None,
            "stage_seconds": {k: round(v, 3) for k, v in sorted(stage_seconds.items())},
        }
        report = _finalize(out, names, settings, state, {it.rel for it in items}, timings, prelude or {})
    _log_summary(out, report)
    return RunResult(out=out, report=report)


#: Images read ahead of the model, and finished images waiting for their files: bounds the memory a run holds
#: (at most the image in the model, ``PREFETCH`` being read and ``PREFETCH`` + 1 being written).
PREFETCH = 1


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


def _read(item: ImageItem, seconds: Counter):
    """The decoded image, or the journal record of an image that cannot be read."""
    t = time.perf_counter()
    try:
        image = load_image(item.path)
    except ImageReadError as e:
        LOGGER.warning("skipped %s", e)
        return {**_record(item), "status": "skipped", "reason": str(e)}
    seconds["read"] += time.perf_counter() - t
    if min(image.hw) < MIN_SIDE:
        reason = f"{item.path}: {image.hw[1]}x{image.hw[0]} pixels; Ultralytics drops images under {MIN_SIDE} px a side"
        LOGGER.warning("skipped %s", reason)
        return {**_record(item), "status": "skipped", "reason": reason}
    return image


def _record(item: ImageItem) -> dict:
    """The fields every journal record of ``item`` starts with."""
    return {"rel": item.rel, "name": item.name, "split": item.split, "source": str(item.path)}


def _infer(item: ImageItem, image, detector, segmenter, seconds: Counter):
    """Detect (unless the item carries its instances) and segment what has no mask: (image, instances)."""
    instances = item.instances(image.hw) if callable(item.instances) else item.instances
    if instances is None:
        t = time.perf_counter()
        instances = detector(image.rgb)
        seconds["detect"] += time.perf_counter() - t
    if any(m is None for m in instances.masks):
        t = time.perf_counter()
        if segmenter is None:
            raise SamlabelError("instances need masks but no segmenter was given")
        instances = segmenter(image.rgb, instances)
        seconds["segment"] += time.perf_counter() - t
    return image, instances


def _finish(item, loaded, out, names, settings, seconds) -> dict:
    """Write one image's files (image, label file) and return its journal record."""
    if isinstance(loaded, dict):
        return loaded
    image, instances = loaded
    record = _record(item)
    t = time.perf_counter()
    hw = image.hw
    lines, annotations, dropped = [], [], []
    for i in range(len(instances)):
        mask = instances.masks[i]
        parts = mask_to_polygons(mask, tolerance=settings.simplify) if mask is not None else []
        if not parts:
            dropped.append(_describe(instances, i, names, "empty mask"))
            continue
        lines.append(to_yolo_line(int(instances.class_id[i]), merge_polygons(parts), hw))
        ann = to_coco_annotation(
            class_id=int(instances.class_id[i]),
            mask=mask,
            polygons=parts,
            hw=hw,
            encoding=settings.coco_masks,
            det_xyxy=instances.xyxy[i].tolist(),
            confidence=float(instances.confidence[i]),
            mask_score=float(instances.mask_score[i]),
        )
        ann["source_id"] = int(instances.source_id[i])
        annotations.append(ann)
    declared = getattr(item.instances, "declared_hw", None)
    if declared is not None and tuple(declared) != tuple(hw):
        record["source_problems"] = [_size_mismatch(item, declared, hw)]
    split_dir = out / item.split
    export_image(item.path, image, split_dir / "images" / item.name, link=settings.link)
    if "yolo" in settings.formats:
        write_label_file(split_dir / "labels" / (Path(item.name).stem + ".txt"), lines)
    seconds["write"] += time.perf_counter() - t
    return {
        **record,
        "status": "ok",
        "height": hw[0],
        "width": hw[1],
        "rotated": image.rotated,
        "annotations": annotations,
        "dropped": dropped,
    }


def _size_mismatch(item: ImageItem, declared: tuple[int, int], hw: tuple[int, int]) -> dict:
    """The source-problem record of labels made for another image size than the file's (after EXIF rotation)."""
    return {
        "where": str(item.path),
        "problem": f"labels are for a {declared[1]}x{declared[0]} image, the file is {hw[1]}x{hw[0]} "
        "(width x height, upright)",
        "action": "coordinates scaled to the file's size; masks made for the other size redone by SAM from their box",
    }


def _describe(instances: Instances, i: int, names: Sequence[str], reason: str) -> dict:
    c = int(instances.class_id[i])
    out = {"class": names[c] if 0 <= c < len(names) else c, "source_id": int(instances.source_id[i])}
    out["box_xyxy"] = [round(float(v), 2) for v in instances.xyxy[i]]
    for key in ("confidence", "mask_score"):
        value = float(getattr(instances, key)[i])
        if not np.isnan(value):
            out[key] = round(value, 6)
    out["reason"] = reason
    return out


def _fingerprint(command, settings, names, items, extra) -> str:
    relevant = {k: v for k, v in dataclasses.asdict(settings).items() if k not in ("device", "sam_batch", "runtime")}
    payload = {
        "version": FORMAT_VERSION,
        "command": command,
        "settings": relevant,
        "names": list(names),
        "items": [[it.rel, it.name, it.split, _size(it.path)] for it in items],
        "extra": extra or {},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


def check_writable(out: str | Path) -> None:
    """Create ``out`` if needed and prove it can be written, before any slow work starts.

    Raises:
        SamlabelError: it cannot be created or written.
    """
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".samlabel-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise SamlabelError(f"output folder {out} cannot be written ({e}); choose another --out") from None


def _prepare_out(out, command, settings, names, items, overwrite, extra) -> dict:
    fingerprint = _fingerprint(command, settings, names, items, extra)
    state_path = out / STATE_DIR / "state.json"
    if state_path.is_file():
        state = json.loads(state_path.read_text(encoding="utf-8"))
        if state.get("fingerprint") == fingerprint and not overwrite:
            return state
        if not overwrite:
            raise SamlabelError(
                f"{out} holds a dataset from a run with other inputs or settings; refusing to mix two runs. "
                "Choose a new --out, or pass --overwrite to replace it"
            )
    if overwrite:
        _clear(out)
    state = {
        "version": FORMAT_VERSION,
        "command": command,
        "fingerprint": fingerprint,
        "settings": dataclasses.asdict(settings),
        "names": list(names),
    }
    (out / STATE_DIR).mkdir(parents=True, exist_ok=True)
    fsio.write_text(state_path, json.dumps(state, indent=2, default=str) + "\n")
    return state


def _clear(out: Path) -> None:
    """Remove what a previous run wrote (only samlabel's own layout, nothing else)."""
    state = out / STATE_DIR
    keep = ("source", "lock")  # extracted inputs, and the lock this run holds
    doomed = [p for p in state.iterdir() if p.name not in keep] if state.is_dir() else []
    for p in [*doomed, *(out / name for name in (*SPLITS, "data.yaml", "report.json"))]:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SamlabelError(
                f"another samlabel run is writing to {path.parent.parent}; wait for it to end"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line left half-written by a killed run, so new records start on a line of their own."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        data = f.read()
        if not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def _read_journal(path: Path) -> Iterator[dict]:
    """Complete records of the journal; a torn last line (killed mid-write) is ignored."""
    if not path.is_file():
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def _journal_index(path: Path, wanted: set[str]) -> dict[str, tuple[int, dict]]:
    """rel -> (byte offset, small summary) of the newest record of each wanted image."""
    index: dict[str, tuple[int, dict]] = {}
    with open(path, "rb") as f:
        offset = 0
        for raw in f:
            if not raw.endswith(b"\n"):
                break
            try:
                rec = json.loads(raw)
            except json.JSONDecodeError:
                offset += len(raw)
                continue
            if rec["rel"] in wanted:
                summary = {k: rec.get(k) for k in ("name", "split", "status", "reason", "source")}
                anns = rec.get("annotations", [])
                summary["classes"] = [a["category_id"] - 1 for a in anns]
                summary["review"] = [
                    {"class_id": a["category_id"] - 1, "source_id": a.get("source_id"), "mask_score": a["mask_score"]}
                    for a in anns
                    if a.get("mask_score", 1.0) < REVIEW_SCORE
                ]
                summary["dropped"] = rec.get("dropped", [])
                summary["source_problems"] = rec.get("source_problems", [])
                index[rec["rel"]] = (offset, summary)
            offset += len(raw)
    return index


def _finalize(out, names, settings, state, wanted, timings, prelude) -> dict:
    journal_path = out / STATE_DIR / "journal.jsonl"
    index = _journal_index(journal_path, wanted)
    by_split: dict[str, list[tuple[str, int]]] = defaultdict(list)
    skipped, dropped, review, found_late = [], [], [], []
    per_class: dict[str, Counter] = defaultdict(Counter)
    for _rel, (offset, s) in sorted(index.items()):
        if s["status"] != "ok":
            skipped.append({"source": s["source"], "reason": s["reason"]})
            continue
        by_split[s["split"]].append((s["name"], offset))
        per_class[s["split"]].update(names[c] for c in s["classes"])
        image = f"{s['split']}/images/{s['name']}"
        dropped += [{"image": image, **d} for d in s["dropped"]]
        found_late += s.get("source_problems", [])
        review += [{"image": image, "class": names[r.pop("class_id")], **r} for r in s["review"]]
    splits = [s for s in SPLITS if by_split.get(s)]
    data_yaml = _data_yaml(names, splits)
    if splits:
        fsio.write_text(out / "data.yaml", yaml.safe_dump(data_yaml, sort_keys=False, allow_unicode=True))
    if "coco" in settings.formats:
        for split in splits:
            entries = sorted(by_split[split])
            write_coco(
                out / split / "_annotations.coco.json",
                names=names,
                images=_coco_images(journal_path, entries),
            )
    report = {
        "command": state["command"],
        "names": list(names),
        "settings": state["settings"],
        "images": {s: len(by_split[s]) for s in splits},
        "instances": {s: {n: per_class[s][n] for n in names if per_class[s][n]} for s in splits},
        "instances_total": sum(sum(c.values()) for c in per_class.values()),
        "skipped_images": skipped,
        "dropped_instances": dropped,
        "low_score_instances": {"below_mask_score": REVIEW_SCORE, "instances": review},
        **prelude,
        "timings": timings,
    }
    if found_late:  # what only the image files showed (sizes), after what reading the source showed
        report["source_problems"] = list(prelude.get("source_problems", [])) + found_late
    missing = [k for k in ("train", "val") if _YAML_SPLITS[k] not in splits]
    if splits and missing:
        report["data_yaml_note"] = (
            f"no {' or '.join(missing)} images: data.yaml points {' and '.join(missing)} at "
            f"{data_yaml[missing[0]].split('/')[0]} (Ultralytics needs both train and val)"
        )
        LOGGER.warning("%s", report["data_yaml_note"])
    text = json.dumps(report, indent=2, ensure_ascii=False, default=str)
    fsio.write_text(out / "report.json", text + "\n")
    if not splits:
        raise SamlabelError(
            f"no image could be written to {out}: all {len(skipped)} were skipped (reasons in {out / 'report.json'})"
        )
    return json.loads(text)


_YAML_SPLITS = {"train": "train", "val": "valid", "test": "test"}  # data.yaml key -> split folder


def _data_yaml(names: Sequence[str], splits: list[str]) -> dict:
    """data.yaml for the splits that have images. Ultralytics needs both ``train`` and ``val``: a missing one
    points at the other split (as Roboflow does), so a dataset that is all train still trains and validates.

    There is no ``path`` key: Ultralytics then resolves the split folders against data.yaml's own folder.
    """
    data = {"nc": len(names), "names": list(names)}
    if not splits:
        return data
    folders = {key: f"{split}/images" for key, split in _YAML_SPLITS.items() if split in splits}
    data["train"] = folders.get("train") or folders.get("val") or folders["test"]
    data["val"] = folders.get("val") or folders.get("train") or folders["test"]
    if "test" in folders:
        data["test"] = folders["test"]
    return data


def _coco_images(journal_path: Path, entries: list[tuple[str, int]]) -> Iterator[tuple[dict, list[dict]]]:
    with open(journal_path, "rb") as f:
        for name, offset in entries:
            f.seek(offset)
            rec = json.loads(f.readline())
            image = {
                "file_name": name,
                "height": rec["height"],
                "width": rec["width"],
                "source": rec["source"],
            }
            yield image, rec["annotations"]


def _log_summary(out: Path, report: dict) -> None:
    t = report["timings"]
    LOGGER.info(
        "%s: %s images, %d instances; %d images skipped, %d instances without a usable mask (see report.json)%s",
        out,
        dict(report["images"]),
        report["instances_total"],
        len(report["skipped_images"]),
        len(report["dropped_instances"]),
        f"; {t['images_per_second']} images/s" if t["images_per_second"] else "",
    )
