"""--runtime onnx / auto: exports checked against PyTorch, kept in a cache folder keyed by the weights' content,
never beside the weights; clean errors and fallbacks."""

from __future__ import annotations

import logging
import os
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from pipeline.errors import SamlabelError  # noqa: E402
from pipeline.sam import Segmenter, Upsampler, onnx_backend, onnx_sessions  # noqa: E402
from pipeline.sam.onnx_cache import CACHE_ENV, OnnxCache, default_cache_dir  # noqa: E402


@pytest.fixture(scope="module")
def onnx_seg(plain_mobile_sam, sam_cache):
    """The ONNX segmenter of the read-only ``plain_mobile_sam``; its exports land in ``sam_cache``."""
    return Segmenter(plain_mobile_sam, device="cpu", runtime="onnx", cache_dir=sam_cache)


def test_onnx_matches_torch_reference(plain_mobile_sam, onnx_seg):
    ref = Segmenter(plain_mobile_sam, device="cpu", runtime="torch")
    assert (ref.runtime, onnx_seg.runtime) == ("torch", "onnx")
    rgb = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    xyxy = np.array([[10, 20, 200, 300], [300, 100, 600, 470], [0, 0, 640, 480]], float)
    p1, p2 = (s.predict(s.set_image(rgb), boxes=xyxy) for s in (ref, onnx_seg))
    assert (p1.logits - p2.logits).abs().max() < 1e-3 and np.abs(p1.scores - p2.scores).max() < 1e-4
    up = Upsampler((480, 640))
    for a, b in zip(p1.logits[:, 0], p2.logits[:, 0], strict=True):
        ma, mb = up(a).full((480, 640)), up(b).full((480, 640))
        assert ma.any() and np.logical_and(ma, mb).sum() / np.logical_or(ma, mb).sum() >= 0.99


def test_read_only_weights_folder_nothing_written_beside_the_weights(plain_mobile_sam, onnx_seg, sam_cache):
    """The weights folder is read-only (0o555; root could still write there, so its listing is checked too)."""
    folder = plain_mobile_sam.parent
    assert not os.stat(folder).st_mode & 0o222
    assert sorted(os.listdir(folder)) == ["mobile_sam.pt"]
    digest = OnnxCache(plain_mobile_sam, arch="mobile_sam").digest
    assert set(os.listdir(sam_cache)) >= {
        f"mobile_sam.{digest}.{g}.{ext}" for g in ("encoder1024", "boxdecoder2") for ext in ("onnx", "check.json")
    }
    assert not [p for p in os.listdir(sam_cache) if p.startswith(".")]  # no temporary files left


def test_second_segmenter_reuses_the_checked_export(plain_mobile_sam, onnx_seg, sam_cache, monkeypatch):
    for name in ("export_encoder", "export_box_decoder", "encoder_self_check", "box_decoder_self_check"):
        monkeypatch.setattr(onnx_backend, name, lambda *a, _n=name, **k: pytest.fail(f"{_n} ran again"))
    assert Segmenter(plain_mobile_sam, device="cpu", runtime="auto", cache_dir=sam_cache).runtime == "onnx"


def test_other_weights_never_use_a_stale_export(plain_mobile_sam, onnx_seg, sam_cache, tmp_path, monkeypatch):
    other = tmp_path / "mobile_sam.pt"
    state = torch.load(plain_mobile_sam)
    next(iter(state.values())).add_(1.0)
    torch.save(state, other)
    assert OnnxCache(other, arch="mobile_sam").digest != OnnxCache(plain_mobile_sam, arch="mobile_sam").digest

    def export(*a, **k):
        raise RuntimeError("exporting anew")

    monkeypatch.setattr(onnx_backend, "export_encoder", export)
    with pytest.raises(SamlabelError, match="exporting anew"):  # the shared cache holds nothing for these weights
        Segmenter(other, device="cpu", runtime="onnx", cache_dir=sam_cache)


def test_unwritable_cache_folder(plain_mobile_sam, tmp_path, caplog):
    """A cache folder under a file cannot be created, even by root."""
    (tmp_path / "file").write_text("")
    cache = tmp_path / "file" / "cache"
    with pytest.raises(SamlabelError) as e:
        Segmenter(plain_mobile_sam, device="cpu", runtime="onnx", cache_dir=cache)
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"--runtime onnx: cannot write the ONNX cache folder {cache} (")
    assert message.endswith("pass a writable --cache-dir or use --runtime torch")
    with caplog.at_level(logging.WARNING):
        assert Segmenter(plain_mobile_sam, device="cpu", runtime="auto", cache_dir=cache).runtime == "torch"
    assert "cannot write the ONNX cache folder" in caplog.text and "using PyTorch" in caplog.text


