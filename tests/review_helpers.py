"""Shared pieces of the review tests: a fake SAM session with known answers, datasets, and a server subprocess."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

import pipeline
from pipeline.review.sam import Candidate, mask_logits
from pipeline.types import CropMask
from tests.conftest import FakeDetector, FakeSegmenter, make_photos

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path("/tmp")  # where the browser tests leave their screenshots, to look at
BROWSER_MARKS = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists() and shutil.which("chromium") is None, reason="chromium is not installed"),
]


def chromium_path() -> str:
    """Debian's chromium (Playwright drives the system's browser; its own download cannot work here)."""
    return str(CHROMIUM) if CHROMIUM.exists() else str(shutil.which("chromium"))


def to_page(page, x: float, y: float) -> tuple[float, float]:
    """Page coordinates of image pixel (x, y) in the review page's canvas."""
    view = page.evaluate("() => ({...S.view})")
    box = page.locator("#canvas").bounding_box()
    return box["x"] + view["ox"] + x * view["s"], box["y"] + view["oy"] + y * view["s"]


with warnings.catch_warnings():  # Starlette >= 1.0 would like httpx2 (the brief installs httpx; both work)
    warnings.filterwarnings("ignore", message=".*httpx2")
    from fastapi.testclient import TestClient as _TestClient


def TestClient(app, **kwargs) -> _TestClient:  # noqa: N802 - stands in for the class
    """FastAPI's test client at ``http://127.0.0.1`` (the app answers only loopback ``Host`` names)."""
    kwargs.setdefault("base_url", "http://127.0.0.1")
    return _TestClient(app, **kwargs)


ROOT = Path(__file__).resolve().parents[1]
TOKEN = "test-token-0123456789abcdef"

#: Flags some instances of the photo scenes (a box padded by 2 px fits its disc's mask at 0.63-0.85).
THRESHOLDS = "min_box_fit=0.8"

CLICK_RADIUS = 6


class FakeSamSession:
    """Answers like SAM would, from the image's bright pixels (R > 200), without a model.

    A prompt's mask: the bright pixels inside the box (or the whole image without one), then a disc of
    ``CLICK_RADIUS`` px added at each positive click and cut at each negative one. With ``multimask`` the
    candidates are (dilated, the mask, eroded) scored (0.7, 0.9, 0.6), so the best is the middle one;
    without, the mask alone, scored 0.9. ``calls`` records each prompt, ``mask_input`` included.
    """

    def __init__(self) -> None:
        self.images: dict[str, np.ndarray] = {}
        self.calls: list[dict] = []
        self.encoded: list[str] = []

    def embed(self, image_id, rgb) -> None:
        if image_id not in self.images:
            self.images[image_id] = rgb() if callable(rgb) else rgb
            self.encoded.append(image_id)

    def predict(self, image_id, *, box, points, point_labels, mask_input=None, multimask):
        rgb = self.images[image_id]
        self.calls.append(
            {
                "image": image_id,
                "box": box,
                "points": points,
                "labels": point_labels,
                "mask_input": mask_input,
                "multimask": multimask,
            }
        )
        bright = rgb[..., 0] > 200
        mask = np.zeros_like(bright)
        if box is None:
            mask[:] = bright
        else:
            x0, y0, x1, y1 = np.clip(np.round(box).astype(int), 0, None)
            mask[y0:y1, x0:x1] = bright[y0:y1, x0:x1]
        clicks = [] if points is None else zip(points, point_labels, strict=True)
        for (x, y), label in clicks:
            disc = np.zeros(mask.shape, np.uint8)
            cv2.circle(disc, (int(round(x)), int(round(y))), CLICK_RADIUS, 1, -1)
            mask = mask | disc.astype(bool) if label == 1 else mask & ~disc.astype(bool)
        if not multimask:
            return [_candidate(mask, 0.9)]
        kernel = np.ones((3, 3), np.uint8)
        grown = cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)
        shrunk = cv2.erode(mask.astype(np.uint8), kernel).astype(bool)
        return [_candidate(grown, 0.7), _candidate(mask, 0.9), _candidate(shrunk, 0.6)]

    def mask_input(self, mask, hw):
        return mask_logits(mask, hw)


