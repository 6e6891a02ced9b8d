"""The segmenter's ONNX box path: box prompts of a SAM-1 model on checked exports, without PyTorch or Ultralytics."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from pipeline.sam import Segmenter, onnx_sessions  # noqa: E402
from pipeline.sam.build import _file_names, _known_without_ultralytics, resolve_arch, sam_archs  # noqa: E402
from pipeline.sam.profiles import SAM1_ARCHS, SAM1_THRESHOLD, sam1_input  # noqa: E402
from pipeline.sam.segmenter import _box_path_applies  # noqa: E402
from pipeline.types import Instances  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checked_cache(plain_mobile_sam, sam_cache):
    """``sam_cache`` holding the checked encoder and box decoder of ``plain_mobile_sam`` (built the usual way)."""
    Segmenter(plain_mobile_sam, device="cpu", runtime="onnx", cache_dir=sam_cache).reference  # noqa: B018
    return sam_cache


def _boxes(n: int, hw: tuple[int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    h, w = hw
    xy = rng.uniform(0, [w * 0.6, h * 0.6], (n, 2))
    return np.concatenate([xy, xy + rng.uniform(8, [w * 0.4, h * 0.4], (n, 2))], axis=1)


@pytest.mark.parametrize("hw", [(480, 640), (333, 517), (1024, 1024), (40, 1300), (2000, 7)])
def test_preprocessing_is_ultralytics_own(plain_mobile_sam, hw):
    """``sam1_input`` (numpy, letterbox + mean / std) gives the very input Ultralytics' predictor makes."""
    seg = Segmenter(plain_mobile_sam, device="cpu", runtime="torch")
    rgb = np.random.default_rng(hw[0]).integers(0, 256, (*hw, 3), dtype=np.uint8)
    np.testing.assert_array_equal(sam1_input(rgb), seg.reference.preprocess(rgb).numpy())


def test_constants_known_without_ultralytics_agree_with_it(plain_mobile_sam):
    """The SAM-1 names, their threshold and every file-name answer are Ultralytics' own."""
    from ultralytics.models.sam.build import sam_model_map

    assert set(SAM1_ARCHS) <= {name.removesuffix(".pt") for name in sam_model_map}
    for arch in sam_archs():
        for end in _file_names(arch):
            for name in (f"w/{end}", f"w/my_{end}", f"w/my.{end}"):
                assert _known_without_ultralytics(name, None) in (None, resolve_arch(name))
        assert _known_without_ultralytics("w/x.pt", arch) in (None, arch)
    assert [_known_without_ultralytics(f"w/{a}.pt", None) for a in SAM1_ARCHS] == list(SAM1_ARCHS)
    assert Segmenter(plain_mobile_sam, device="cpu", runtime="torch").threshold == SAM1_THRESHOLD


@pytest.mark.parametrize(
    ("arch", "runtime", "device", "gpu", "applies"),
    [
        ("mobile_sam", "auto", None, False, True),
        ("mobile_sam", "onnx", "cpu", True, True),
        ("sam_b", "auto", "", False, True),
        ("mobile_sam", "auto", None, True, False),  # Ultralytics would pick the GPU: auto means PyTorch there
        ("mobile_sam", "auto", "0", False, False),
        ("mobile_sam", "torch", "cpu", False, False),
        ("sam2_t", "auto", "cpu", False, False),
        ("medsam", "auto", "cpu", False, False),
    ],
)
def test_when_the_box_path_applies(monkeypatch, arch, runtime, device, gpu, applies):
    monkeypatch.setattr("os.path.exists", lambda p: gpu and p == "/dev/nvidiactl")
    assert _box_path_applies(arch, runtime, device) is applies


