"""A run's state in ``DIR/.samlabel/``: the lock, the fingerprint of inputs and settings, the journal.

The journal (``journal.jsonl``) holds one line per finished image, its ``ImageRecord`` as JSON,
appended (flushed and synced) after the image's files are in place. A run started again on the same
DIR with the same fingerprint skips what the journal lists.

An append is all or nothing: a write that fails (disk full) is cut back to where it started. A kill can
still leave a torn last line (no newline): it is ignored, and cut before the next append. Any other line
that is not a record is damage the journal refuses to read past (:class:`JournalDamaged`), because the
lines after it hold later saves. ``samlabel review`` appends an image's record again at each save and
compacts the journal (:meth:`Journal.compact`), so it stays within twice the size of its newest records.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from pipeline import fsio
from pipeline.config import Settings
from pipeline.errors import SamlabelError
from pipeline.formats import layout
from pipeline.formats.data_yaml import SPLITS
from pipeline.safepath import UnsafePathError
from pipeline.types import ImageItem, ImageRecord

STATE_DIR = layout.STATE_DIR
#: Version of the state and journal layout. 2: journal lines are ``ImageRecord`` JSON (1: COCO annotations).
FORMAT_VERSION = 2

#: Settings that change how a run goes, not what it writes: a resume may change them.
NOT_FINGERPRINTED: tuple[str, ...] = ("device", "sam_batch", "runtime", "cache_dir")
#: ... and where the run goes: a local run may be resumed on Ray and the other way round.
NOT_FINGERPRINTED += ("engine", "ray_address", "ray_actors", "ray_gpus_per_actor")
#: Settings added after datasets were written: at its default, one leaves the fingerprint as it was before it
#: existed, so those datasets still resume.
ADDED_SETTINGS: tuple[str, ...] = ("mode", "points_per_side", "pred_iou_thresh", "stability_thresh", "box_nms_thresh")
ADDED_SETTINGS += ("crop_layers", "min_region_area", "name")


def fingerprint(command: str, settings: Settings, names: Sequence[str], items: Sequence[ImageItem], extra) -> str:
    """A hash of everything that decides a dataset's content: two runs with the same one write the same files."""
    relevant = {k: v for k, v in settings.to_json().items() if k not in NOT_FINGERPRINTED}
    defaults = Settings().to_json()
    relevant = {k: v for k, v in relevant.items() if k not in ADDED_SETTINGS or v != defaults[k]}
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
    """Prove ``out`` can be written, before any slow work starts, without creating it.

    An existing folder is probed with a file; a missing one must have a writable nearest existing parent
    (``create_out`` makes it when the run starts, so a refused run leaves no empty folder behind).

    Raises:
        SamlabelError: it cannot be written, or created.
    """
    out = Path(out)
    if out.is_dir():
        try:
            probe = out / f".samlabel-write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise SamlabelError(f"output folder {out} cannot be written ({e}); choose another --out") from None
        return
    parent = next((p for p in out.absolute().parents if p.exists()), None)
    if out.exists() or parent is None or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        why = "it is not a folder" if out.exists() else f"{parent} is not a writable folder"
        raise SamlabelError(f"output folder {out} cannot be written ({why}); choose another --out")


