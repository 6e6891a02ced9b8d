"""Safe extraction of a dataset archive into the output folder: only what the dataset uses, streamed, bounded.

The metadata a reader needs (``.yaml`` / ``.yml`` / ``.json`` / ``.txt``) is extracted first; then the images the
labels refer to (a YOLO label file of the same stem, a COCO ``file_name``, a line of an image list). Any other image
becomes an empty placeholder of the same name, so the dataset reader still finds and reports it as unlabeled
without a byte of it on disk; with ``keep_unlabeled`` every image is extracted. Nothing else is extracted.

Each entry is copied in chunks (bounded memory) and the bytes written are counted, not taken from the zip's
headers: the archive is refused, in one line naming the entry, once what it has written passes
``ExtractLimits.max_ratio`` times the compressed size of the entries so far plus ``slack_bytes``, or the free
disk space. Entries with an absolute path, ``..`` or a symlink, and entries whose data overlap or that claim more
compressed bytes than the archive holds for them, are refused before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pipeline.errors import SamlabelError
from pipeline.fsio import safe_relative
from pipeline.images import IMAGE_SUFFIXES

LOGGER = logging.getLogger(__name__)

#: Entries a dataset reader may need besides images.
METADATA_SUFFIXES = (".yaml", ".yml", ".json", ".txt")

_CHUNK = 1 << 20


@dataclass(frozen=True)
class ExtractLimits:
    """How far an archive may expand.

    Attributes:
        max_ratio: bytes written may reach this many times the compressed size of the entries extracted so far ...
        slack_bytes: ... plus this much (small archives of very compressible files, e.g. one large json).
        free_bytes: bytes the extraction may write in all; None = the free space of the target's file system.
    """

    max_ratio: float = 100.0
    slack_bytes: int = 8 << 20
    free_bytes: int | None = None


LIMITS = ExtractLimits()


def safe_extract(
    archive: Path, target: Path, *, keep_unlabeled: bool = False, limits: ExtractLimits | None = None
) -> Path:
    """Extract what the dataset in ``archive`` uses into ``target`` (see the module docstring).

    The archive goes to ``target/<hash of the archive>/`` (``-all`` appended with ``keep_unlabeled``), reused when a
    resumed run finds it complete; a refused extraction leaves nothing there.

    Returns:
        The folder holding the dataset: the extraction folder, or its single top-level folder.

    Raises:
        SamlabelError: not a zip; an entry with an absolute path, ``..`` or a symlink; an archive that expands
            past the limits.
    """
    digest = hashlib.sha256()
    with open(archive, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    root = (target / (digest.hexdigest()[:16] + ("-all" if keep_unlabeled else ""))).resolve()
    if not (root / ".complete").is_file():  # a resumed run reuses a finished extraction
        shutil.rmtree(root, ignore_errors=True)  # a killed run's partial one
        try:
            _extract(archive, root, keep_unlabeled=keep_unlabeled, limits=limits or LIMITS)
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
    entries = [p for p in root.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else root


def _extract(archive: Path, root: Path, *, keep_unlabeled: bool, limits: ExtractLimits) -> None:
    try:
        zf = zipfile.ZipFile(archive)
    except (OSError, zipfile.BadZipFile) as e:
        raise SamlabelError(f"{archive}: not a readable zip ({e})") from None
    with zf:
        files = _checked_entries(zf, archive, root)
        _check_extents(zf, archive)
        root.mkdir(parents=True, exist_ok=True)
        budget = _Budget(archive, root, limits)
        metadata = [(name, info) for name, info in files if name.lower().endswith(METADATA_SUFFIXES)]
        for name, info in metadata:
            budget.copy(zf, info, root / name)
        images = [(name, info) for name, info in files if PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES]
        used = _Referenced(root, [name for name, _ in metadata]) if not keep_unlabeled else None
        placeholders = 0
        for name, info in images:
            if used is None or used(name):
                budget.copy(zf, info, root / name)
            else:
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                (root / name).write_bytes(b"")  # unlabeled: its name is reported, its bytes are not needed
                placeholders += 1
    if placeholders:
        LOGGER.info("%s: %d images no label refers to were not extracted", archive, placeholders)
    (root / ".complete").write_text("")


def _checked_entries(zf: zipfile.ZipFile, archive: Path, root: Path) -> list[tuple[str, zipfile.ZipInfo]]:
    """(clean relative name, info) of each file entry; refuses the archive if any entry could land outside ``root``."""
    files = []
    for info in zf.infolist():
        name = safe_relative(info.filename)
        dest = (root / (name or "")).resolve()
        is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
        if name is None or (dest != root and root not in dest.parents) or is_link:
            raise SamlabelError(f"{archive}: entry {info.filename!r} would land outside the target; refusing")
        if not info.is_dir() and name:
            files.append((name, info))
    return files


def _check_extents(zf: zipfile.ZipFile, archive: Path) -> None:
    """Refuse an archive whose entries' data overlap one another, or claim more bytes than lie before the next
    entry (or the central directory): the budget counts claimed compressed sizes only once they are proven real,
    and overlapping entries (one compressed stream expanded again and again: a zip bomb) are never read.

    Python's ``zipfile`` (3.11) checks neither.
    """
    infos = sorted(zf.infolist(), key=lambda i: i.header_offset)
    with open(archive, "rb") as f:
        for k, info in enumerate(infos):
            f.seek(info.header_offset)
            header = f.read(30)
            if len(header) < 30 or header[:4] != b"PK\x03\x04":
                raise SamlabelError(f"{archive}: entry {info.filename!r} has no local header where the archive says")
            start = (
                info.header_offset
                + 30
                + int.from_bytes(header[26:28], "little")
                + int.from_bytes(header[28:30], "little")
            )
            end = infos[k + 1].header_offset if k + 1 < len(infos) else zf.start_dir
            if start + info.compress_size > end:
                nxt = f"entry {infos[k + 1].filename!r}" if k + 1 < len(infos) else "the central directory"
                raise SamlabelError(
                    f"{archive}: entry {info.filename!r} claims {info.compress_size} compressed bytes but only "
                    f"{max(end - start, 0)} lie before {nxt} (overlapping or lying entries, a zip bomb's trick); refusing it"
                )


class _Budget:
    """Copies entries in chunks, counting the bytes written against the ratio and free-space limits."""

    def __init__(self, archive: Path, root: Path, limits: ExtractLimits) -> None:
        self.archive, self.limits = archive, limits
        self.free = limits.free_bytes if limits.free_bytes is not None else shutil.disk_usage(root).free
        self.written = 0
        self.compressed = 0

    def copy(self, zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path) -> None:
        self.compressed += info.compress_size
        allowed = self.limits.max_ratio * self.compressed + self.limits.slack_bytes
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(dest, "wb") as out:
                self._stream(info, src, out, allowed, dest)
        except (OSError, EOFError, RuntimeError, zipfile.BadZipFile, zlib.error) as e:
            why = str(e) or ("its data ends early" if isinstance(e, EOFError) else type(e).__name__)  # never "()"
            raise SamlabelError(f"{self.archive}: entry {info.filename!r} cannot be extracted ({why})") from None

    def _stream(self, info: zipfile.ZipInfo, src, out, allowed: float, dest: Path) -> None:
        while chunk := src.read(_CHUNK):
            self.written += len(chunk)
            if self.written > allowed:
                raise SamlabelError(
                    f"{self.archive}: entry {info.filename!r} expands past {self.limits.max_ratio:g}x the "
                    f"compressed size of the archive's entries (+ {self.limits.slack_bytes / 2**20:g} MB); "
                    "refusing it as a zip bomb (extract it yourself if you trust it)"
                )
            if self.written > self.free:
                raise SamlabelError(
                    f"{self.archive}: entry {info.filename!r} does not fit in the free disk space "
                    f"({self.free} bytes) at {dest.parent}; free space or extract the archive elsewhere"
                )
            out.write(chunk)


class _Referenced:
    """Whether an image entry is one the extracted metadata refers to: a label file of its stem (YOLO), a COCO
    ``file_name`` or an image-list line its path ends with. Generous on purpose: an image left out by mistake
    would be an empty file, reported as unreadable."""

    def __init__(self, root: Path, metadata: list[str]) -> None:
        self.stems: set[str] = set()
        self.tails: dict[str, set[str]] = {}  # basename -> referenced paths, matched against an entry's path end
        for name in metadata:
            path = root / name
            if name.lower().endswith(".txt"):
                self._txt(path)
            elif name.lower().endswith(".json"):
                self._json(path)

    def __call__(self, name: str) -> bool:
        p = PurePosixPath(name)
        return p.stem in self.stems or any(name == t or name.endswith("/" + t) for t in self.tails.get(p.name, ()))

    def _txt(self, path: Path) -> None:
        text = path.read_text(encoding="utf-8", errors="replace")
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        listed = [ln for ln in lines if PurePosixPath(ln).suffix.lower() in IMAGE_SUFFIXES]
        if listed:  # an image list (data.yaml's train: list.txt)
            for t in filter(None, map(_tail, listed)):
                self._add(t)
        else:  # a label file (or classes.txt / a readme, whose stems match nothing or little)
            self.stems.add(path.stem)

    def _json(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return  # not a COCO json; the reader says what is wrong with it if it is the dataset's
        images = data.get("images") if isinstance(data, dict) else None
        for img in images if isinstance(images, list) else []:
            if isinstance(img, dict) and isinstance(img.get("file_name"), str):
                tail = _tail(img["file_name"])
                if tail:
                    self._add(tail)

    def _add(self, tail: str) -> None:
        self.tails.setdefault(tail.rsplit("/", 1)[-1], set()).add(tail)


def _tail(reference: str) -> str | None:
    """A referenced path without leading ``./`` and ``../`` parts, to match the end of an entry's path."""
    parts = [p for p in reference.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    return "/".join(parts) or None