def test_box_path_answers_as_the_model_path(plain_mobile_sam, checked_cache, monkeypatch):
    """Masks, scores and stability of the box path equal those of ``predict`` on the built model (to float rounding
    of the upsampling products: no pixel differs on these images), and building the model reuses the sessions."""
    opened = []
    real_open = onnx_sessions.open_session
    monkeypatch.setattr(onnx_sessions, "open_session", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    seg = Segmenter(plain_mobile_sam, device="cpu", runtime="auto", cache_dir=checked_cache)
    assert seg._boxes is not None and seg._reference is None and seg.runtime == "onnx" and seg.batch == 8
    for hw, seed in [((480, 640), 1), ((333, 517), 2)]:
        rgb = np.random.default_rng(seed).integers(0, 256, (*hw, 3), dtype=np.uint8)
        xyxy = _boxes(11, hw, seed)
        got = seg(rgb, Instances(xyxy=xyxy, class_id=np.zeros(len(xyxy))))
        assert seed > 1 or seg._reference is None  # box prompts built no model (predict builds it, below)
        pred = seg.predict(seg.set_image(rgb), boxes=got.xyxy)  # the model path, on the box path's encoding
        for i in range(len(xyxy)):
            mask, stability = pred.upsampler.mask_and_stability(pred.logits[i, 0], pred.threshold)
            np.testing.assert_array_equal(got.masks[i].full(hw), mask.full(hw))
            assert got.extras["stability_score"][i] == pytest.approx(round(stability, 4), abs=1e-4)
        np.testing.assert_allclose(got.mask_score, pred.scores[:, 0], rtol=0, atol=1e-6)
    assert len(opened) == 2  # the encoder and the box decoder, opened once for both paths


def test_set_image_after_the_box_path_does_not_encode_again(plain_mobile_sam, checked_cache):
    seg = Segmenter(plain_mobile_sam, device="cpu", runtime="onnx", cache_dir=checked_cache)
    rgb = np.random.default_rng(5).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    seg(rgb, Instances(xyxy=_boxes(2, (200, 300), 5), class_id=np.zeros(2)))
    runs = []
    session = seg.backend.encoder.session
    real_run = session.run
    seg.backend.encoder.session = type("Counting", (), {"run": lambda _s, *a: runs.append(1) or real_run(*a)})()
    emb = seg.set_image(rgb)
    assert runs == [] and tuple(emb.features.shape) == (1, 256, 64, 64)
    seg.set_image(rgb[::-1].copy())
    assert runs == [1]


def test_a_run_on_checked_exports_imports_neither_torch_nor_ultralytics(plain_mobile_sam, checked_cache, tmp_path):
    """``samlabel convert`` of a box dataset, exports in the cache: PyTorch and Ultralytics are never imported."""
    from tests.conftest import draw_scene

    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    (data / "classes.txt").write_text("disc\n")
    import cv2

    for i in range(2):
        boxes = [(25, 25, 55, 55), (88 - i * 10, 48, 132 - i * 10, 92)]
        rgb = draw_scene(discs=[((x0 + x1) // 2, (y0 + y1) // 2, (x1 - x0) // 2) for x0, y0, x1, y1 in boxes])
        cv2.imwrite(str(data / "images" / f"im{i}.png"), rgb[..., ::-1])
        h, w = rgb.shape[:2]
        rows = [
            f"0 {(x0 + x1) / 2 / w} {(y0 + y1) / 2 / h} {(x1 - x0) / w} {(y1 - y0) / h}" for x0, y0, x1, y1 in boxes
        ]
        (data / "labels" / f"im{i}.txt").write_text("\n".join(rows) + "\n")
    script = textwrap.dedent(
        f"""
        import json, sys
        from pipeline.cli import main
        code = main(["convert", {str(data)!r}, "--out", {str(tmp_path / "out")!r}, "--segmenter",
                     {str(plain_mobile_sam)!r}, "--cache-dir", {str(checked_cache)!r}, "--quiet"])
        print(json.dumps({{"code": code, "torch": "torch" in sys.modules, "ultralytics": "ultralytics" in sys.modules}}))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"code": 0, "torch": False, "ultralytics": False}
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["instances_total"] > 0 and report["skipped_images"] == []
