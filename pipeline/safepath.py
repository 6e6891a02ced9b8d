"""Paths built from names a dataset gives (journal records, COCO files, data.yaml, archives): every name is checked
before it is joined, and every joined path is confirmed to lie inside its folder.

A dataset is untrusted input: someone else's folder, a download, a shared drive. Its ``.samlabel/journal.jsonl``
names each image's split and file name, and samlabel builds the paths it reads, serves and writes from them; a
split of ``../x`` or a name of ``../../etc/hostname`` must never reach a file outside the dataset.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.errors import SamlabelError
from pipeline.formats.data_yaml import SPLITS


class UnsafePathError(SamlabelError, ValueError):
    """A name from a dataset that would lead outside it, or is not a plain file name."""


def component(name: object, *, what: str) -> str:
    """``name`` if it is one plain path component: a non-empty string, not ``.`` or ``..``, no ``/``, no NUL.

    (``\\`` is an ordinary character in POSIX file names, and samlabel's locks and files are POSIX.)

    Raises:
        UnsafePathError: anything else; ``what`` names where the name came from.
    """
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\0" in name:
        raise UnsafePathError(
            f"{what} {name!r} is not a plain file name (empty, '.', '..', or holding '/' or NUL); "
            "the dataset may have been edited by hand or come from an untrusted source"
        )
    return name


def split(name: object, *, what: str) -> str:
    """``name`` if it is one of samlabel's split names (``train``, ``valid``, ``test``).

    Raises:
        UnsafePathError: anything else.
    """
    if not isinstance(name, str) or name not in SPLITS:
        raise UnsafePathError(
            f"{what} {name!r} is not one of the split names {list(SPLITS)}; "
            "the dataset may have been edited by hand or come from an untrusted source"
        )
    return name


def within(root: Path, path: Path) -> bool:
    """``path`` lies inside ``root`` (or is it), by its normalised absolute path: ``..`` cannot climb out."""
    base = os.path.normpath(os.path.abspath(root))
    target = os.path.normpath(os.path.abspath(path))
    return target == base or target.startswith(base.rstrip(os.sep) + os.sep)


def inside(root: Path, rel: str, *, what: str) -> Path:
    """``root / rel``, confirmed to lie inside ``root``: lexically, and with its folder's symlinks resolved.

    The file itself may be a symlink (``--link`` datasets link their images to the sources); the folders on the
    way to it may not lead out of ``root``.

    Raises:
        UnsafePathError: the path, or the real folder holding it, is outside ``root``.
    """
    path = Path(root) / rel
    inside_lexically = within(root, path)
    if inside_lexically:
        real_root, real_parent = Path(root).resolve(), path.parent.resolve()
        inside_lexically = real_parent == real_root or real_root in real_parent.parents
    if not inside_lexically:
        raise UnsafePathError(f"{what} {rel!r} leads outside {root}; refusing to use it")
    return path
