"""Shared fixtures: fake stages whose answers are known, and synthetic image folders."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from pipeline.types import CropMask, Instances


@pytest.fixture(scope="session", autouse=True)
def _private_sam_cache(tmp_path_factory):
    """No test (nor a command it runs) writes ONNX exports into the user's cache folder."""
    from pipeline.sam.onnx_cache import CACHE_ENV  # here, not above: scripts that import this file stay light

    mp = pytest.MonkeyPatch()
    mp.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("default-sam-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def plain_mobile_sam(tmp_path_factory):
    """A plain (not rigged) random-weight MobileSAM, in a read-only folder: answers vary with image and prompt."""
    from tests.checkpoints import make_plain_sam_checkpoint

    folder = tmp_path_factory.mktemp("plain-sam")
    path = make_plain_sam_checkpoint(folder / "mobile_sam.pt")
    folder.chmod(0o555)
    yield path
    folder.chmod(0o755)


@pytest.fixture(scope="session")
def sam3_weights(tmp_path_factory):
    """A reduced random-weight SAM 3 (``tests.checkpoints.SAM3_TEST_DIMS``) in Meta's ``sam3.pt`` layout, read-only."""
    from tests.checkpoints import make_sam3_checkpoint

    folder = tmp_path_factory.mktemp("sam3")
    path = make_sam3_checkpoint(folder / "sam3.pt")
    folder.chmod(0o555)
    yield path
    folder.chmod(0o755)


@pytest.fixture(scope="session")
def sam_cache(tmp_path_factory):
    """The ONNX cache folder the SAM tests share, so each graph of ``plain_mobile_sam`` is exported once."""
    return tmp_path_factory.mktemp("sam-cache")


class FakeDetector:
    """Finds the bright discs drawn by ``draw_scene``: class = disc index mod len(names)."""

    def __init__(self, names=("ball", "cube", "cone"), extra_tiny_box: bool = True):
        self.names = list(names)
        self.extra_tiny_box = extra_tiny_box

    def __call__(self, rgb: np.ndarray) -> Instances:
        gray = (rgb[..., 0] > 200).astype(np.uint8)
        n, _, stats, _ = cv2.connectedComponentsWithStats(gray, connectivity=8)
        boxes, classes = [], []
        for k in range(1, n):
            x, y, w, h = stats[k, :4]
            boxes.append([x - 2, y - 2, x + w + 2, y + h + 2])
            classes.append((k - 1) % len(self.names))
        if self.extra_tiny_box:  # a box whose mask comes out empty (dropped, reported)
            boxes.append([0, 0, 1, 1])
            classes.append(len(self.names) - 1)
        conf = np.linspace(0.9, 0.3, len(boxes)) if boxes else np.zeros(0)
        return Instances(xyxy=np.array(boxes, dtype=float).reshape(-1, 4), class_id=classes, confidence=conf)


class FakeSegmenter:
    """The mask of each box is the bright pixels inside it; score = 0.5 + box index / 100."""

    def __init__(self):
        self.calls = 0

    def __call__(self, rgb: np.ndarray, instances: Instances) -> Instances:
        self.calls += 1
        bright = rgb[..., 0] > 200
        masks, scores = list(instances.masks), instances.mask_score.copy()
        for i, m in enumerate(masks):
            if m is not None:
                continue
            x0, y0, x1, y1 = np.clip(np.round(instances.xyxy[i]).astype(int), 0, None)
            full = np.zeros_like(bright)
            full[y0:y1, x0:x1] = bright[y0:y1, x0:x1]
            masks[i] = CropMask.from_full(full)
            scores[i] = 0.5 + i / 100
        return instances.replace(masks=tuple(masks), mask_score=scores)


def draw_scene(hw=(120, 160), discs=((40, 40, 15), (110, 70, 22)), base=30) -> np.ndarray:
    """RGB uint8 image with bright (R > 200) discs given as (cx, cy, r) on a dark background."""
    im = np.full((*hw, 3), base, np.uint8)
    for cx, cy, r in discs:
        cv2.circle(im, (cx, cy), r, (255, 230, 210), -1)
    return im


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Nested folder with mixed .jpg/.JPG/.png, a grayscale image, a shared stem and a junk file."""
    return make_photos(tmp_path / "photos")


def make_photos(root: Path) -> Path:
    """Write the ``image_folder`` scenes under ``root`` and return it."""
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / ".hidden").mkdir()
    scenes = {
        "a.jpg": draw_scene(),
        "a.png": draw_scene(discs=((60, 60, 25),)),
        "sub/b.JPG": draw_scene(hw=(100, 90), discs=((30, 30, 12), (60, 70, 15), (75, 20, 8))),
        "sub/deeper/c.png": draw_scene(hw=(64, 64), discs=()),
        "sub/a.jpg": draw_scene(discs=((80, 60, 30),)),
    }
    for rel, im in scenes.items():
        Image.fromarray(im).save(root / rel, quality=100) if rel.lower().endswith("jpg") else Image.fromarray(im).save(
            root / rel
        )
    Image.fromarray(draw_scene(hw=(80, 100), discs=((50, 40, 20),))[..., 0]).save(root / "gray.png")
    (root / "notes.txt").write_text("not an image")
    Image.fromarray(draw_scene()).save(root / ".hidden" / "skip.png")
    return root


@pytest.fixture
def browser():
    """Headless Chromium through Playwright (the system's ``chromium``); skipped without Playwright."""
    sync_api = pytest.importorskip("playwright.sync_api")
    from tests.review_helpers import chromium_path

    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        yield b
        b.close()
