"""Safe extraction of a dataset archive into the output folder."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

from pipeline.errors import SamlabelError
from pipeline.fsio import safe_relative


def safe_extract(archive: Path, target: Path) -> Path:
    """Extract ``archive`` into ``target``, refusing entries that would land outside it.

    The archive goes to ``target/<hash of the archive>/``, reused when a resumed run finds it complete.

    Returns:
        The folder holding the dataset: the extraction folder, or its single top-level folder.

    Raises:
        SamlabelError: not a zip, or an entry with an absolute path, ``..`` or a symlink.
    """
    digest = hashlib.sha256()
    with open(archive, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    root = (target / digest.hexdigest()[:16]).resolve()
    if not (root / ".complete").is_file():  # a resumed run reuses a finished extraction
        _extract(archive, root)
    entries = [p for p in root.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else root


def _extract(archive: Path, root: Path) -> None:
    try:
        zf = zipfile.ZipFile(archive)
    except (OSError, zipfile.BadZipFile) as e:
        raise SamlabelError(f"{archive}: not a readable zip ({e})") from None
    root.mkdir(parents=True, exist_ok=True)
    with zf:
        for info in zf.infolist():
            dest = (root / info.filename).resolve()
            is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
            if safe_relative(info.filename) is None or (dest != root and root not in dest.parents) or is_link:
                raise SamlabelError(f"{archive}: entry {info.filename!r} would land outside the target; refusing")
        zf.extractall(root)
    (root / ".complete").write_text("")