def _candidate(full: np.ndarray, score: float) -> Candidate:
    logits = np.where(cv2.resize(full.astype(np.uint8), (256, 256)) > 0, 5.0, -5.0).astype(np.float32)
    return Candidate(CropMask.from_full(full), score, 0.95, logits)


def make_dataset(root: Path, **settings) -> Path:
    """A labelled dataset of the conftest photo scenes (6 images, 8 instances), some instances flagged."""
    photos = root / "photos"
    if not photos.exists():
        make_photos(photos)
    out = root / "ds"
    settings.setdefault("thresholds", THRESHOLDS)
    pipeline.label(photos, out, detector=FakeDetector(), segmenter=FakeSegmenter(), progress=False, **settings)
    return out


def copy_dataset(src: Path, dst: Path) -> Path:
    """A copy of a dataset (its photos too: COCO ``source`` paths and resumes point at them)."""
    shutil.copytree(src.parent, dst, symlinks=True)
    out = dst / "ds"
    state = out / ".samlabel" / "state.json"
    state.write_text(state.read_text().replace(str(src.parent), str(dst)))
    return out


SERVER = """
import os, sys, time, random
sys.path.insert(0, {root!r})
from pipeline.review import server, store
from tests.review_helpers import FakeSamSession

delay = {delay!r}
marker = {marker!r}
if delay:
    def slow(fn, before=True):
        def wrapped(*a, **k):
            if before:
                time.sleep(delay)
            out = fn(*a, **k)
            if not before:
                time.sleep(delay)
            return out
        return wrapped
    store._write_synced = slow(store._write_synced, before=False)  # pending written, journal not yet
    store.yolo.write_label_file = slow(store.yolo.write_label_file)
    store.fsio.write_text = slow(store.fsio.write_text)
    write_coco_texts = store.coco.write_coco_texts  # what a save rewrites a split's COCO file with

    def slow_coco(path, *, names, images):
        def slowly():
            for item in images:
                time.sleep(delay)  # the temporary COCO file is half written meanwhile
                yield item
        open(marker, "w").close()  # here until the rewrite ends: a kill that leaves it landed inside
        out = write_coco_texts(path, names=names, images=slowly())
        os.remove(marker)
        return out
    store.coco.write_coco_texts = slow_coco
server.serve({out!r}, port=0, open_browser=False, sam=FakeSamSession(), on_ready=lambda url: print(url, flush=True))
"""


def start_server(out: Path, log: Path, *, delay: float = 0.0) -> tuple[subprocess.Popen, str, str]:
    """The review server with the fake SAM in a subprocess: (process, base URL, token), from the URL it prints.

    Its stderr goes to ``log``; ``delay`` seconds are spent around each file write of a save, and before
    each image of a COCO rewrite, during which ``coco_marker(log)`` exists.
    """
    code = SERVER.format(root=str(ROOT), out=str(out), delay=delay, marker=str(coco_marker(log)))
    with open(log, "a") as err:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT)
    line = proc.stdout.readline()
    match = re.match(r"(http://127\.0\.0\.1:\d+)/\?token=(\S+)", line)
    if not match:
        proc.kill()
        raise AssertionError(f"no URL printed: {line!r}\n{log.read_text()}")
    return proc, match.group(1), match.group(2)


def coco_marker(log: Path) -> Path:
    """The file that exists while a slowed server (``start_server(delay=...)``) rewrites a COCO file."""
    return log.with_name(log.name + ".coco-writing")


def journal_lines(out: Path) -> int:
    path = out / ".samlabel" / "journal.jsonl"
    return path.read_bytes().count(b"\n") if path.exists() else 0


def coco_image(out: Path, split: str, file_name: str) -> tuple[dict, list[dict]]:
    """The COCO image entry of one image and its annotations (in id order)."""
    coco = json.loads((out / split / "_annotations.coco.json").read_text())
    [image] = [i for i in coco["images"] if i["file_name"] == file_name]
    return image, [a for a in coco["annotations"] if a["image_id"] == image["id"]]


def wait_until(predicate, timeout: float = 30.0, step: float = 0.005) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False
