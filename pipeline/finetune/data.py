"""What fine-tuning trains on: a dataset's masks as samples, their low-res targets, and the embedding cache.

A sample is one image with the objects that have a mask (polygon or RLE): their prompt boxes, masks
and each mask's target on SAM's 256 x 256 low-resolution grid. The image itself is read only when its
embedding is not cached yet.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import pickle
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline import fsio
from pipeline.errors import SamlabelError
from pipeline.finetune.model import Features, content_cells
from pipeline.images import upright_hw
from pipeline.sam.profiles import LOWRES, SAM_INPUT, ULTRALYTICS, Profile
from pipeline.sources import assign_split, read_dataset, to_instances
from pipeline.types import CropMask, Instances

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class LowresTarget:
    """How much of each low-res cell an object covers, kept as its tight crop.

    Attributes:
        coverage: uint8 (h, w), 255 x the covered fraction of each cell.
        row0: grid row of ``coverage[0]``.
        col0: grid column of ``coverage[:, 0]``.
    """

    coverage: np.ndarray
    row0: int
    col0: int

    def dense(self, cells: tuple[int, int]) -> np.ndarray:
        """float32 ``cells`` (rows, cols) grid in [0, 1], the object's coverage placed on it."""
        out = np.zeros(cells, dtype=np.float32)
        h, w = self.coverage.shape
        r1, c1 = min(self.row0 + h, cells[0]), min(self.col0 + w, cells[1])
        if r1 > self.row0 and c1 > self.col0:
            out[self.row0 : r1, self.col0 : c1] = self.coverage[: r1 - self.row0, : c1 - self.col0] / np.float32(255)
        return out


def lowres_target(mask: CropMask, hw: tuple[int, int], profile: Profile = ULTRALYTICS) -> LowresTarget:
    """The mask's exact area coverage of each cell of the 256 x 256 grid SAM's decoder predicts on.

    The image is placed in the 1024 x 1024 input as the profile's encoder input is (letterboxed: scaled
    by ``1024 / max(H, W)``, top-left; MedSAM: stretched to the whole input); each low-res cell is a
    4 x 4 block of that input. A cell's value is the part
    of its area that the mask's pixels cover there, so a 0/1 target where the mask is resolved
    and fractions along its outline (or for objects smaller than a cell).
    """
    h, w = hw
    ch, cw = profile.content_hw(hw)
    sy, sx = ch / h, cw / w  # the image's resize goes to exactly this size
    if mask.area == 0:
        return LowresTarget(np.zeros((0, 0), dtype=np.uint8), 0, 0)
    row0, rows = _coverage(mask.y0, mask.shape[0], sy)
    col0, cols = _coverage(mask.x0, mask.shape[1], sx)
    cov = rows @ mask.bits.astype(np.float32) @ cols.T
    return LowresTarget(np.clip(np.rint(cov * 255), 0, 255).astype(np.uint8), row0, col0)


def _coverage(p0: int, n: int, scale: float) -> tuple[int, np.ndarray]:
    """Cells of one axis touched by pixels ``p0 .. p0 + n - 1`` and the fraction of each cell each pixel covers.

    Pixel ``p`` spans ``[p * scale, (p + 1) * scale)`` of the encoder input, cell ``c`` spans ``[4c, 4c + 4)``.

    Returns:
        (first cell, float32 (cells, n) matrix of covered fractions).
    """
    cell = SAM_INPUT / LOWRES
    starts = (p0 + np.arange(n)) * scale
    ends = starts + scale
    first = int(np.floor(starts[0] / cell))
    last = min(int(np.ceil(ends[-1] / cell)), LOWRES)
    edges = np.arange(first, last + 1) * cell
    lo = np.maximum(edges[:-1, None], starts[None, :])
    hi = np.minimum(edges[1:, None], ends[None, :])
    return first, (np.clip(hi - lo, 0, None) / cell).astype(np.float32)


@dataclass(frozen=True)
class Sample:
    """One image and the masked objects it trains (or validates) on.

    Attributes:
        path: the image file.
        rel: its identity in the dataset (split folder and path), as ``read_dataset`` gives it.
        split: ``"train"`` or ``"valid"``.
        digest: sha256 of the file's bytes (the embedding cache key).
        hw: (H, W) of the upright image.
        instances: the objects with a non-empty mask: prompt boxes ``xyxy`` (the dataset's own boxes,
            in pixels), ``class_id``, ``source_id`` and ``masks``.
        targets: each object's ``LowresTarget``, in ``instances`` order.
        profile: the SAM profile the targets are placed for (:mod:`pipeline.sam.profiles`).
    """

    path: Path
    rel: str
    split: str
    digest: str
    hw: tuple[int, int]
    instances: Instances
    targets: tuple[LowresTarget, ...] = field(repr=False)
    profile: Profile = field(default=ULTRALYTICS, repr=False)

    @property
    def cells(self) -> tuple[int, int]:
        """(rows, cols) of the low-res grid the image covers."""
        return content_cells(self.hw, self.profile)


