"""The traceable prompt decoder computes what Ultralytics' prompt encoder + mask decoder compute, for any
prompt count and point count, and its ONNX export does too."""

from __future__ import annotations

import pytest
import torch

from pipeline.sam import load_sam
from pipeline.sam.prompt_decoder import PromptDecoder, reference_prompt_decoder
from tests.decoder_helpers import LOGITS_ATOL, SCORES_ATOL, random_prompts


@pytest.fixture(scope="module")
def sam(plain_mobile_sam):
    return load_sam(plain_mobile_sam)


@pytest.mark.parametrize("boxes", [False, True], ids=["points", "box+points"])
@pytest.mark.parametrize("with_masks", [False, True], ids=["", "mask"])
def test_same_answers_as_ultralytics(sam, boxes, with_masks):
    """The same operations (broadcasting where Ultralytics repeats): equal up to float rounding.

    Not bit for bit: the two graphs hand the CPU's kernels differently shaped work, and AVX-512 machines
    (AMD EPYC) round a few logits differently in the last bits (3e-6 measured). The tolerance stays far
    below what a wrong operation costs: moving every point by one pixel changes logits by ~2e-2.
    """
    embedding = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(3))
    prompts = random_prompts(3, 2, boxes=boxes, seed=4)
    masks = 3 * torch.randn(3, 1, 256, 256, generator=torch.Generator().manual_seed(5)) if with_masks else None
    coords, labels = prompts.as_points(box_first=False, pad=True)
    decoder = PromptDecoder(sam.prompt_encoder, sam.mask_decoder).eval()
    no_mask = torch.zeros(3, 1, 256, 256) if masks is None else masks
    has_mask = torch.tensor([float(masks is not None)])
    with torch.inference_mode():
        ref_logits, ref_scores = reference_prompt_decoder(sam.prompt_encoder, sam.mask_decoder)(
            embedding, prompts.points, prompts.labels, prompts.boxes, masks
        )
        logits, scores = decoder(embedding, coords, labels.float(), no_mask, has_mask)
        shifted, shifted_scores = decoder(embedding, coords + 1.0, labels.float(), no_mask, has_mask)
    assert logits.shape == (3, 4, 256, 256) and scores.shape == (3, 4)
    assert ref_logits.abs().max() > 1 and (ref_logits > 0).any() and (ref_logits < 0).any()  # a real test
    assert (logits - ref_logits).abs().max() < LOGITS_ATOL and (scores - ref_scores).abs().max() < SCORES_ATOL
    # the tolerances catch a wrong operation: points one pixel off are far outside them
    assert (shifted - ref_logits).abs().max() > 100 * LOGITS_ATOL
    assert (shifted_scores - ref_scores).abs().max() > 100 * SCORES_ATOL


def test_onnx_export_takes_any_prompt_and_point_count(sam, tmp_path):
    pytest.importorskip("onnxruntime")
    from pipeline.sam.onnx_backend import OnnxPromptDecoder, prompt_decoder_self_check
    from pipeline.sam.onnx_export import export_prompt_decoder

    path = export_prompt_decoder(sam.prompt_encoder, sam.mask_decoder, tmp_path / "prompt.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompt.onnx"]  # no temporary files left
    decoder = OnnxPromptDecoder(path)
    assert prompt_decoder_self_check(sam.prompt_encoder, sam.mask_decoder, decoder) < 1e-3
    embedding = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(7))
    reference = reference_prompt_decoder(sam.prompt_encoder, sam.mask_decoder)
    for n, p, boxes in [(1, 1, False), (4, 3, True)]:
        prompts = random_prompts(n, p, boxes=boxes, seed=n)
        with torch.inference_mode():
            ref_logits, ref_scores = reference(embedding, prompts.points, prompts.labels, prompts.boxes)
        logits, scores = decoder(embedding, *prompts.as_points(box_first=False, pad=True), None)
        assert logits.shape == (n, 4, 256, 256) and scores.shape == (n, 4)
        assert (logits - ref_logits).abs().max() < 1e-4 and (scores - ref_scores).abs().max() < 1e-5
