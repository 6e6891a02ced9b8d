"""Read a produced dataset back through the ecosystem's own loaders, for round-trip checks."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import yaml
from pycocotools.coco import COCO

from pipeline.formats.yolo import read_label_file
from pipeline.masks import polygons_to_mask


def splits_of(out: Path) -> list[str]:
    return [s for s in ("train", "valid", "test") if (out / s / "images").is_dir()]


def coco_by_image(out: Path, split: str) -> dict[str, list[dict]]:
    """file_name -> annotations (in id order), loaded with pycocotools."""
    coco = COCO(str(out / split / "_annotations.coco.json"))
    return {
        coco.imgs[i]["file_name"]: [coco.anns[a] for a in sorted(coco.getAnnIds(imgIds=[i]))]
        for i in sorted(coco.getImgIds())
    }


def check_yolo_matches_coco(out: Path) -> int:
    """YOLO and COCO hold the same instances per image, same order and class; returns instance count.

    Each YOLO polygon, rasterized, must cover the COCO mask (IoU >= 0.98; the YOLO polygon is one
    merged outline, so zero-width bridges may touch a few pixels).
    """
    names = yaml.safe_load((out / "data.yaml").read_text())["names"]
    total = 0
    for split in splits_of(out):
        coco = COCO(str(out / split / "_annotations.coco.json"))
        by_name = {img["file_name"]: img for img in coco.imgs.values()}
        images = sorted(p.name for p in (out / split / "images").iterdir())
        assert sorted(by_name) == images
        cat_names = {c["id"]: c["name"] for c in coco.cats.values()}
        for name in images:
            img = by_name[name]
            hw = (img["height"], img["width"])
            anns = [coco.anns[a] for a in sorted(coco.getAnnIds(imgIds=[img["id"]]))]
            lines = read_label_file(out / split / "labels" / (Path(name).stem + ".txt"))
            assert [c for c, _ in lines] == [a["category_id"] - 1 for a in anns]
            for (c, poly), ann in zip(lines, anns, strict=True):
                assert names[c] == cat_names[ann["category_id"]]
                raster = polygons_to_mask([poly * [hw[1], hw[0]]], hw)
                ref = coco.annToMask(ann).astype(bool)
                assert ref.sum() == ann["area"]
                inter, union = np.logical_and(raster, ref).sum(), np.logical_or(raster, ref).sum()
                assert inter / union >= 0.98
            total += len(anns)
    return total


def label_files_bytes(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.glob("*/labels/*.txt"))}


def coco_data(out: Path) -> dict[str, dict]:
    return {s: json.loads((out / s / "_annotations.coco.json").read_text()) for s in splits_of(out)}


def ultralytics_segment_labels(out: Path) -> dict[str, list[dict]]:
    """Per split, the labels Ultralytics' own segment dataset loader reads (after check_det_dataset)."""
    from ultralytics.cfg import get_cfg
    from ultralytics.data.dataset import YOLODataset
    from ultralytics.data.utils import check_det_dataset

    data = check_det_dataset(str(out / "data.yaml"))
    result = {}
    for key in ("train", "val", "test"):
        if not data.get(key):
            continue
        ds = YOLODataset(img_path=data[key], data=data, task="segment", hyp=get_cfg(), augment=False, imgsz=320)
        result[key] = ds.labels
    return result


def assert_valid(out: Path) -> None:
    """``samlabel validate`` finds no problem in a produced dataset."""
    from pipeline.validate import validate

    problems = validate(out)
    assert problems == [], "\n".join(problems)


def offline(monkeypatch, folder: Path) -> None:
    """No network in this process, an empty Ultralytics weights folder under ``folder``, and ``folder`` as cwd."""
    import socket

    monkeypatch.setattr("pipeline.weights.ultralytics_weights_dir", lambda: folder / "ultralytics-weights")

    def no_network(*args, **kwargs):
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.chdir(folder)


def assert_mask_matches_logits(mask: np.ndarray, logits, threshold: float, *, margin: float = 1e-4) -> None:
    """``mask`` (H, W) bool is ``logits > threshold`` on every pixel whose logit is not within ``margin`` of it.

    Two computations of the same logits by different code paths (a window product versus the whole image)
    may round differently in the last bits, and other CPUs round differently again: a pixel right at the
    threshold may fall either way. Every other pixel must agree, which a wrong window or offset breaks.
    """
    logits = np.asarray(logits.numpy() if hasattr(logits, "numpy") else logits, dtype=np.float64)
    assert mask.shape == logits.shape, (mask.shape, logits.shape)
    decided = np.abs(logits - threshold) > margin
    wrong = (mask != (logits > threshold)) & decided
    assert not wrong.any(), f"{int(wrong.sum())} pixel(s) away from the threshold differ, e.g. {np.argwhere(wrong)[:3]}"
    assert decided.mean() > 0.99, "too few pixels away from the threshold for the comparison to mean anything"


@contextlib.contextmanager
def local_ray() -> Iterator[str]:
    """A local 2-CPU Ray on the loopback address for the block (its GCS address); its workers inherit a
    PYTHONPATH with the repository first, so they import ``tests.*`` (the pickled fake stages). Shut down and
    PYTHONPATH restored after."""
    import ray

    root = str(Path(__file__).resolve().parents[1])
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (root, before) if p)
    # loopback only: the test cluster never listens on or talks to another address
    ray.init(
        address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING", _node_ip_address="127.0.0.1"
    )
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before
