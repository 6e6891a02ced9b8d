"""Image folders: find input images, give each a unique output name and a deterministic split."""

from __future__ import annotations

import glob
import hashlib
import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from pipeline.errors import SamlabelError
from pipeline.formats.data_yaml import SPLITS, canonical_split
from pipeline.formats.layout import holds_dataset
from pipeline.images import IMAGE_SUFFIXES
from pipeline.types import ImageItem

LOGGER = logging.getLogger(__name__)


def parse_split(spec: str | dict[str, float]) -> dict[str, float]:
    """Parse ``"train=0.8,valid=0.2"`` (or a mapping) into fractions that sum to 1.

    Raises:
        SamlabelError: unknown split names, negative or all-zero fractions.
    """
    if isinstance(spec, str):
        pairs = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, sep, value = part.partition("=")
            try:
                pairs[name.strip()] = float(value) if sep else float("nan")
            except ValueError:
                pairs[name.strip()] = float("nan")
        spec = pairs
    fractions = {canonical_split(k): float(v) for k, v in spec.items()}
    bad = [k for k in fractions if k not in SPLITS]
    if bad or any(not v >= 0 for v in fractions.values()) or sum(fractions.values()) <= 0:
        raise SamlabelError(
            f"bad --split {spec!r}: expected name=fraction pairs with names from {list(SPLITS)} "
            "and non-negative fractions, e.g. 'train=0.8,valid=0.2' or 'train=1'"
        )
    total = sum(fractions.values())
    return {k: fractions[k] / total for k in SPLITS if fractions.get(k, 0) > 0}


def assign_split(rel: str, fractions: dict[str, float]) -> str:
    """Split of one image from a hash of its relative path: stable across re-runs and added images."""
    u = int.from_bytes(hashlib.sha256(rel.encode("utf-8")).digest()[:8], "big") / 2.0**64
    acc = 0.0
    for name, frac in fractions.items():
        acc += frac
        if u < acc:
            return name
    return next(reversed(fractions))


def find_images(
    sources: Sequence[str | Path], *, exclude: Path | None = None, skipped: list[dict] | None = None
) -> list[tuple[Path, str]]:
    """Expand image files, folders (recursive) and glob patterns.

    Hidden files and folders, non-image suffixes, symlink loops, names that are not valid UTF-8
    and anything below ``exclude`` (the output folder) are skipped. The files a user should hear about
    (a name that is not valid UTF-8, a file named explicitly without an image suffix) are appended to
    ``skipped`` as ``{"source", "reason"}``, as report.json lists skipped images (logged here when
    ``skipped`` is None). Each result is ``(path, rel)``,
    ``rel`` being the POSIX path relative to the source folder (or glob root). With several
    sources, ``rel`` starts with the source's folder name (``cam1/0001.jpg``, ``cam2/0001.jpg``), so
    two sources never give two images the same identity.

    Raises:
        SamlabelError: a source matches nothing that exists, or is ``exclude`` or lies inside it (all its
            images would be excluded).
    """
    found: dict[Path, str] = {}
    linked: dict[Path, bool] = {}  # whether the name kept for a file is a symlink's
    excluded = None
    if exclude is not None:
        excluded = exclude.resolve()
        _refuse_source_in_output(sources, exclude, excluded)
    labels = _source_labels(sources)
    for source, label in zip(sources, labels, strict=True):
        text = str(source)
        path = Path(text)
        if path.is_dir():
            pairs = _walk(path, excluded)
        elif path.is_file():
            pairs = [(path, path.name)] if _is_image(path) else []
            if not pairs:
                _skip(skipped, path, f"not an image suffix ({', '.join(sorted(IMAGE_SUFFIXES))})")
        elif glob.has_magic(text):
            root = _glob_root(text)
            pairs = []
            in_dataset = _DatasetFolders(root, excluded)
            for match in sorted(glob.glob(text, recursive=True)):
                p = Path(match)
                if in_dataset(p if p.is_dir() else p.parent):
                    continue
                if p.is_dir():
                    pairs += [(f, f"{p.relative_to(root).as_posix()}/{r}") for f, r in _walk(p, excluded)]
                elif p.is_file() and _is_image(p) and not _hidden(p.relative_to(root)):
                    pairs.append((p, p.relative_to(root).as_posix()))
        else:
            raise SamlabelError(f"source {text!r} does not exist (expected an image file, a folder or a glob)")
        for p, rel in pairs:
            real = p.resolve()
            if excluded is not None and (real == excluded or excluded in real.parents):
                continue
            if not _utf8(rel):
                _skip(skipped, p, "file name is not valid UTF-8 (rename it to include it)")
                continue
            # One file reached by several names is labeled once, under its own name rather than a symlink's.
            if real not in found or (linked[real] and not p.is_symlink()):
                found[real], linked[real] = (f"{label}/{rel}" if label else rel), p.is_symlink()
    return sorted(((p, rel) for p, rel in found.items()), key=lambda pr: (pr[1], str(pr[0])))


