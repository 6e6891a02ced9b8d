"""MedSAM (``--sam-arch medsam``, ``medsam_vit_b.pth``) against the steps of its authors' ``MedSAM_Inference.py``.

The checkpoint is a random-weight SAM ViT-B built by Ultralytics' builder, saved as ``medsam_vit_b.pth``;
the reference loads it with Meta's ``segment_anything.sam_model_registry["vit_b"]`` as MedSAM does and
runs MedSAM's published steps, written out here independently of samlabel's code.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.sam import Segmenter
from pipeline.sam.profiles import MEDSAM
from pipeline.sam.prompts import prepare_prompts
from tests.checkpoints import make_plain_sam_checkpoint
from tests.shapes import disc_scene, mask_iou

segment_anything = pytest.importorskip("segment_anything", reason="Meta's segment-anything: the reference model")
transform = pytest.importorskip("skimage.transform", reason="scikit-image: MedSAM's own resize")

HW = (150, 200)
BOXES = np.array([[10, 12, 90, 100], [60, 30, 190, 140], [120, 5, 160, 60]], dtype=np.float32)


def medsam_preprocess(img_3c: np.ndarray) -> torch.Tensor:
    """MedSAM_Inference.py: resize to 1024 x 1024 (order 3, anti-aliased, uint8), min-max to [0, 1]."""
    img_1024 = transform.resize(img_3c, (1024, 1024), order=3, preserve_range=True, anti_aliasing=True).astype(np.uint8)
    img_1024 = (img_1024 - img_1024.min()) / np.clip(img_1024.max() - img_1024.min(), a_min=1e-8, a_max=None)
    return torch.tensor(img_1024).float().permute(2, 0, 1).unsqueeze(0)


@torch.no_grad()
def medsam_reference(path: Path, img_3c: np.ndarray, boxes: np.ndarray):
    """MedSAM's inference, step by step: masks (N, H, W) bool and the decoder's predicted IoU (N,)."""
    model = segment_anything.sam_model_registry["vit_b"](checkpoint=str(path)).eval()
    H, W, _ = img_3c.shape
    image_embedding = model.image_encoder(medsam_preprocess(img_3c))
    masks, scores = [], []
    for box in boxes:
        box_1024 = np.array([box]) / np.array([W, H, W, H]) * 1024
        box_torch = torch.as_tensor(box_1024, dtype=torch.float)[:, None, :]  # (B, 1, 4)
        sparse, dense = model.prompt_encoder(points=None, boxes=box_torch, masks=None)
        low_res_logits, iou_pred = model.mask_decoder(
            image_embeddings=image_embedding,
            image_pe=model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        low_res_pred = torch.sigmoid(low_res_logits)
        low_res_pred = F.interpolate(low_res_pred, size=(H, W), mode="bilinear", align_corners=False)
        masks.append(low_res_pred.squeeze().cpu().numpy() > 0.5)
        scores.append(float(iou_pred[0, 0]))
    return np.stack(masks), np.array(scores)


@pytest.fixture(scope="module")
def medsam(tmp_path_factory):
    root = tmp_path_factory.mktemp("medsam")
    path = make_plain_sam_checkpoint(root / "medsam_vit_b.pth", arch="sam_b")
    rgb = disc_scene(HW)
    ref_masks, ref_scores = medsam_reference(path, rgb, BOXES)
    assert all(0.02 < m.mean() < 0.98 for m in ref_masks)  # real masks, not empty or full
    return path, rgb, ref_masks, ref_scores


def _masks(seg: Segmenter, rgb: np.ndarray, boxes: np.ndarray):
    pred = seg.predict(seg.set_image(rgb), boxes=boxes)
    return [pred.mask(i).full(rgb.shape[:2]) for i in range(len(boxes))], pred.scores[:, 0]


def test_masks_equal_medsam_inference(medsam):
    # runtime="onnx" is not tested: exporting Ultralytics' ViT-B encoder (SAM-B's, MedSAM's) fails on torch 2.14's
    # TorchScript exporter (a Gather in the neck's LayerNorm2d), for sam_b as for medsam.
    path, rgb, ref_masks, ref_scores = medsam
    seg = Segmenter(str(path), runtime="torch")  # arch from the file name
    assert seg.arch == "medsam" and seg.runtime == "torch"
    masks, scores = _masks(seg, rgb, BOXES)
    ious = [mask_iou(m, r) for m, r in zip(masks, ref_masks, strict=True)]
    assert min(ious) >= 0.999, ious
    np.testing.assert_allclose(scores, ref_scores, atol=1e-4)


def test_the_sam_b_profile_gives_other_masks_on_the_same_weights(medsam, tmp_path):
    """The same weights run the SAM way (letterbox, mean / std, logits > 0) give other masks: a regression fails."""
    path, rgb, ref_masks, _ = medsam
    as_sam_b = shutil.copy(path, tmp_path / "sam_b.pt")
    masks, _ = _masks(Segmenter(str(as_sam_b), runtime="torch"), rgb, BOXES)
    assert min(mask_iou(m, r) for m, r in zip(masks, ref_masks, strict=True)) < 0.95


def test_clicks_are_scaled_per_axis_like_boxes(medsam):
    """MedSAM was trained on boxes; clicks are allowed (outside its training) and land where boxes do."""
    p = prepare_prompts(HW, points=[[[100.0, 75.0]]], point_labels=[[1]], boxes=[[0, 0, 200, 150]], profile=MEDSAM)
    np.testing.assert_allclose(p.points.numpy(), [[[512.0, 512.0]]])
    np.testing.assert_allclose(p.boxes.numpy(), [[0, 0, 1024, 1024]])
    path, rgb, _, _ = medsam
    seg = Segmenter(str(path), runtime="torch")
    pred = seg.predict(seg.set_image(rgb), points=[[[60.0, 60.0]]], point_labels=[[1]], multimask=True)
    assert pred.scores.shape == (1, 3) and MEDSAM.box_only


def test_finetune_encodes_and_validates_with_medsam_preprocessing(medsam, tmp_path):
    """The fine-tune's encoder input is MedSAM's preprocessed image, and its validation masks are MedSAM's."""
    from pipeline.finetune.data import load_training_data
    from pipeline.finetune.loop import predict
    from pipeline.finetune.model import TrainableSam
    from pipeline.images import load_image
    from tests.shapes import write_coco_dataset

    path, _, _, _ = medsam
    sam = TrainableSam(path)
    assert sam.arch == "medsam"
    ds = write_coco_dataset(tmp_path / "ds", {"train": 1, "valid": 1}, seed=0, hw=(96, 128), objects=(2, 2))
    data = load_training_data(ds, profile=sam.profile)
    sample = data.valid[0]
    assert sample.cells == (256, 256)  # the stretched image covers the whole low-res grid
    rgb = load_image(sample.path).rgb
    torch.testing.assert_close(sam.preprocess(rgb), medsam_preprocess(rgb), rtol=0, atol=1e-6)
    pred = predict(sam, sam.encode(rgb), sample, chunk=4)
    ref_masks, ref_scores = medsam_reference(path, rgb, sample.instances.xyxy)
    for mask, ref in zip(pred.masks, ref_masks, strict=True):
        assert mask_iou(mask.full(sample.hw), ref) >= 0.999
    np.testing.assert_allclose(pred.mask_score, ref_scores, atol=1e-4)


def test_a_drawn_mask_is_placed_in_medsams_stretched_frame():
    """Review's mask input (a mask the user drew, fed back to SAM) follows the profile: MedSAM's frame is the
    image stretched to 256 x 256, not letterboxed. The right half of a 100 x 400 image covers the right half
    of every low-resolution row."""
    from pipeline.masks import CropMask
    from pipeline.review.sam import mask_logits

    hw = (100, 400)
    bits = np.zeros(hw, dtype=bool)
    bits[:, 200:] = True
    mask = CropMask.from_full(bits)
    logits = mask_logits(mask, hw, scale_xy=MEDSAM.scale_xy(hw))
    assert (logits[:, 130:] > 0).all() and (logits[:, :126] < 0).all()
    letterboxed = mask_logits(mask, hw)  # the other profiles: content in the top 64 rows only
    assert (letterboxed[:64, 130:] > 0).all() and (letterboxed[65:] < 0).all()