@dataclass(frozen=True)
class TrainingData:
    """The samples of both splits, the class names, and what was left out and why."""

    names: list[str]
    train: list[Sample]
    valid: list[Sample]
    val_source: str
    skipped: dict[str, int]

    def describe(self) -> dict:
        def count(samples: list[Sample]) -> dict:
            return {"images": len(samples), "objects": sum(len(s.instances) for s in samples)}

        return {"train": count(self.train), "valid": count(self.valid), "valid_from": self.val_source,
                "skipped": dict(self.skipped)}  # fmt: skip

    def digest(self) -> str:
        """A hash of the samples (files, boxes, masks, split): a resume needs the same one."""
        h = hashlib.sha256()
        for s in [*self.train, *self.valid]:
            h.update(f"{s.split}:{s.rel}:{s.digest}:{s.hw}".encode())
            h.update(np.round(s.instances.xyxy, 3).tobytes())
            h.update(s.instances.class_id.tobytes())
            for m in s.instances.masks:
                h.update(repr(m.to_json()).encode())
        h.update(repr(self.names).encode())
        return h.hexdigest()


def load_training_data(
    src: str | Path,
    *,
    images: str | Path | None = None,
    names: list[str] | None = None,
    val_fraction: float = 0.2,
    reviewed_only: bool = False,
    profile: Profile = ULTRALYTICS,
) -> TrainingData:
    """Read a dataset with masks and split it into training and validation samples.

    The dataset's ``train`` split trains and its ``valid`` split validates; without a ``valid`` split,
    ``val_fraction`` of the training images validate instead, chosen by a hash of each image's ``rel``
    (so the choice never changes between runs or when images are added). A ``test`` split is not used.
    Objects without a mask (box-only labels) and images without any masked object are left out and
    counted. With ``reviewed_only`` (a samlabel dataset) only the images checked in ``samlabel review``
    are used, in both splits. ``profile`` is the SAM profile of the model to train (where the low-res
    targets lie in its input frame).

    Raises:
        SamlabelError: unreadable dataset, ``reviewed_only`` on a dataset samlabel did not write, or no
            training or no validation image with a mask.
    """
    src = Path(src)
    if src.suffix.lower() == ".zip":
        raise SamlabelError(f"{src}: extract the zip first and fine-tune on the folder")
    reviewed = reviewed_images(src) if reviewed_only else None
    ds = read_dataset(src, images=images, names=names, keep_unlabeled=False)
    for p in ds.problems:
        LOGGER.warning("%s: %s (%s)", p.where, p.problem, p.action)
    skipped: Counter = Counter()
    by_split: dict[str, list[Sample]] = {"train": [], "valid": []}
    seen: set[str] = set()
    for it in sorted(ds.items, key=lambda it: (it.split != "train", it.rel)):
        real = os.path.realpath(it.path)
        if it.split not in by_split or real in seen:  # test split; a valid split that is the train folder again
            skipped[f"{it.split} images (not used)" if it.split not in by_split else "valid images also in train"] += 1
            continue
        seen.add(real)
        if reviewed is not None and (it.split, it.path.name) not in reviewed:
            skipped["images not reviewed"] += 1
            continue
        sample = _sample(it, skipped, profile)
        if sample is not None:
            by_split[it.split].append(sample)
    train, valid = by_split["train"], by_split["valid"]
    val_source = "valid split"
    if not valid:
        if not 0 < val_fraction < 1:
            raise SamlabelError(f"{src}: no valid split; pass --val-fraction in (0, 1) to validate on part of train")
        fractions = {"train": 1 - val_fraction, "valid": val_fraction}
        valid = [_with_split(s, "valid") for s in train if assign_split(s.rel, fractions) == "valid"]
        train = [s for s in train if assign_split(s.rel, fractions) == "train"]
        val_source = f"{val_fraction:g} of train (by a hash of each image's path)"
    if not train or not valid:
        which = "training" if not train else "validation"
        raise SamlabelError(
            f"{src}: no {which} image with a mask ({len(train)} training, {len(valid)} validation images with masks; "
            f"{sum(skipped.values())} left out: {dict(skipped)}); fine-tuning needs polygon or RLE masks in both"
        )
    return TrainingData(names=list(ds.names), train=train, valid=valid, val_source=val_source, skipped=dict(skipped))


