"""--runtime: ONNX Runtime encoder checked against PyTorch, cached by weights hash, clean fallbacks."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from pipeline.errors import SamlabelError  # noqa: E402
from pipeline.sam import Segmenter, Upsampler  # noqa: E402
from pipeline.sam import onnx_backend as onnx_runtime  # noqa: E402


@pytest.fixture(scope="module")
def plain_sam(tmp_path_factory):
    """A random-weight MobileSAM (not rigged), so logits vary over the image; exported once."""
    from ultralytics.models.sam.build import build_mobile_sam

    path = tmp_path_factory.mktemp("w") / "mobile_sam.pt"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        torch.save(build_mobile_sam().state_dict(), path)
    Segmenter(str(path), device="cpu", runtime="onnx")  # export + self-check, cached beside the weights
    return path


def test_onnx_matches_torch_reference(plain_sam):
    ref = Segmenter(str(plain_sam), device="cpu", runtime="torch")
    fast = Segmenter(str(plain_sam), device="cpu", runtime="onnx")
    assert (ref.runtime, fast.runtime) == ("torch", "onnx")
    rgb = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    xyxy = np.array([[10, 20, 200, 300], [300, 100, 600, 470], [0, 0, 640, 480]], float)
    (l1, s1), (l2, s2) = (s.decode(s.encode(rgb), xyxy, (480, 640)) for s in (ref, fast))
    assert (l1 - l2).abs().max() < 1e-3 and (s1 - s2).abs().max() < 1e-4
    up = Upsampler((480, 640))
    for a, b in zip(l1, l2, strict=True):
        ma, mb = up(a).full((480, 640)), up(b).full((480, 640))
        if ma.any() or mb.any():
            assert np.logical_and(ma, mb).sum() / np.logical_or(ma, mb).sum() >= 0.99


def test_auto_uses_the_checked_cached_export_without_exporting_again(plain_sam, monkeypatch):
    cached = onnx_runtime.cached_encoder_path(plain_sam)
    assert cached.is_file() and cached.with_suffix(".check.json").is_file()
    monkeypatch.setattr(onnx_runtime, "export_encoder", lambda *a, **k: pytest.fail("exported again"))
    assert Segmenter(str(plain_sam), device="cpu", runtime="auto").runtime == "onnx"


def test_changed_weights_never_use_a_stale_export(plain_sam, tmp_path):
    other = tmp_path / "mobile_sam.pt"
    shutil.copy(plain_sam, other)
    assert onnx_runtime.cached_encoder_path(other).name == onnx_runtime.cached_encoder_path(plain_sam).name
    state = torch.load(other)
    next(iter(state.values())).add_(1.0)
    torch.save(state, other)
    assert onnx_runtime.cached_encoder_path(other).name != onnx_runtime.cached_encoder_path(plain_sam).name


def test_missing_onnxruntime(plain_sam, monkeypatch):
    def no_ort():
        raise ImportError("No module named 'onnxruntime'")

    monkeypatch.setattr(onnx_runtime, "_import_ort", no_ort)
    with pytest.raises(SamlabelError, match=r"--runtime onnx: .*pip install samlabel\[onnx\]"):
        Segmenter(str(plain_sam), device="cpu", runtime="onnx")
    assert Segmenter(str(plain_sam), device="cpu", runtime="auto").runtime == "torch"


def test_failed_self_check_falls_back_in_auto(plain_sam, tmp_path, monkeypatch):
    weights = tmp_path / "mobile_sam.pt"
    shutil.copy(plain_sam, weights)
    shutil.copy(onnx_runtime.cached_encoder_path(plain_sam), onnx_runtime.cached_encoder_path(weights))

    def bad_check(*a, **k):
        raise ValueError("differs from the torch encoder by 3 (max abs)")

    monkeypatch.setattr(onnx_runtime, "self_check", bad_check)
    assert Segmenter(str(weights), device="cpu", runtime="auto").runtime == "torch"
    with pytest.raises(SamlabelError, match="differs from the torch encoder"):
        Segmenter(str(weights), device="cpu", runtime="onnx")