def test_cache_folder_default_and_environment(tmp_path, monkeypatch):
    import platformdirs

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"
    assert OnnxCache(tmp_path / "w.pt", arch="mobile_sam").dir == tmp_path / "env"
    assert OnnxCache(tmp_path / "w.pt", arch="mobile_sam", cache_dir=tmp_path / "arg").dir == tmp_path / "arg"
    monkeypatch.delenv(CACHE_ENV)
    assert default_cache_dir() == type(default_cache_dir())(platformdirs.user_cache_dir("samlabel"))


def test_missing_onnxruntime(plain_mobile_sam, sam_cache, monkeypatch):
    def no_ort():
        raise ImportError("No module named 'onnxruntime'")

    monkeypatch.setattr(onnx_sessions, "import_ort", no_ort)
    with pytest.raises(SamlabelError, match=r"--runtime onnx: .*pip install samlabel\[onnx\]"):
        Segmenter(plain_mobile_sam, device="cpu", runtime="onnx", cache_dir=sam_cache)
    assert Segmenter(plain_mobile_sam, device="cpu", runtime="auto", cache_dir=sam_cache).runtime == "torch"


def test_failed_self_check_falls_back_in_auto(plain_mobile_sam, onnx_seg, sam_cache, tmp_path, monkeypatch):
    cache = tmp_path / "cache"  # the exports without their check records: the checks run again
    shutil.copytree(sam_cache, cache, ignore=shutil.ignore_patterns("*.check.json"))

    def bad_check(*a, **k):
        raise ValueError("differs from the torch encoder by 3 (max abs)")

    monkeypatch.setattr(onnx_backend, "encoder_self_check", bad_check)
    assert Segmenter(plain_mobile_sam, device="cpu", runtime="auto", cache_dir=cache).runtime == "torch"
    with pytest.raises(SamlabelError, match="differs from the torch encoder"):
        Segmenter(plain_mobile_sam, device="cpu", runtime="onnx", cache_dir=cache)


def test_corrupt_export_is_an_error_not_a_traceback(plain_mobile_sam, onnx_seg, sam_cache, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(sam_cache, cache)
    [encoder] = cache.glob("mobile_sam.*.encoder1024.onnx")
    encoder.write_bytes(b"not onnx")
    with pytest.raises(SamlabelError, match=rf"ONNX Runtime cannot open {encoder.name} "):
        Segmenter(plain_mobile_sam, device="cpu", runtime="onnx", cache_dir=cache)


@pytest.mark.parametrize(
    "graph, export, mask",
    [("pointdecoder", "export_point_decoder", False), ("promptdecoder", "export_prompt_decoder", True)],
    ids=["points", "points+mask"],
)
def test_failing_lazy_decoder(
    plain_mobile_sam, onnx_seg, sam_cache, tmp_path, monkeypatch, caplog, graph, export, mask
):
    """Exported on the first prompt that needs it (the point decoder: no mask input; the prompt decoder: a
    mask input): a failure is an error for onnx, PyTorch for auto."""
    cache = tmp_path / "cache"
    shutil.copytree(sam_cache, cache, ignore=shutil.ignore_patterns(f"*{graph}*"))
    name = {"pointdecoder": "PointDecoder", "promptdecoder": "PromptDecoder"}[graph]

    def bad_export(*a, **k):
        raise RuntimeError(f"ONNX export of {name} failed: no")

    monkeypatch.setattr(onnx_backend, export, bad_export)
    rgb = np.zeros((40, 60, 3), np.uint8)
    prompt = {"points": np.array([[[10.0, 10.0]]]), "point_labels": np.array([[1]])}
    if mask:
        prompt["mask_input"] = np.full((1, 256, 256), 2.0)
    strict = Segmenter(plain_mobile_sam, device="cpu", runtime="onnx", cache_dir=cache)
    emb = strict.set_image(rgb)
    strict.predict(emb, boxes=[[0, 0, 20, 20]])  # box-only single-mask prompts need neither
    with pytest.raises(SamlabelError, match=f"--runtime onnx: cannot use ONNX Runtime for mobile_sam.pt .*{name}"):
        strict.predict(emb, **prompt)
    auto = Segmenter(plain_mobile_sam, device="cpu", runtime="auto", cache_dir=cache)
    with caplog.at_level(logging.WARNING):
        pred = auto.predict(emb, **prompt)
    ref = Segmenter(plain_mobile_sam, device="cpu").predict(emb, **prompt)
    assert torch.equal(pred.logits, ref.logits) and "decoding these prompts with PyTorch" in caplog.text