def reviewed_images(src: Path) -> set[tuple[str, str]]:
    """(split, file name) of each image of the samlabel dataset ``src`` whose newest record is reviewed.

    Raises:
        SamlabelError: ``src`` (a folder, or its data.yaml) is not a dataset samlabel wrote.
    """
    from pipeline.run.state import STATE_DIR, Journal

    root = src if src.is_dir() else src.parent
    if not (root / STATE_DIR / "journal.jsonl").is_file():
        raise SamlabelError(
            f"--reviewed-only: {src} is not a dataset written by samlabel (no {STATE_DIR}/journal.jsonl), so "
            "nothing says which images were reviewed; leave the flag out to train on every mask"
        )
    newest = {rec.rel: rec for _, rec in Journal(root).records()}
    return {(r.split, r.name) for r in newest.values() if r.reviewed and r.status == "ok"}


def _with_split(sample: Sample, split: str) -> Sample:
    return dataclasses.replace(sample, split=split)


def _sample(item, skipped: Counter, profile: Profile) -> Sample | None:
    try:
        data = item.path.read_bytes()
        hw = upright_hw(item.path)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        LOGGER.warning("%s: not a readable image (%s); left out", item.rel, e)
        skipped["unreadable images"] += 1
        return None
    instances = to_instances(item.labels, hw)
    keep = np.array([m is not None and m.area > 0 for m in instances.masks], dtype=bool)
    skipped["objects without a mask"] += int((~keep).sum())
    if not keep.any():
        skipped["images without a masked object"] += 1
        return None
    instances = instances[keep]
    return Sample(
        path=item.path,
        rel=item.rel,
        split=item.split,
        digest=hashlib.sha256(data).hexdigest(),
        hw=hw,
        instances=instances,
        targets=tuple(lowres_target(m, hw, profile) for m in instances.masks),
        profile=profile,
    )


class EmbeddingCache:
    """Image features on disk, keyed by the image's bytes and the model's image side; the last few in memory.

    Files live at ``root / <features key[:16]> / <digest[:2]> / <digest>.pt`` (float16 tensors,
    written atomically), so other weights never read them, reruns and later epochs do, and a
    corrupt file is simply computed again. Every lookup returns the float16-rounded features, hit or
    miss, so a run gives the same result whether or not its embeddings were cached.

    Attributes:
        hits, misses: lookups answered from the cache (memory or disk), and computed.
    """

    def __init__(self, root: str | Path, features_key: str, *, in_memory: int = 4) -> None:
        self.folder = Path(root) / features_key[:16]
        self.in_memory = max(int(in_memory), 0)
        self._lru: OrderedDict[str, Features] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def path(self, digest: str) -> Path:
        return self.folder / digest[:2] / f"{digest}.pt"

    def get(self, digest: str, compute: Callable[[], Features]) -> Features:
        """The features of the image whose bytes hash to ``digest``; ``compute()`` makes them on a miss."""
        if digest in self._lru:
            self._lru.move_to_end(digest)
            self.hits += 1
            return self._lru[digest]
        features = self._read(self.path(digest))
        if features is None:
            self.misses += 1
            stored = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in compute().items()}
            with fsio.atomic_path(self.path(digest)) as tmp:
                torch.save(stored, tmp)
            features = {k: v.float() for k, v in stored.items()}
        else:
            self.hits += 1
        if self.in_memory:
            self._lru[digest] = features
            while len(self._lru) > self.in_memory:
                self._lru.popitem(last=False)
        return features

    @staticmethod
    def _read(path: Path) -> Features | None:
        if not path.is_file():
            return None
        try:  # a torn or foreign file is made again
            stored = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:
            LOGGER.warning("embedding cache file %s unreadable (%s); computing it again", path, e)
            return None
        if not isinstance(stored, dict) or not all(isinstance(v, torch.Tensor) for v in stored.values()):
            return None
        return {k: v.float() for k, v in stored.items()}


def default_cache_dir() -> Path:
    """``embeddings/`` in samlabel's cache folder (``$SAMLABEL_CACHE_DIR``, else the user cache folder)."""
    from pipeline.sam.onnx_cache import default_cache_dir as samlabel_cache_dir

    return samlabel_cache_dir() / "embeddings"
