"""Atomic file writes: a finished file appears at its final name, or nothing does."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath


def _file_mode() -> int:
    """Permissions of a new file under this process's umask (``0o644`` under the usual ``022``).

    ``mkstemp`` creates its file readable by the owner only and a rename keeps that, so finished files
    get this mode instead: a dataset is shared, served and uploaded by other users and tools.
    """
    try:  # Linux: read without changing it (os.umask can only be read by setting it, racing other threads)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


_MODE = _file_mode()


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``, else removed.

    The finished file has the permissions any new file gets under the umask (see ``_file_mode``).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, _MODE)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def exclusive_lock(path: Path, *, busy: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the block; held already, raise at once.

    Raises:
        SamlabelError: another process holds it; ``busy`` is the message.
    """
    from pipeline.errors import SamlabelError

    with open(path, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SamlabelError(busy) from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def copy_file(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` atomically (bytes untouched)."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def link_file(src: Path, dst: Path) -> None:
    """Hard-link ``src`` at ``dst`` (replacing it); a symlink where hard links cannot cross file systems."""
    with atomic_path(dst) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            os.symlink(Path(src).resolve(), tmp)


def safe_relative(name: str) -> str | None:
    """``name`` as a clean relative POSIX path, or None if absolute or escaping its root."""
    if not name or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return None
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if any(p == ".." for p in parts):
        return None
    return "/".join(p for p in parts if p != ".")