def create_out(out: Path) -> None:
    """Make ``out`` (and its parents) where the run starts; ``check_writable`` first.

    Raises:
        SamlabelError: it cannot be written or created.
    """
    check_writable(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SamlabelError(f"output folder {out} cannot be written ({e}); choose another --out") from None
    check_writable(out)


def refuse_foreign(out: Path, overwrite: bool) -> None:
    """A folder that holds files not written by samlabel is only written into with ``overwrite``."""
    ours = (out / STATE_DIR / "state.json").is_file()
    if not ours and any(p.name != STATE_DIR for p in out.iterdir()) and not overwrite:
        raise SamlabelError(
            f"{out} is not empty and was not written by samlabel; choose a new --out or pass --overwrite"
        )


def prepare(
    out: Path, *, command: str, settings: Settings, fingerprint: str, names, overwrite: bool, discard_reviews=False
) -> dict:
    """The state of the run in ``out``: the existing one when the fingerprint matches (resume), else a new one.

    Raises:
        SamlabelError: ``out`` holds another run's dataset and ``overwrite`` is False, or ``overwrite`` would
            clear images checked in ``samlabel review`` and ``discard_reviews`` is False.
    """
    state_path = out / STATE_DIR / "state.json"
    if state_path.is_file():
        state = json.loads(state_path.read_text(encoding="utf-8"))
        if state.get("fingerprint") == fingerprint and not overwrite:
            return state
        if not overwrite:
            older = state.get("version") != FORMAT_VERSION
            raise SamlabelError(
                f"{out} holds a dataset from a run with other inputs or settings"
                + (" (written by another samlabel version)" if older else "")
                + "; refusing to mix two runs. Choose a new --out, or pass --overwrite to replace it"
            )
    if overwrite:
        refuse_discarding_reviews(out, discard_reviews)
        clear(out)
    state = {
        "version": FORMAT_VERSION,
        "command": command,
        "fingerprint": fingerprint,
        "settings": settings.to_json(),
        "names": list(names),
    }
    (out / STATE_DIR).mkdir(parents=True, exist_ok=True)
    fsio.write_text(state_path, json.dumps(state, indent=2, default=str) + "\n")
    return state


def reviewed_images(out: Path) -> int:
    """How many images of the dataset in ``out`` were checked in ``samlabel review`` (newest record of each)."""
    if _state_version(out) != FORMAT_VERSION:
        return 0  # journals of older versions hold other lines (and no reviews)
    newest = {rec.rel: rec.reviewed for _, rec in Journal(out).records()}
    return sum(newest.values())


def _state_version(out: Path):
    try:
        return json.loads((out / STATE_DIR / "state.json").read_text(encoding="utf-8")).get("version")
    except (OSError, ValueError, AttributeError):
        return None


def refuse_discarding_reviews(out: Path, discard_reviews: bool) -> None:
    """``--overwrite`` clears the journal: refused while it holds reviewed images, unless ``--discard-reviews``."""
    n = 0 if discard_reviews else reviewed_images(out)
    if n:
        raise SamlabelError(
            f"{out} holds {n} image(s) reviewed in `samlabel review`; --overwrite would discard those reviews. "
            "Pass --discard-reviews as well to replace them, or choose a new --out (a run without --overwrite "
            "resumes and keeps them)"
        )


def clear(out: Path) -> None:
    """Remove what a previous run wrote (only samlabel's own layout, nothing else)."""
    state = out / STATE_DIR
    keep = ("source", "lock")  # extracted inputs, and the lock this run holds
    doomed = [p for p in state.iterdir() if p.name not in keep] if state.is_dir() else []
    for p in [*doomed, *(out / name for name in layout.WRITTEN)]:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


@contextlib.contextmanager
def locked(out: Path) -> Iterator[None]:
    """Hold ``DIR/.samlabel/lock`` for the block; a second run on the same folder is refused, not interleaved."""
    (out / STATE_DIR).mkdir(exist_ok=True)
    with fsio.exclusive_lock(
        out / STATE_DIR / "lock", busy=f"another samlabel run is writing to {out}; wait for it to end"
    ):
        yield


def add_run(out: Path, timing: dict) -> None:
    """Append one finished run's share (``seconds``, ``images``, ``stage_seconds``) to ``DIR/.samlabel/runs.jsonl``.

    Written once, at the run's end (also when it was interrupted): a run killed before it adds nothing, so its
    time is lost but never counted twice; a torn last line is ignored by ``runs``.
    """
    with open(out / STATE_DIR / "runs.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(timing, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def runs(out: Path) -> list[dict]:
    """The shares ``add_run`` recorded, oldest first."""
    path = out / STATE_DIR / "runs.jsonl"
    if not path.is_file():
        return []
    found = []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        try:
            entry = json.loads(line) if line.endswith("\n") else None
        except json.JSONDecodeError:
            entry = None
        if isinstance(entry, dict) and {"seconds", "images", "stage_seconds"} <= set(entry):
            found.append(entry)
    return found


class JournalDamaged(SamlabelError):
    """A journal line other than a torn last one is not a record: the journal is not read past it."""


class JournalLine(NamedTuple):
    """One record of the journal: where its line starts, its length in bytes, the record, and how many
    versions of the image it stands for (1, plus the records of the image that a compaction removed)."""

    offset: int
    size: int
    record: ImageRecord
    versions: int


class Journal:
    """The append-only record of finished images (``DIR/.samlabel/journal.jsonl``)."""

    def __init__(self, out: Path) -> None:
        self.path = out / STATE_DIR / "journal.jsonl"

    def drop_torn_tail(self) -> None:
        """Cut a last line left half-written by a killed run, so new records start on a line of their own."""
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb+") as f:
            data = f.read()
            if not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)

    def done(self) -> set[str]:
        """``rel`` of every image with a complete record."""
        return {rec.rel for _, rec in self.records()}

    def records(self) -> Iterator[tuple[int, ImageRecord]]:
        """(byte offset, record) of each complete line, oldest first; a torn last line is ignored.

        Raises:
            JournalDamaged: a complete line is not a record.
        """
        for line in self.lines():
            yield line.offset, line.record

    def lines(self) -> Iterator[JournalLine]:
        """Each record with its place and weight, oldest first, read one line at a time; a torn last line
        (no newline: a kill during an append) is ignored.

        Raises:
            JournalDamaged: a complete line is not a record (the message names it and how to recover).
        """
        if not self.path.is_file():
            return
        with open(self.path, "rb") as f:
            offset = 0
            for number, raw in enumerate(f, 1):
                if not raw.endswith(b"\n"):
                    break
                try:
                    data = json.loads(raw)
                    record = ImageRecord.from_json(data)
                    superseded = data.get("superseded", 0)
                    if not isinstance(superseded, int) or isinstance(superseded, bool) or superseded < 0:
                        raise ValueError(f"superseded: expected a count >= 0, got {superseded!r}")
                except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, KeyError, TypeError, ValueError) as e:
                    raise JournalDamaged(self._damaged(number, offset, e)) from None
                yield JournalLine(offset, len(raw), record, 1 + superseded)
                offset += len(raw)

    def _damaged(self, number: int, offset: int, error: Exception) -> str:
        if isinstance(error, UnsafePathError):  # hostile or hand-edited: say exactly what, and open nothing
            return (
                f"{self.path}: line {number} (byte {offset}) names a path samlabel will not build: {error}. "
                "samlabel does not open a dataset whose journal points outside it. If you trust the dataset, "
                "keep a copy of the file, remove that line and run the command again"
            )
        why = f"{type(error).__name__}: {error}"[:200]
        return (
            f"{self.path}: line {number} (byte {offset}) is not an image record ({why}); the journal is damaged "
            "(by a failed write of an older samlabel, or an edit) and the lines after it hold later saves, so "
            "samlabel will not guess. Keep a copy of the file, then remove or repair that line (the save it held "
            "is lost) and run the command again; or start the dataset over with --overwrite"
        )

    def read_at(self, f, offset: int) -> ImageRecord:
        """The record at ``offset`` of the open journal file ``f``."""
        f.seek(offset)
        return ImageRecord.from_json(json.loads(f.readline()))

    @contextlib.contextmanager
    def appender(self) -> Iterator:
        """A function that appends one record durably (written, flushed and synced before it returns).

        All or nothing: when the write or the sync fails (disk full, file size limit), the file is cut back
        to its size before the append and the error is raised; the record is not in the journal.
        """
        with open(self.path, "ab", buffering=0) as f:

            def append(record: ImageRecord) -> None:
                _append_all_or_nothing(f, (json.dumps(record.to_json(), ensure_ascii=False) + "\n").encode("utf-8"))

            yield append

    def compact(self, newest: Mapping[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
        """Rewrite the journal with only the newest record of each image, atomically (temporary file, synced,
        renamed over the journal); the caller holds the run lock.

        Args:
            newest: rel -> (byte offset of its newest record, the image's version: how many records it has had).

        Returns:
            rel -> (byte offset, line length) of its record in the new journal.

        A kill before the rename leaves the old journal (and a temporary file the next open removes); after
        it, the new one. Each kept line carries ``superseded``: the records of its image removed, so versions
        keep counting up across compactions.
        """
        placed: dict[str, tuple[int, int]] = {}
        with fsio.atomic_path(self.path) as tmp:
            with open(self.path, "rb") as src, open(tmp, "wb") as dst:
                for rel, (offset, versions) in sorted(newest.items(), key=lambda kv: kv[1][0]):
                    src.seek(offset)
                    raw = src.readline()
                    data = json.loads(raw)
                    if data.get("superseded", 0) != versions - 1:
                        data["superseded"] = versions - 1
                        raw = (json.dumps(data, ensure_ascii=False) + "\n").encode("utf-8")
                    placed[rel] = (dst.tell(), len(raw))
                    dst.write(raw)
                dst.flush()
                os.fsync(dst.fileno())
        _sync_folder(self.path.parent)
        return placed


def _append_all_or_nothing(f, data: bytes) -> None:
    """Write ``data`` at the end of the unbuffered file ``f`` and sync it, or leave the file as it was."""
    start = os.fstat(f.fileno()).st_size
    try:
        view = memoryview(data)
        while view:
            written = f.write(view)
            view = view[written:]
        os.fsync(f.fileno())
    except BaseException:
        try:
            os.ftruncate(f.fileno(), start)
        except OSError as e:
            raise SamlabelError(
                f"{f.name}: an append failed and the partial line it left (from byte {start}) could not be "
                f"removed ({e}); free space, then run the command again (the partial line is cut on the next open)"
            ) from e
        raise


def _sync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system syncs folders
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def drop_temp_files(out: Path, paths) -> None:
    """Remove what a killed writer left of its atomic writes (``fsio.atomic_path``: ``.<name>.<random>.tmp``).

    The caller holds the run lock, so no writer is at work: every such file is an orphan. ``paths`` is the
    dataset's ``formats.layout.Layout``.
    """
    folders = {out, out / STATE_DIR}
    for split in SPLITS:
        folders |= {
            (out / paths.coco_file(split)).parent,
            out / paths.labels_dir(split),
            out / paths.images_dir(split),
        }
    for folder in folders:
        for pattern in (".*.tmp", ".*.anns"):
            for path in folder.glob(pattern):
                if path.is_file():
                    path.unlink(missing_ok=True)