def _skip(skipped: list[dict] | None, path: Path, why: str) -> None:
    """Record (or log) a file left out; a name that is not UTF-8 is written with its bytes escaped."""
    shown = os.fsencode(path).decode("utf-8", "backslashreplace")
    if skipped is None:
        LOGGER.warning("skipped %s: %s", shown, why)
    else:
        skipped.append({"source": shown, "reason": f"{shown}: {why}"})


def _refuse_source_in_output(sources: Sequence[str | Path], out: Path, excluded: Path) -> None:
    """A source that is the output folder, or lies inside it, would give no image at all: say so in one line."""
    for source in sources:
        text = str(source)
        path = Path(text)
        root = (path if path.exists() else _glob_root(text)).resolve()
        if root == excluded or excluded in root.parents:
            where = "is" if root == excluded else "contains"
            raise SamlabelError(
                f"--out {out} {where} the source {text}: the dataset would be written among its own inputs, "
                f"which are never read from it; choose an --out outside the source or a new folder inside it"
            )


def _source_labels(sources: Sequence[str | Path]) -> list[str]:
    """'' for a single source; else each source's folder name, numbered where names repeat."""
    if len(sources) < 2:
        return [""] * len(sources)
    names = []
    for source in sources:
        p = Path(str(source))
        root = p if p.is_dir() else p.parent if p.is_file() else _glob_root(str(source))
        names.append(root.resolve().name or "root")
    counts: defaultdict[str, int] = defaultdict(int)
    for n in names:
        counts[n] += 1
    return [n if counts[n] == 1 else f"{i}-{n}" for i, n in enumerate(names)]


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def plan_items(pairs: Iterable[tuple[Path, str]], fractions: dict[str, float]) -> list[ImageItem]:
    """Give each image a unique output name and its split.

    The output stem is the relative path with folders joined by ``_`` (``a/x.jpg`` -> ``a_x.jpg``).
    Stems that would clash case-insensitively (``x.jpg`` + ``x.png``, or ``a_x.jpg`` + ``a/x.jpg``)
    each get a short hash of their relative path, so names never depend on processing order.
    """
    pairs = list(pairs)
    seen: dict[str, Path] = {}
    for path, rel in pairs:
        if rel in seen:
            raise SamlabelError(f"two images share the relative path {rel!r}: {seen[rel]} and {path}")
        seen[rel] = path
    stems = {rel: _flat_stem(rel) for _, rel in pairs}
    clash: dict[str, list[str]] = defaultdict(list)
    for rel, stem in stems.items():
        clash[stem.casefold()].append(rel)
    items = []
    for path, rel in pairs:
        stem = stems[rel]
        if len(clash[stem.casefold()]) > 1:
            stem = f"{stem}_{hashlib.sha256(rel.encode('utf-8')).hexdigest()[:8]}"
        items.append(ImageItem(path=path, rel=rel, name=stem + path.suffix, split=assign_split(rel, fractions)))
    return items


def _flat_stem(rel: str) -> str:
    parts = rel.split("/")
    parts[-1] = os.path.splitext(parts[-1])[0]
    return "_".join(p for p in parts if p not in ("", ".", ".."))


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def _walk(root: Path, exclude: Path | None = None) -> list[tuple[Path, str]]:
    """Images below ``root``; follows symlinked folders once each, so loops end; does not go into a folder below
    ``root`` that holds a dataset (a samlabel output, or any data.yaml + split folders): its images are copies.
    Nor into ``exclude`` (the output folder), silently."""
    out, seen = [], set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            LOGGER.warning("%s: folder already visited (symlink loop?), skipped", dirpath)
            dirnames[:] = []
            continue
        seen.add(real)
        if exclude is not None and Path(real) == exclude:
            dirnames[:] = []
            continue
        if Path(dirpath) != root and _skip_dataset(Path(dirpath)):
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            p = Path(dirpath, name)
            if not name.startswith(".") and _is_image(p) and p.is_file():
                out.append((p, p.relative_to(root).as_posix()))
    return out


def _skip_dataset(folder: Path) -> bool:
    why = holds_dataset(folder)
    if why:
        LOGGER.info(
            "%s: holds a dataset (%s); its images are not inputs (give it as a source to include them)", folder, why
        )
    return why is not None


class _DatasetFolders:
    """Whether a folder below a glob's root is, or lies inside, a dataset folder (each folder checked once)."""

    def __init__(self, root: Path, exclude: Path | None) -> None:
        self.root = root.absolute()
        self.exclude = exclude
        self.known: dict[Path, bool] = {}

    def __call__(self, folder: Path) -> bool:
        folder = folder.absolute()
        if folder == self.root or self.root not in folder.parents:
            return False
        if folder not in self.known:
            own = self.exclude is not None and folder.resolve() == self.exclude  # the output: left out silently
            self.known[folder] = self(folder.parent) or own or _skip_dataset(folder)
        return self.known[folder]


def _glob_root(pattern: str) -> Path:
    parts = Path(pattern).parts
    root = []
    for part in parts:
        if glob.has_magic(part):
            break
        root.append(part)
    return Path(*root) if root else Path(".")
