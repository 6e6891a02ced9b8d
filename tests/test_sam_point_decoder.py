"""The point decoder (prompts without a mask input, the image-side work shared) computes what Ultralytics'
prompt encoder + mask decoder compute, for every mask token, any prompt and point count, with and without a
box; its ONNX export does too, and the ONNX backend sends it exactly the prompts it is for."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.sam import load_sam
from pipeline.sam.point_decoder import PointDecoder
from pipeline.sam.prompt_decoder import reference_prompt_decoder
from tests.decoder_helpers import LOGITS_ATOL, SCORES_ATOL, random_prompts


@pytest.fixture(scope="module")
def sam(plain_mobile_sam):
    return load_sam(plain_mobile_sam)


@pytest.mark.parametrize("n, p", [(1, 1), (3, 2), (5, 3)])
@pytest.mark.parametrize("boxes", [False, True], ids=["points", "box+points"])
def test_same_answers_as_ultralytics(sam, n, p, boxes):
    """Every mask token (0: the single mask, 1-3: the multimask candidates) and score, up to float rounding
    (not bit for bit: the sums run in another order)."""
    embedding = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(3))
    prompts = random_prompts(n, p, boxes=boxes, seed=4)
    coords, labels = prompts.as_points(box_first=False, pad=True)
    decoder = PointDecoder(sam.prompt_encoder, sam.mask_decoder).eval()
    with torch.inference_mode():
        ref_logits, ref_scores = reference_prompt_decoder(sam.prompt_encoder, sam.mask_decoder)(
            embedding, prompts.points, prompts.labels, prompts.boxes
        )
        logits, scores = decoder(embedding, coords, labels.float())
        shifted, shifted_scores = decoder(embedding, coords + 1.0, labels.float())
        alone, alone_scores = decoder(embedding, coords[-1:], labels[-1:].float())
    assert logits.shape == (n, 4, 256, 256) and scores.shape == (n, 4)
    assert ref_logits.abs().max() > 1 and (ref_logits > 0).any() and (ref_logits < 0).any()  # a real test
    assert (logits - ref_logits).abs().max() < LOGITS_ATOL and (scores - ref_scores).abs().max() < SCORES_ATOL
    # the tolerances catch a wrong operation: points one pixel off are far outside them
    assert (shifted - ref_logits).abs().max() > 100 * LOGITS_ATOL
    assert (shifted_scores - ref_scores).abs().max() > 100 * SCORES_ATOL
    # a prompt's answer depends on its own prompt only
    assert (alone[0] - logits[-1]).abs().max() < LOGITS_ATOL and (alone_scores[0] - scores[-1]).abs().max() < 1e-5


def test_onnx_export_takes_any_prompt_and_point_count(sam, tmp_path):
    pytest.importorskip("onnxruntime")
    from pipeline.sam.onnx_backend import OnnxPointDecoder, point_decoder_self_check
    from pipeline.sam.onnx_export import export_point_decoder

    path = export_point_decoder(sam.prompt_encoder, sam.mask_decoder, tmp_path / "point.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["point.onnx"]  # no temporary files left
    decoder = OnnxPointDecoder(path)
    assert point_decoder_self_check(sam.prompt_encoder, sam.mask_decoder, decoder) < 1e-3
    embedding = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(7))
    reference = reference_prompt_decoder(sam.prompt_encoder, sam.mask_decoder)
    for n, p, boxes in [(1, 1, False), (4, 3, True), (9, 1, False)]:
        prompts = random_prompts(n, p, boxes=boxes, seed=n)
        with torch.inference_mode():
            ref_logits, ref_scores = reference(embedding, prompts.points, prompts.labels, prompts.boxes)
        logits, scores = decoder(embedding, *prompts.as_points(box_first=False, pad=True))
        assert logits.shape == (n, 4, 256, 256) and scores.shape == (n, 4)
        assert (logits - ref_logits).abs().max() < 1e-4 and (scores - ref_scores).abs().max() < 1e-5


@pytest.fixture(scope="module")
def segmenters(plain_mobile_sam, sam_cache):
    pytest.importorskip("onnxruntime")
    from pipeline.sam import Segmenter

    onnx = Segmenter(plain_mobile_sam, device="cpu", runtime="onnx", cache_dir=sam_cache)
    return onnx, Segmenter(plain_mobile_sam, device="cpu", runtime="torch")


# (prompt, multimask, the ONNX graph that answers it)
ROUTES = [
    ("points", False, "point"),
    ("points", True, "point"),
    ("box+points", False, "point"),
    ("box+points", True, "point"),
    ("box", True, "prompt"),  # multimask boxes: the prompt decoder, whose masks they have always had
    ("box", False, "box"),  # box-only single-mask: the box decoder, as before
    ("points+mask", False, "prompt"),
    ("points+mask", True, "prompt"),
]


@pytest.mark.parametrize("kind, multimask, graph", ROUTES)
def test_onnx_backend_routes_and_matches_torch(segmenters, monkeypatch, kind, multimask, graph):
    onnx, torch_seg = segmenters
    backend = onnx.backend
    calls = []
    for name, decoder in [
        ("box", backend.box_decoder),
        ("point", backend.point_decoder()),
        ("prompt", backend.prompt_decoder()),
    ]:
        monkeypatch.setattr(type(decoder), "__call__", _counting(type(decoder).__call__, calls, name))
    rgb = np.random.default_rng(1).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    emb = onnx.set_image(rgb)
    g = np.random.default_rng(2)
    prompt = {}
    if "points" in kind:
        prompt["points"] = g.uniform(0, 300, (3, 2, 2))
        prompt["point_labels"] = np.array([[1, 0], [1, 1], [0, 1]])
    if "box" in kind:
        prompt["boxes"] = np.array([[10.0, 20.0, 200.0, 250.0], [150.0, 30.0, 390.0, 290.0], [0.0, 0.0, 400.0, 300.0]])
    if "mask" in kind:
        prompt["mask_input"] = 3 * g.standard_normal((3, 256, 256))
    got = onnx.predict(emb, multimask=multimask, **prompt)
    want = torch_seg.predict(torch_seg.set_image(rgb), multimask=multimask, **prompt)
    assert set(calls) == {graph}
    k = 3 if multimask else 1
    assert got.logits.shape == want.logits.shape == (3, k, 256, 256) and got.scores.shape == (3, k)
    assert (got.logits - want.logits).abs().max() < 1e-3 and np.abs(got.scores - want.scores).max() < 1e-4


def _counting(call, calls: list, name: str):
    def wrapper(self, *a, **k):
        calls.append(name)
        return call(self, *a, **k)

    return wrapper
