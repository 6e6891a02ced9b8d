"""The dataset side of ``samlabel review``: the queue, one image's instances, and saving an edit durably.

The journal (``.samlabel/journal.jsonl``, :mod:`pipeline.run.state`) stays the truth: the newest record
of an image is what its files hold. Saving an image is, in this order:

1. ``.samlabel/review-pending.json`` names the image (written, synced, renamed into place);
2. the image's new ``ImageRecord`` is appended to the journal (written, flushed, synced): **the commit point**;
3. its YOLO label file, the COCO file of its split and report.json are rewritten (each to a temporary
   file, then renamed);
4. the pending file is removed.

A kill before step 2 loses the edit; after it, the edit is kept: opening the store again re-applies the
newest record of a pending image (step 3, whichever record that is), so the files never lag behind the
journal. report.html (thumbnails, slow) is rebuilt when the server stops, and at the next stop after a
kill (``.samlabel/review-report-stale``).

Every command that opens a dataset (``label`` / ``convert`` resuming it, ``report``, ``review``) first
completes a save a kill interrupted (:func:`complete_pending_save`); ``validate`` reports one.

The journal gets an image's whole record again at each save; once the records later saves replaced take
more bytes than the newest ones (and more than ``COMPACT_MIN_BYTES``), it is compacted to the newest
record of each image (:meth:`pipeline.run.state.Journal.compact`). So after every save the journal is at
most ``live + max(live, COMPACT_MIN_BYTES)`` bytes, ``live`` being the size of the newest records, and
opening the dataset reads no more than that.

Stopping: :meth:`ReviewStore.stop_saving` refuses new saves and waits for the one in progress to commit;
the server calls it before it stops answering, and the run lock is released only after it.

Versions: an image's version is the number of journal records it has had (compaction keeps the count). A save names the version it
edited and is refused (:class:`VersionConflict`) if the image has changed since, so two tabs never
overwrite each other silently. Images are known by an opaque id (a hash of their ``rel``), never by a path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import fsio, safepath
from pipeline.config import Settings, field_names
from pipeline.errors import SamlabelError
from pipeline.formats import coco, layout, yolo
from pipeline.formats.data_yaml import SPLITS
from pipeline.masks import CropMask, RleError, checked_rle_to_mask, mask_to_rle
from pipeline.quality import FLAGS, WRITTEN_SIGNALS
from pipeline.run import report as run_report
from pipeline.run import state as run_state
from pipeline.run.outputs import coco_annotations, instance_files
from pipeline.run.state import STATE_DIR, Journal
from pipeline.types import ImageRecord, Instances, stack_instances

LOGGER = logging.getLogger(__name__)

PENDING = "review-pending.json"

#: The journal is compacted only once the records that later saves replaced exceed this many bytes too.
COMPACT_MIN_BYTES = 1 << 20
REPORT_STALE = "review-report-stale"

#: What an edited instance's ``source`` extra (and its COCO annotation's ``source``) says.
EDITED = "review"

#: ... and an instance made from a proposal accepted in review (``--propose``).
PROPOSAL = "proposal"

#: Why an instance deleted in review is listed under ``dropped_instances``.
DELETED = "deleted in review"

#: Most instances an image may have after a save (more is refused, 400): bounds the time a save takes.
MAX_INSTANCES = 1000


class ReviewError(SamlabelError, ValueError):
    """An edit that cannot be applied as sent (the API answers 400 with this message)."""


class ImageNotFound(ReviewError, KeyError):
    """No image has this id (the API answers 404)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class StoreStopping(SamlabelError):
    """The server is stopping: the save was not made (the API answers 503)."""


class VersionConflict(ReviewError):
    """The image changed since the version the edit was made on (the API answers 409)."""

    def __init__(self, sent: int, current: int) -> None:
        super().__init__(
            f"version {sent} is not the image's current version {current}: it was saved elsewhere since "
            "(another tab or script); reload it and redo the edit"
        )
        self.current = current


