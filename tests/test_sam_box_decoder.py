"""The restructured box decoder computes what Ultralytics' SAM mask decoder computes, for any box count."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.sam.box_decoder import BoxDecoder, reference_box_decoder

BOXES = torch.tensor(
    [
        [10.0, 20.0, 500.0, 400.0],
        [600.0, 100.0, 1000.0, 900.0],
        [0.0, 0.0, 1024.0, 768.0],  # the whole letterboxed content
        [300.0, 300.0, 301.0, 301.0],  # one pixel
        [5.0, 700.0, 900.0, 760.0],
    ]
)


@pytest.fixture(scope="module")
def sam():
    """MobileSAM with random weights, its decoder and prompt encoder pushed away from their init."""
    from ultralytics.models.sam.build import build_mobile_sam

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_mobile_sam().eval()
        with torch.no_grad():
            for p in [*model.mask_decoder.parameters(), *model.prompt_encoder.parameters()]:
                p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("n", [1, 2, 5])
def test_same_logits_and_scores_as_ultralytics(sam, n):
    embedding = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(n))
    boxes = BOXES[:n]
    with torch.inference_mode():
        ref_logits, ref_scores = reference_box_decoder(sam.prompt_encoder, sam.mask_decoder)(embedding, boxes)
        logits, scores = BoxDecoder(sam.prompt_encoder, sam.mask_decoder).eval()(embedding, boxes)
    assert logits.shape == ref_logits.shape == (n, 1, 256, 256) and scores.shape == ref_scores.shape == (n, 1)
    assert ref_logits.abs().max() > 1 and (ref_logits > 0).any() and (ref_logits < 0).any()  # a real test
    assert (logits - ref_logits).abs().max() < 1e-4
    assert (scores - ref_scores).abs().max() < 1e-5
    # each box's output depends on its own box only: one box alone gives the same answer as in a batch
    with torch.inference_mode():
        alone, _ = BoxDecoder(sam.prompt_encoder, sam.mask_decoder).eval()(embedding, boxes[-1:])
    assert (alone[0] - logits[-1]).abs().max() < 1e-4


def test_pixel_order_of_the_upscaling(sam):
    """A single hot channel at one token lights exactly that token's 4 x 4 pixel block, as ConvTranspose does."""
    dec = BoxDecoder(sam.prompt_encoder, sam.mask_decoder).eval()
    keys = torch.zeros(1, 64 * 64, 256)
    keys[0, 5 * 64 + 7] = torch.randn(256)  # token (i=5, j=7)
    hyper = torch.randn(1, 32)
    with torch.inference_mode():
        got = dec._upscaled_logits(keys, hyper, 64, 64)[0]
        grid = keys.transpose(1, 2).reshape(1, 256, 64, 64)
        up = sam.mask_decoder.output_upscaling(grid)
        want = (hyper @ up.flatten(2)).reshape(256, 256)
        background = dec._upscaled_logits(torch.zeros_like(keys), hyper, 64, 64)[0]
    assert torch.allclose(got, want, atol=1e-5)
    block = (got - background).abs() > 1e-6
    rows, cols = np.nonzero(block.numpy())
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (20, 23, 28, 31)


def test_onnx_export_takes_any_box_count(sam, tmp_path):
    pytest.importorskip("onnxruntime")
    from pipeline.sam.onnx_backend import OnnxBoxDecoder, box_decoder_self_check
    from pipeline.sam.onnx_export import export_box_decoder

    path = export_box_decoder(sam.prompt_encoder, sam.mask_decoder, tmp_path / "box.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["box.onnx"]  # no temporary files left
    decoder = OnnxBoxDecoder(path)
    assert box_decoder_self_check(sam.prompt_encoder, sam.mask_decoder, decoder) < 1e-3
    embedding = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(7))
    ref = reference_box_decoder(sam.prompt_encoder, sam.mask_decoder)
    for n in (1, 3, 9):
        boxes = BOXES.repeat(2, 1)[:n]
        with torch.inference_mode():
            ref_logits, ref_scores = ref(embedding, boxes)
        logits, scores = decoder(embedding, boxes)
        assert logits.shape == (n, 1, 256, 256)
        assert (logits - ref_logits).abs().max() < 1e-4 and (scores - ref_scores).abs().max() < 1e-5
