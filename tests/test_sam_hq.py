"""HQ-SAM (``--sam-arch sam_hq_vit_*``) against its authors' ``segment_anything_hq.SamPredictor``.

Checkpoints are random-weight models built by the authors' own ``sam_model_registry`` (Light HQ-SAM's
TinyViT in the fast tests, ViT-B marked slow), with the decoder and prompt encoder moved a little so
that masks depend on image and box. samlabel's masks must equal the predictor's (``predict(box=...,
multimask_output=False)``, ``hq_token_only=False``: SAM's logits plus the HQ token's) to IoU >= 0.999
and predicted IoU within 1e-4.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.errors import SamlabelError
from pipeline.sam import Segmenter
from pipeline.sam.build import resolve_arch
from tests.shapes import disc_scene, mask_iou

sam_hq = pytest.importorskip("segment_anything_hq", reason="the optional extra samlabel[hq]")

HW = (150, 200)  # not square: the longest-side resize, padding and crop all matter
BOXES = np.array([[10, 12, 90, 100], [60, 30, 190, 140], [120, 5, 160, 60]], dtype=np.float32)


def make_hq_checkpoint(path: Path, key: str, *, seed: int = 0, jitter: float = 0.05) -> Path:
    """A random-weight HQ-SAM state dict built by ``segment_anything_hq.sam_model_registry[key]``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = sam_hq.sam_model_registry[key]()
        with torch.no_grad():
            for p in [*model.mask_decoder.parameters(), *model.prompt_encoder.parameters()]:
                p.add_(jitter * torch.randn_like(p))
    torch.save(model.state_dict(), path)
    return path


def authors(path: Path, key: str, rgb: np.ndarray, boxes: np.ndarray, *, multimask: bool = False):
    """``SamPredictor`` as the HQ-SAM README runs it: masks (N, H, W) bool and scores (N,)."""
    model = sam_hq.sam_model_registry[key](checkpoint=str(path)).eval()
    predictor = sam_hq.SamPredictor(model)
    predictor.set_image(rgb)
    masks, scores = [], []
    for box in boxes:
        m, s, _ = predictor.predict(box=box, multimask_output=multimask)  # hq_token_only=False: the default
        masks.append(m[0])
        scores.append(s[0])
    return np.stack(masks), np.array(scores)


def ours(seg: Segmenter, rgb: np.ndarray, boxes: np.ndarray, *, multimask: bool = False):
    pred = seg.predict(seg.set_image(rgb), boxes=boxes, multimask=multimask)
    return pred, [[pred.mask(i, k).full(rgb.shape[:2]) for k in range(pred.scores.shape[1])] for i in range(len(boxes))]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_hq_checkpoint(tmp_path_factory.mktemp("hq") / "sam_hq_vit_tiny.pth", "vit_tiny")


@pytest.mark.parametrize(
    "key",
    ["vit_tiny", pytest.param("vit_b", marks=pytest.mark.slow)],  # ViT-B: same code path, ~10x the encoder time
)
def test_masks_equal_the_authors_predictor(key, tiny, tmp_path):
    path = tiny if key == "vit_tiny" else make_hq_checkpoint(tmp_path / f"sam_hq_{key}.pth", key)
    rgb = disc_scene(HW)
    seg = Segmenter(str(path), runtime="torch")
    assert seg.arch == f"sam_hq_{key}" and seg.profile.name == "segment_anything"
    pred, masks = ours(seg, rgb, BOXES)
    ref_masks, ref_scores = authors(path, key, rgb, BOXES)
    ious = [mask_iou(masks[i][0], ref_masks[i]) for i in range(len(BOXES))]
    assert min(ious) >= 0.999, ious
    assert all(0.02 < m.mean() < 0.98 for m in ref_masks)  # real masks, not empty or full
    np.testing.assert_allclose(pred.scores[:, 0], ref_scores, atol=1e-4)


def test_best_candidate_is_the_authors_multimask_answer(tiny):
    """Each candidate is SAM's candidate plus the HQ mask; the best-scored is the authors' multimask answer."""
    rgb = disc_scene(HW)
    pred, masks = ours(Segmenter(str(tiny), runtime="torch"), rgb, BOXES, multimask=True)
    ref_masks, ref_scores = authors(tiny, "vit_tiny", rgb, BOXES, multimask=True)
    for i in range(len(BOXES)):
        best = int(np.argmax(pred.scores[i]))
        assert mask_iou(masks[i][best], ref_masks[i]) >= 0.999
        assert abs(pred.scores[i, best] - ref_scores[i]) <= 1e-4


def test_auto_runtime_says_once_the_decoder_runs_on_pytorch(tiny, tmp_path, caplog):
    """The encoder (with the early features the HQ decoder reads) runs on ONNX Runtime; the decoder stays on
    PyTorch, said once; masks equal the PyTorch runtime's."""
    rgb = disc_scene(HW)
    with caplog.at_level(logging.INFO, logger="pipeline.sam"):
        seg = Segmenter(str(tiny), runtime="auto", cache_dir=tmp_path / "cache")
        _, masks = ours(seg, rgb, BOXES)
        ours(seg, rgb, BOXES)
    said = [r.getMessage() for r in caplog.records if "no ONNX export" in r.getMessage()]
    assert len(said) == 1 and "sam_hq_vit_tiny decoder" in said[0] and "runs on PyTorch" in said[0]
    assert seg.runtime == "onnx" and seg.backend.box_decoder is None
    _, reference = ours(Segmenter(str(tiny), runtime="torch"), rgb, BOXES)
    assert min(mask_iou(m[0], r[0]) for m, r in zip(masks, reference, strict=True)) >= 0.999


def test_file_names_say_the_architecture():
    for key in ("vit_b", "vit_l", "vit_h", "vit_tiny"):
        assert resolve_arch(f"weights/sam_hq_{key}.pth") == f"sam_hq_{key}"
    assert resolve_arch("sam_b.pt") == "sam_b"  # unchanged for Ultralytics' names


def test_missing_package_is_one_line_with_the_fix(tiny, monkeypatch):
    monkeypatch.setitem(sys.modules, "segment_anything_hq", None)  # import fails as when not installed
    with pytest.raises(SamlabelError, match=r"segment-anything-hq: pip install 'samlabel\[hq\]'") as e:
        Segmenter(str(tiny), runtime="torch")
    assert "\n" not in str(e.value)


def test_finetune_refuses_hq_clearly(tiny):
    from pipeline.finetune.model import TrainableSam

    with pytest.raises(SamlabelError, match="fine-tuning HQ-SAM is not supported"):
        TrainableSam(tiny)
