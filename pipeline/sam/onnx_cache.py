"""The folder of ONNX exports: one file per (architecture, weights content, graph), never beside the weights.

The folder is ``cache_dir`` when given, else ``$SAMLABEL_CACHE_DIR``, else the user cache folder
(``platformdirs.user_cache_dir("samlabel")``, e.g. ``~/.cache/samlabel`` on Linux). File names carry the
first 16 hex digits of the sha256 of the weights file's *content*, so replacing a checkpoint (even
under the same name) never reuses a stale export: ``mobile_sam.<sha256[:16]>.encoder1024.onnx``.
Beside each export, ``<name>.check.json`` records that it passed its check against PyTorch. Every file
appears atomically (written to a temporary name, then renamed). Deleting the folder only costs a
re-export.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

from pipeline import fsio

LOGGER = logging.getLogger(__name__)

CACHE_ENV = "SAMLABEL_CACHE_DIR"
_HASH_CHUNK = 1 << 20
_HASH_LEN = 16


class CacheWriteError(OSError):
    """The cache folder cannot be created or written."""


def default_cache_dir() -> Path:
    """``$SAMLABEL_CACHE_DIR`` if set, else ``platformdirs.user_cache_dir("samlabel")``."""
    env = os.environ.get(CACHE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("samlabel"))


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's content."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


class OnnxCache:
    """Where the exports of one weights file live, and whether each passed its check.

    The weights are hashed once, when a path is first asked for (a few seconds for SAM ViT-H), and
    the digest is kept by this object.

    Args:
        weights: the checkpoint the exports are made from.
        arch: its architecture (the first part of every file name).
        cache_dir: the folder; ``None`` for :func:`default_cache_dir`.
    """

    def __init__(self, weights: Path, *, arch: str, cache_dir: str | Path | None = None) -> None:
        self.weights = Path(weights)
        self.arch = arch
        self.dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self._digest: str | None = None

    @property
    def digest(self) -> str:
        """First 16 hex digits of the sha256 of the weights file's content."""
        if self._digest is None:
            self._digest = file_sha256(self.weights)[:_HASH_LEN]
        return self._digest

    def path(self, graph: str) -> Path:
        """The export of ``graph`` (e.g. ``encoder1024``, ``boxdecoder2``); it may not exist yet."""
        return self.dir / f"{self.arch}.{self.digest}.{graph}.onnx"

    def ensure(self, graph: str, export: Callable[[Path], object]) -> Path:
        """The export of ``graph``, made with ``export(path)`` (which must write atomically) when missing.

        Raises:
            CacheWriteError: the folder cannot be created or written.
        """
        path = self.path(graph)
        if path.is_file():
            LOGGER.debug("using cached ONNX export %s", path)
            return path
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            if not os.access(self.dir, os.W_OK):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self.dir))
            export(path)
        except CacheWriteError:
            raise
        except OSError as e:
            raise CacheWriteError(f"cannot write the ONNX cache folder {self.dir} ({e})") from e
        return path

    def passed(self, graph: str) -> Path | None:
        """The export of ``graph`` when it is in the cache and passed its check (:meth:`check_once`), else ``None``."""
        path = self.path(graph)
        return path if path.is_file() and path.with_suffix(".check.json").is_file() else None

    def check_once(self, export: Path, check: Callable[[], float]) -> None:
        """Run ``check`` (it raises on a bad export and returns the max abs difference) unless ``export``
        passed before; record a pass in ``<export>.check.json`` (a read-only cache only logs that it cannot)."""
        record = export.with_suffix(".check.json")
        if record.is_file():
            return
        diff = check()
        try:
            fsio.write_text(record, json.dumps({"max_abs_diff": diff}) + "\n")
        except OSError as e:
            LOGGER.warning("cannot record the ONNX check of %s (%s); it runs again next time", export.name, e)