@dataclass(frozen=True)
class InstanceEdit:
    """One instance of an image as a save sends it.

    Attributes:
        id: the instance's id (``source_id``) when it is one the image has; None for a new instance.
        class_name: its class, one of the dataset's names.
        rle: its mask, COCO compressed RLE of the whole image (``{"size": [H, W], "counts": str}``).
        box: its prompt box (x_min, y_min, x_max, y_max) in pixels; None keeps the instance's box
            (a new instance gets its mask's tight box).
        proposal: for a new instance, the id of the image's proposal it accepts (``--propose``); None otherwise.
    """

    id: int | None
    class_name: str
    rle: dict
    box: Sequence[float] | None = None
    proposal: int | None = None


@dataclass
class _Entry:
    """An image in the index: the newest record (without masks) and where it is in the journal."""

    id: str
    offset: int
    version: int
    record: ImageRecord  # light: no masks, no segmentations
    size: int = 0  # bytes of its journal line
    summary: dict = dataclasses.field(default_factory=dict)  # its queue entry (ReviewStore._summary)


def image_id(rel: str) -> str:
    """The opaque, stable id of an image: 12 hex digits of the SHA-256 of its ``rel``."""
    return hashlib.sha256(rel.encode("utf-8")).hexdigest()[:12]


class ReviewStore:
    """A finished samlabel dataset opened for review; the caller holds the run lock (``run.state.locked``).

    Opening reads the journal once (newest record of each image, without masks), cuts a torn last line,
    and re-applies a save that a kill interrupted. All methods are thread-safe.

    Raises:
        SamlabelError: not a samlabel dataset, or a run that has not finished (its COCO files and
            report.json are written at the end).
    """

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        state_path = self.out / STATE_DIR / "state.json"
        if not state_path.is_file():
            raise SamlabelError(f"{self.out} is not a dataset written by samlabel (no {STATE_DIR}/state.json)")
        self.state = json.loads(state_path.read_text(encoding="utf-8"))
        known = set(field_names())
        self.settings = Settings(**{k: v for k, v in self.state["settings"].items() if k in known})
        self.names: list[str] = list(self.state["names"])
        self.paths = layout.get(self.settings.layout)  # where the dataset's files lie (roboflow or coco layout)
        self.journal = Journal(self.out)
        self._lock = threading.RLock()
        self._entries: dict[str, _Entry] = {}
        self._by_rel: dict[str, str] = {}
        self._coco_texts: dict[str, dict[str, tuple[str, list[str]]]] = {}  # split -> rel -> JSON texts
        self._skipped: dict[str, tuple[int, ImageRecord]] = {}  # images the run could not read
        self._skipped_lines: dict[str, tuple[int, int]] = {}  # rel -> (line length, versions) of those
        self._counts: Counter = Counter()  # the counts of /api/meta, kept up to date at each commit
        self._stopping = False
        self._in_flight = 0  # saves between their first look and their commit (decoding outside the lock)
        self._idle = threading.Condition(self._lock)
        self.journal.drop_torn_tail()
        self._drop_temp_files()
        self._load()
        self._check_finished()
        self._recover()

    # ------------------------------------------------------------------------------------- reading

    def _load(self) -> None:
        versions: dict[str, int] = defaultdict(int)
        newest: dict[str, tuple[int, int, ImageRecord]] = {}
        for line in self.journal.lines():
            versions[line.record.rel] += line.versions
            newest[line.record.rel] = (line.offset, line.size, run_report.light(line.record))
        for rel, (offset, size, record) in sorted(newest.items()):
            if record.status != "ok":
                self._skipped[rel] = (offset, record)  # not reviewable, still counted in report.json
                self._skipped_lines[rel] = (size, versions[rel])
                continue
            iid = image_id(rel)
            if iid in self._entries:
                raise SamlabelError(f"{self.out}: images {rel!r} and {self._entries[iid].record.rel!r} share id {iid}")
            self._entries[iid] = entry = _Entry(iid, offset, versions[rel], record, size)
            self._by_rel[rel] = iid
            self._count(entry, +1)

    def _drop_temp_files(self) -> None:
        run_state.drop_temp_files(self.out, self.paths)

    def _check_finished(self) -> None:
        try:
            report = json.loads((self.out / "report.json").read_text(encoding="utf-8"))
            listed = sum(report["images"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            listed = None
        if listed != len(self._entries):
            raise SamlabelError(
                f"{self.out}: the run that writes this dataset has not finished (report.json lists "
                f"{listed} images, the journal {len(self._entries)}); run the same samlabel command again "
                "to finish it, then review"
            )

    def _entry(self, iid: str) -> _Entry:
        entry = self._entries.get(iid) if isinstance(iid, str) else None
        if entry is None:
            raise ImageNotFound(f"no image with id {iid!r}")
        return entry

    def _full(self, entry: _Entry) -> ImageRecord:
        with open(self.journal.path, "rb") as f:
            return self.journal.read_at(f, entry.offset)

    def record(self, iid: str) -> ImageRecord:
        """The image's newest record, masks included."""
        with self._lock:
            return self._full(self._entry(iid))

    def image_path(self, iid: str) -> Path:
        """The image file in the dataset (``<split>/images/<name>`` in the Roboflow layout).

        Raises:
            ReviewError: its folder leads outside the dataset (a symlink), or the file (which may be a link, as
                ``--link`` makes them) is not an image PIL can identify from its header; it is not served.
        """
        record = self._entry(iid).record
        try:
            path = safepath.inside(self.out, self.paths.image(record.split, record.name), what="image")
        except safepath.UnsafePathError as e:
            raise ReviewError(str(e)) from None
        if not _is_image_file(path):  # an image file may be a link (--link): what it leads to must be an image
            raise ReviewError(f"image {record.name!r}: {path} is not an image file; it is not served")
        return path

    def hw(self, iid: str) -> tuple[int, int]:
        return self._entry(iid).record.hw

    def version(self, iid: str) -> int:
        return self._entry(iid).version

    def reviewed(self, iid: str) -> bool:
        return self._entry(iid).record.reviewed

    def images(
        self,
        *,
        flag: str | None = None,
        class_name: str | None = None,
        split: str | None = None,
        reviewed: bool | None = None,
        sort: str = "queue",
    ) -> list[dict]:
        """The queue: unreviewed before reviewed, flagged before unflagged, then split and file name; with
        ``sort="proposals"``, the images with the most proposals first (then that order).

        Each entry: ``{"id", "file_name", "split", "instances", "flags", "flagged", "classes", "reviewed",
        "proposals"}`` (``flags``: the flags its instances carry, in ``pipeline.quality.FLAGS`` order;
        ``flagged``: how many instances carry one; ``proposals``: how many proposals wait). The filters keep
        images with an instance of that flag / class, of that split, reviewed or not.
        """
        if sort not in SORTS:
            raise ReviewError(f"sort: expected one of {list(SORTS)}, got {sort!r}")
        with self._lock:
            rows = [dict(e.summary) for e in self._entries.values()]
        rows = [
            r
            for r in rows
            if (flag is None or flag in r["flags"])
            and (class_name is None or class_name in r["classes"])
            and (split is None or r["split"] == split)
            and (reviewed is None or r["reviewed"] == reviewed)
        ]
        order = {s: i for i, s in enumerate(SPLITS)}
        rows.sort(key=lambda r: (r["reviewed"], r["flagged"] == 0, order.get(r["split"], 9), r["file_name"]))
        if sort == "proposals":
            rows.sort(key=lambda r: -r["proposals"])  # stable: ties keep the queue's order
        return rows

    def _summary(self, e: _Entry) -> dict:
        inst = e.record.instances
        flags = inst.extras.get("flags", [[]] * len(inst))
        present = {f for fl in flags for f in fl}
        return {
            "id": e.id,
            "file_name": e.record.name,
            "split": e.record.split,
            "instances": len(inst),
            "flags": [f for f in FLAGS if f in present],
            "flagged": sum(1 for fl in flags if fl),
            "classes": sorted({self.names[int(c)] for c in inst.class_id}),
            "reviewed": e.record.reviewed,
            "proposals": len(e.record.proposals),
        }

    def _count(self, entry: _Entry, sign: int) -> None:
        """Add (+1) or take away (-1) an image's part of the running counts; adding summarises it anew."""
        if sign > 0:
            entry.summary = self._summary(entry)
        r = entry.summary
        keys = [("images",), ("split", r["split"]), *[("class", c) for c in r["classes"]]]
        keys += [("flag", f) for f in r["flags"]]
        keys += [("reviewed",)] * r["reviewed"] + [("flagged",)] * (r["flagged"] > 0)
        keys += [("proposals",)] * r["proposals"] + [("proposal_images",)] * (r["proposals"] > 0)
        for key in keys:
            self._counts[key] += sign

    def counts(self) -> dict:
        """``{"images", "reviewed", "flagged_images", "flags": {flag: images}, "classes": {name: images},
        "splits": {split: images}, "proposals", "proposal_images"}`` over the whole dataset (kept as saves
        commit: no image is summarised here)."""
        with self._lock:
            n = self._counts
            return {
                "images": n[("images",)],
                "reviewed": n[("reviewed",)],
                "flagged_images": n[("flagged",)],
                "flags": {f: n["flag", f] for f in FLAGS if n["flag", f]},
                "classes": {c: n["class", c] for c in self.names},
                "splits": {s: n["split", s] for s in SPLITS if n["split", s]},
                "proposals": n[("proposals",)],
                "proposal_images": n[("proposal_images",)],
            }

    def image(self, iid: str) -> dict:
        """One image for the API: size, version, reviewed, and every instance with its mask as full-image RLE.

        Instances: ``{"id", "class", "class_id", "rle", "bbox" (the mask's tight box, COCO xywh), "box"
        (the prompt box, xyxy), "mask_score", "confidence", "flags", "signals", "edited", "source"}``; scores
        that are not known are null. Proposals (``--propose``; no class yet): ``{"id", "rle", "bbox", "box",
        "mask_score", "signals"}``.
        """
        with self._lock:
            entry = self._entry(iid)
            record = self._full(entry)
        inst = record.instances
        out = []
        for i in range(len(inst)):
            mask = inst.masks[i]
            x0, y0, x1, y1 = mask.xyxy
            extras = {k: _plain(v[i]) for k, v in inst.extras.items()}
            out.append(
                {
                    "id": int(inst.source_id[i]),
                    "class": self.names[int(inst.class_id[i])],
                    "class_id": int(inst.class_id[i]),
                    "rle": mask_to_rle(mask, record.hw),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "box": [round(float(v), 3) for v in inst.xyxy[i]],
                    "mask_score": _plain(inst.mask_score[i]),
                    "confidence": _plain(inst.confidence[i]),
                    "flags": list(extras.get("flags") or []),
                    "signals": {k: extras[k] for k in WRITTEN_SIGNALS if extras.get(k) is not None},
                    "edited": extras.get("source") == EDITED,
                    "source": extras.get("source"),
                }
            )
        return {
            "id": iid,
            "file_name": record.name,
            "split": record.split,
            "width": record.hw[1],
            "height": record.hw[0],
            "version": entry.version,
            "reviewed": record.reviewed,
            "instances": out,
            "proposals": [_proposal_json(record, i) for i in range(len(record.proposals))],
        }

    def instance_mask(self, iid: str, instance: int) -> CropMask:
        """The saved mask of one instance of an image."""
        record = self.record(iid)
        hits = np.flatnonzero(record.instances.source_id == instance)
        if not hits.size:
            raise ReviewError(f"instance {instance} is not an instance of image {iid}")
        return record.instances.masks[int(hits[0])]

    # ------------------------------------------------------------------------------------- saving

    def save(
        self,
        iid: str,
        *,
        version: int,
        reviewed: bool,
        instances: Sequence[InstanceEdit],
        known_mask: Callable[[str], tuple[float, float] | None] | None = None,
        proposals: Sequence[int] | None = None,
    ) -> int:
        """Replace the image's instances, proposals and reviewed mark with those given; returns the new version.

        ``proposals``: the ids of the image's proposals that stay (None: all stay). One left out is gone for
        good: dismissed, or accepted as the new instance that names it (``InstanceEdit.proposal``), which gets
        ``source: "proposal"`` (also on its COCO annotation) and the generator's score while its mask is the
        proposal's.

        An instance is *edited* when it is new or its class, mask or box changed: it gets ``source: "review"``,
        and a changed mask the score SAM gave it in this session (``known_mask(rle counts)`` -> ``(mask_score,
        stability_score)``) or none. Instances left out are deleted (kept in the record's ``dropped`` with
        the reason ``deleted in review``). Quality signals and flags are recomputed for the image, and no
        instance is dropped for its flags (a person has seen it).

        Raises:
            ImageNotFound: no such image.
            VersionConflict: ``version`` is not the image's current version.
            ReviewError: an instance that cannot be applied (unknown class or id, bad or empty mask, bad box),
                or more than ``MAX_INSTANCES`` instances.
            StoreStopping: the server is stopping (:meth:`stop_saving`); nothing was saved.
        """
        if len(instances) > MAX_INSTANCES:
            raise ReviewError(
                f"{len(instances)} instances sent: an image may have at most {MAX_INSTANCES}; "
                "leave out what is not an object"
            )
        with self._lock:
            if self._stopping:
                raise StoreStopping("the review server is stopping: this edit was not saved; save it again once "
                                    "samlabel review runs again")  # fmt: skip
            entry = self._entry(iid)
            if version != entry.version:
                raise VersionConflict(version, entry.version)
            old = self._full(entry)
            self._in_flight += 1  # stop_saving waits for this save, decoding included
        try:
            # decoding the masks and the quality signals take the time: outside the lock, so other requests go on
            record, lines = self._edited(
                old, instances, reviewed=bool(reviewed), known_mask=known_mask, proposals=proposals
            )
            with self._lock:
                if version != entry.version:  # another save committed meanwhile
                    raise VersionConflict(version, entry.version)
                if record.to_json() != old.to_json():  # saving what is there already changes nothing
                    self._commit(entry, record, lines)
                return entry.version
        finally:
            with self._lock:
                self._in_flight -= 1
                self._idle.notify_all()

    def _edited(
        self, old: ImageRecord, edits: Sequence[InstanceEdit], *, reviewed: bool, known_mask=None, proposals=None
    ) -> tuple[ImageRecord, list[str]]:
        """The record after the edit, and its YOLO label lines (through the run's step, ``instance_files``)."""
        known_mask = known_mask or (lambda _counts: None)
        hw, inst = old.hw, old.instances
        staying, accepted = _proposals_after(old.proposals, edits, proposals)
        at = {int(sid): i for i, sid in enumerate(inst.source_id)}
        next_id = max([*inst.source_id.tolist(), *old.dropped.source_id.tolist()], default=-1) + 1
        parts, seen = [], set()
        for k, e in enumerate(edits):
            where = f"instances[{k}]"
            if e.class_name not in self.names:
                raise ReviewError(f"{where}: class {e.class_name!r} is not one of the dataset's {self.names}")
            class_id = self.names.index(e.class_name)
            if e.proposal is not None and e.id is not None:
                raise ReviewError(
                    f"{where}: an accepted proposal (proposal {e.proposal}) is a new instance; leave id out"
                )
            if e.id is not None and e.id in seen:
                raise ReviewError(f"{where}: instance id {e.id} is given twice")
            if e.id is not None and e.id not in at:
                raise ReviewError(f"{where}: instance id {e.id} is not in this image; leave id out for a new instance")
            i = None if e.id is None else at[e.id]
            if i is not None:
                seen.add(e.id)
            mask, mask_changed = _mask_of(where, e.rle, hw, None if i is None else inst.masks[i])
            if mask.area == 0:
                raise ReviewError(f"{where}: the mask is empty; leave the instance out to delete it")
            box = _box_of(where, e.box, hw)
            if e.proposal is not None:  # a proposal accepted: its box and, while its mask is the same, its scores
                one, edited = _from_proposal(accepted[e.proposal], next_id, box or mask.xyxy), False
                mask_changed = accepted[e.proposal].masks[0] != mask  # refined in review: scored as any edit
                next_id += 1
            elif i is None:  # a new instance: no detector, no score (unless SAM drew it here)
                one, edited = Instances(xyxy=[box or mask.xyxy], class_id=[class_id], source_id=[next_id]), True
                next_id += 1
            else:
                one, edited = inst[[i]], False
            changes, extras = {"class_id": [class_id], "masks": (mask,)}, {}
            if box is not None and not np.allclose(box, one.xyxy[0], atol=1e-3):
                changes["xyxy"], edited = [box], True
            if i is not None and class_id != int(one.class_id[0]):
                changes["confidence"], edited = [np.nan], True  # the detector's confidence was for another class
            if mask_changed:
                score, stability = known_mask(e.rle["counts"]) or (None, None)
                changes["mask_score"] = [np.nan if score is None else score]
                extras["stability_score"], edited = np.array([stability], dtype=object), True
            if edited:
                extras["source"] = np.array([EDITED], dtype=object)
            if e.proposal is not None:  # where it came from, edited or not
                extras["source"] = np.array([PROPOSAL], dtype=object)
            parts.append(one.replace(**changes).with_extras(**extras))
        deleted = [i for i, sid in enumerate(inst.source_id.tolist()) if sid not in seen]
        files = instance_files(stack_instances(parts), hw, self.settings, drop_flags=())  # a person has seen them
        if files.dropped_at:
            raise ReviewError(f"instances[{files.dropped_at[0]}]: the mask has no outline (too small); draw it larger")
        record = dataclasses.replace(
            old,
            instances=files.instances,
            segmentations=files.segmentations,
            dropped=stack_instances([old.dropped, inst[deleted]]),
            dropped_reasons=(*old.dropped_reasons, *[DELETED] * len(deleted)),
            reviewed=reviewed,
            proposals=staying,
        )
        return record, files.lines

    def _lines(self, record: ImageRecord) -> list[str]:
        """The YOLO label lines of a record (``instance_files``, as the run wrote them)."""
        return instance_files(record.instances, record.hw, self.settings, drop_flags=()).lines

    def _commit(self, entry: _Entry, record: ImageRecord, lines: list[str]) -> None:
        pending = self.out / STATE_DIR / PENDING
        _write_synced(pending, json.dumps({"rel": record.rel}) + "\n")
        offset = self.journal.path.stat().st_size
        try:
            with self.journal.appender() as append:
                append(record)  # the commit point (all or nothing: a failed append leaves the journal as it was)
        except BaseException:
            pending.unlink(missing_ok=True)
            raise
        size = self.journal.path.stat().st_size - offset
        entry.offset, entry.version, entry.size = offset, entry.version + 1, size
        self._count(entry, -1)
        entry.record = run_report.light(record)
        self._count(entry, +1)
        self._apply(record, lines)
        self._compact_if_due()

    def _compact_if_due(self) -> None:
        """Compact the journal once the records later saves replaced outweigh the newest ones (module docstring)."""
        live = sum(e.size for e in self._entries.values()) + sum(size for size, _ in self._skipped_lines.values())
        dead = self.journal.path.stat().st_size - live
        if dead <= max(live, COMPACT_MIN_BYTES):
            return
        newest = {e.record.rel: (e.offset, e.version) for e in self._entries.values()}
        newest |= {rel: (offset, self._skipped_lines[rel][1]) for rel, (offset, _) in self._skipped.items()}
        placed = self.journal.compact(newest)
        for e in self._entries.values():
            e.offset, e.size = placed[e.record.rel]
        for rel, (_, record) in list(self._skipped.items()):
            offset, size = placed[rel]
            self._skipped[rel] = (offset, record)
            self._skipped_lines[rel] = (size, self._skipped_lines[rel][1])
        LOGGER.info("journal compacted: %d bytes of replaced records removed", dead)

    def _apply(self, record: ImageRecord, lines: list[str]) -> None:
        """Bring the image's label file, its split's COCO file and report.json in line with the journal."""
        if "yolo" in self.settings.formats:
            label = self.paths.label_file(record.split, record.name)
            yolo.write_label_file(safepath.inside(self.out, label, what="label file"), lines)
        newest = {**self._skipped, **{e.record.rel: (e.offset, e.record) for e in self._entries.values()}}
        tally = run_report.tally_records(newest, self.names, self.paths, self.settings.thresholds)
        if "coco" in self.settings.formats:
            self._write_coco(record)
        report_path = self.out / "report.json"
        report = json.loads(report_path.read_text(encoding="utf-8"))
        sections = run_report.report_sections(tally, names=self.names, settings=self.settings)
        del sections["skipped_images"]  # a review skips nothing: the run's list (with what it named) stays
        report.update(sections)
        fsio.write_text(report_path, json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n")
        (self.out / STATE_DIR / REPORT_STALE).touch()
        (self.out / STATE_DIR / PENDING).unlink(missing_ok=True)

    def _write_coco(self, record: ImageRecord) -> None:
        """Rewrite the COCO file of the record's split (what ``run.report.finalize`` writes, byte for byte).

        The JSON of each image of the split and of its annotations is kept once made (the first save in a
        split reads the split's records from the journal), so a save re-encodes one image, not the split:
        memory is about the size of the COCO files edited.
        """
        split = record.split
        texts = self._coco_texts.get(split)
        if texts is None:
            texts = self._coco_texts[split] = {}
            with open(self.journal.path, "rb") as f:
                for e in self._entries.values():
                    if e.record.split == split and e.record.rel != record.rel:
                        texts[e.record.rel] = _coco_texts(self.journal.read_at(f, e.offset))
        texts[record.rel] = _coco_texts(record)
        order = sorted(texts, key=lambda rel: self._entries[self._by_rel[rel]].record.name)
        path = safepath.inside(self.out, self.paths.coco_file(split), what="COCO file")
        coco.write_coco_texts(path, names=self.names, images=(texts[rel] for rel in order))

    def _recover(self) -> None:
        """Finish a save a kill interrupted: re-apply the newest record of the pending image."""
        pending = self.out / STATE_DIR / PENDING
        try:
            rel = json.loads(pending.read_text(encoding="utf-8"))["rel"]
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError):
            rel = None  # torn before its rename: the save had not reached the journal
        iid = self._by_rel.get(rel) if isinstance(rel, str) else None
        if iid is None:
            pending.unlink(missing_ok=True)
            return
        record = self._full(self._entries[iid])
        LOGGER.info("re-applying the last saved edit of %s (the server stopped during the save)", record.name)
        self._apply(record, self._lines(record))

    def stop_saving(self, timeout: float | None = None) -> bool:
        """Refuse saves from now on (:class:`StoreStopping`), and wait for the one in progress to commit.

        Args:
            timeout: seconds to wait at most; None waits as long as the save takes.

        Returns:
            True when no save is in progress any more.
        """
        with self._idle:
            self._stopping = True
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout=timeout)

    def close(self) -> None:
        """Stop saving (waiting for a save in progress to commit), then rebuild report.html if saves changed
        the dataset since it was written (slow: thumbnails)."""
        self.stop_saving()
        stale = self.out / STATE_DIR / REPORT_STALE
        if not stale.exists():
            return
        from pipeline.report import write_report_html

        try:
            write_report_html(self.out)
        except (OSError, ValueError, SamlabelError) as e:
            LOGGER.warning("report.html not rebuilt (%s); rebuild it with `samlabel report %s`", e, self.out)
            return
        stale.unlink(missing_ok=True)


def complete_pending_save(out: str | Path, *, lock: bool = True) -> bool:
    """Finish a review save that a kill interrupted after its journal append (its files may still hold the
    image's previous state): the one step every command that opens a dataset takes first.

    Args:
        out: the dataset folder.
        lock: take the run lock for it (without waiting: when another samlabel holds it, that one is the
            writer, and it completes the save). False: the caller holds the lock already.

    Returns:
        True when a pending save was completed here.
    """
    out = Path(out)
    if not (out / STATE_DIR / PENDING).exists():
        return False
    if not lock:
        ReviewStore(out)  # opening re-applies the newest record of the pending image
        return True
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(run_state.locked(out))
        except SamlabelError:  # busy: the samlabel that holds the dataset completes it
            LOGGER.info("%s: a review save is pending; the samlabel that holds the dataset completes it", out)
            return False
        ReviewStore(out)
    return True


def _coco_texts(record: ImageRecord) -> tuple[str, list[str]]:
    """A record's COCO image entry and annotations as JSON texts (``formats.coco.to_json_text``)."""
    image = coco.to_json_text(run_report.coco_image(record))
    return image, [coco.to_json_text(a) for a in coco_annotations(record)]


#: The orders of the queue (``ReviewStore.images``): the review order, or the most proposals first.
SORTS = ("queue", "proposals")


def _proposal_json(record: ImageRecord, i: int) -> dict:
    """One proposal of a (full) record for the API: its mask as full-image RLE, boxes, score and signals."""
    p = record.proposals
    mask = p.masks[i]
    assert mask is not None and record.hw is not None  # a full record's proposals have masks (ImageRecord)
    x0, y0, x1, y1 = mask.xyxy
    extras = {k: _plain(v[i]) for k, v in p.extras.items()}
    return {
        "id": int(p.source_id[i]),
        "rle": mask_to_rle(mask, record.hw),
        "bbox": [x0, y0, x1 - x0, y1 - y0],
        "box": [round(float(v), 3) for v in p.xyxy[i]],
        "mask_score": _plain(p.mask_score[i]),
        "signals": {k: v for k, v in extras.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
    }


def _proposals_after(
    proposals: Instances, edits: Sequence[InstanceEdit], staying: Sequence[int] | None
) -> tuple[Instances, dict[int, Instances]]:
    """The proposals that stay after a save, and those the edit accepts (by id).

    Raises:
        ReviewError: an id that is not one of the image's proposals, a proposal accepted twice, or one both
            accepted and kept.
    """
    ids = [int(v) for v in proposals.source_id]
    at = {sid: k for k, sid in enumerate(ids)}
    accepted: dict[int, Instances] = {}
    for k, e in enumerate(edits):
        if e.proposal is None:
            continue
        if e.proposal not in at:
            raise ReviewError(f"instances[{k}]: proposal {e.proposal} is not a proposal of this image")
        if e.proposal in accepted:
            raise ReviewError(f"instances[{k}]: proposal {e.proposal} is accepted twice")
        accepted[e.proposal] = proposals[[at[e.proposal]]]
    keep = set(ids) if staying is None else set()
    for sid in staying or ():
        if sid not in at:
            raise ReviewError(f"proposals: {sid!r} is not a proposal of this image")
        keep.add(sid)
    keep -= set(accepted) if staying is None else set()
    both = keep & set(accepted)
    if both:
        raise ReviewError(f"proposals: {min(both)} is accepted as an instance and kept as a proposal; keep it once")
    return proposals[np.array([k for k, sid in enumerate(ids) if sid in keep], dtype=np.int64)], accepted


def _from_proposal(proposal: Instances, source_id: int, box) -> Instances:
    """The new instance an accepted proposal becomes, with the generator's score and stability (a save replaces
    them when the mask sent is not the proposal's)."""
    extras = {"source": np.array([PROPOSAL], dtype=object)}
    for key in ("stability_score", "stability"):  # the generator's name for it (GeneratorStage), either
        if key in proposal.extras:
            extras["stability_score"] = np.array([_plain(proposal.extras[key][0])], dtype=object)
            break
    return Instances(xyxy=[box], class_id=[0], mask_score=proposal.mask_score, source_id=[source_id], extras=extras)


def _mask_of(where: str, rle: object, hw: tuple[int, int], stored: CropMask | None) -> tuple[CropMask, bool]:
    """The mask an edit sends, and whether it differs from the stored one (unchanged masks are not decoded)."""
    if stored is not None and isinstance(rle, dict) and rle == mask_to_rle(stored, hw):
        return stored, False
    try:
        mask = checked_rle_to_mask(rle, hw)
    except RleError as e:
        raise ReviewError(f"{where}: rle: {e}") from None
    return mask, stored is None or mask != stored


def _box_of(where: str, box: Sequence[float] | None, hw: tuple[int, int]) -> list[float] | None:
    if box is None:
        return None
    try:
        xyxy = [float(v) for v in box]
    except (TypeError, ValueError):
        xyxy = []
    h, w = hw
    if (
        len(xyxy) != 4
        or not all(math.isfinite(v) for v in xyxy)
        or not (xyxy[0] < xyxy[2] and xyxy[1] < xyxy[3])
        or min(xyxy) < -max(h, w)
        or max(xyxy) > 2 * max(h, w)
    ):
        raise ReviewError(f"{where}: box {box!r} is not [x_min, y_min, x_max, y_max] with x_min < x_max, y_min < y_max")
    return xyxy


def _plain(value):
    """A numpy value as JSON: NaN as None."""
    value = value.tolist() if hasattr(value, "tolist") else value
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _write_synced(path: Path, text: str) -> None:
    """Write ``path`` atomically and durably (synced file, then synced folder)."""
    with fsio.atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    with contextlib.suppress(OSError):  # not every file system syncs folders
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _is_image_file(path: Path) -> bool:
    """Whether ``path`` starts as an image of a kind samlabel writes (JPEG, PNG, BMP, TIFF, WebP) does.

    The first bytes only: not ``PIL.Image.open``, which Ultralytics patches to pip-install a HEIF plugin for
    a file it cannot identify.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return False
    return head.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"II*\x00", b"MM\x00*")) or (
        head[:4] == b"RIFF" and head[8:12] == b"WEBP"
    )
