"""SAM 3 in concept mode: every instance of each phrase (and of example boxes) in an image, with its mask.

One image encoding serves every phrase of the image; each phrase's text encoding is computed once per model and
kept; example boxes in another image are encoded once per ``Exemplar`` object. The model itself is Ultralytics'
``SAM3SemanticModel`` (built in ``sam3_build``); what this module adds is the order of the steps, the scores
(presence x instance score) and masks kept as ``CropMask`` at the image's resolution, one at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from pipeline.concepts.exemplar import Exemplar
from pipeline.concepts.sam3_build import IMGSZ, load_sam3
from pipeline.device import check_device
from pipeline.masks import CropMask
from pipeline.threads import torch_threads
from pipeline.types import Instances

LOG = logging.getLogger(__name__)

EXEMPLARS_KEPT = 256  # encoded exemplars kept (oldest dropped first): a run passes the same few on every call
VISUAL = "visual"  # SAM 3's text prompt for example boxes without a phrase (as Ultralytics' predictor uses it)

Features = dict  # SAM3VLBackbone.forward_image's output: "backbone_fpn", "vision_pos_enc", ...
Tokens = tuple[torch.Tensor, torch.Tensor]  # prompt tokens (T, 1, 256) and their padding mask (1, T), True = pad


class Sam3Model:
    """SAM 3's concept predictor (a ``pipeline.types.ConceptModel``); one call at a time (it keeps caches).

    Args:
        weights: SAM 3 weights: Meta's ``sam3.pt`` (Hugging Face ``facebook/sam3``, under Meta's SAM licence) or a
            plain state dict of ``SAM3SemanticModel``; read with ``weights_only=True``, never downloaded.
        device: a torch / Ultralytics device string (``"cpu"``, ``"0"``, ``"cuda:0"``); ``None`` lets Ultralytics
            choose (a GPU when there is one).
        floor: instances scoring at most this (presence x instance score) are not returned; the caller applies
            its own thresholds above it.
        nms_iou: of two instances of one phrase whose predicted boxes overlap more than this (IoU), the
            lower-scoring one is dropped (what Ultralytics' ``SAM3SemanticPredictor`` does).
        imgsz: the side the image is stretched to (a multiple of 14): SAM 3's 1008, or smaller for speed and
            memory at some cost in detail (Ultralytics' ``imgsz``).
        phrase_batch: phrases grounded together; default 16 on a GPU (Ultralytics' ``max_text_batch``), 1 on a CPU,
            where batching gains little and each phrase holds about 1 GB of attention maps at 1008.
        flag: how the messages name the weights' option (``--detector``; ``--segmenter``).

    Raises:
        WeightsNotFoundError: no file at ``weights`` (the one-line message says where to get ``sam3.pt``).
        SamlabelError: the file is not SAM 3 weights or holds Python objects; the tokenizer is missing; ``device``
            is not usable here.
    """

    def __init__(
        self,
        weights: str | Path,
        *,
        device: str | None = None,
        floor: float = 0.05,
        nms_iou: float = 0.7,
        imgsz: int = IMGSZ,
        phrase_batch: int | None = None,
        flag: str = "--detector",
    ) -> None:
        from ultralytics.utils.torch_utils import select_device

        check_device(device)
        if not 0.0 <= floor < 1.0 or not 0.0 < nms_iou <= 1.0:
            raise ValueError(f"Sam3Model: expected 0 <= floor < 1 and 0 < nms_iou <= 1, got {floor}, {nms_iou}")
        if imgsz <= 0 or imgsz % 14:
            raise ValueError(f"Sam3Model: imgsz must be a positive multiple of 14 (SAM 3's patch), got {imgsz}")
        if phrase_batch is not None and phrase_batch < 1:
            raise ValueError(f"Sam3Model: phrase_batch must be at least 1, got {phrase_batch}")
        self.floor = float(floor)
        self.nms_iou = float(nms_iou)
        with torch_threads():
            self.device: torch.device = select_device(device or "", verbose=False)
            self.model: Any = cast(Any, load_sam3(weights, flag=flag))  # Ultralytics' SAM3SemanticModel
            self.model.to(self.device)
        self.imgsz = int(imgsz)
        if self.imgsz != IMGSZ:
            self.model.set_imgsz([self.imgsz, self.imgsz])
        self.phrase_batch = phrase_batch or (16 if self.device.type == "cuda" else 1)
        self.threshold = float(self.model.mask_threshold)
        self._text: dict[str, Tokens] = {}  # phrase -> its text tokens, for the model's lifetime
        self._exemplars: dict[int, tuple[Exemplar, Tokens]] = {}  # id(exemplar) -> it (kept alive) and its tokens

    # -- the ConceptModel call ---------------------------------------------------------------------------------

    def __call__(self, rgb: np.ndarray, phrases: Sequence[str], exemplars: Sequence[Exemplar] = ()) -> list[Instances]:
        """One ``Instances`` per phrase of ``rgb`` (uint8 (H, W, 3)), in ``phrases`` order.

        Each: ``class_id`` 0, ``masks`` filled (``CropMask`` at the image's resolution), ``xyxy`` the masks' boxes
        (pixel edges), ``confidence`` = presence x instance score (above ``floor``), highest first. A phrase's
        ``exemplars`` (``Exemplar.phrase`` equal to it) join its text as box prompts ("more like these").
        """
        rgb = _checked_rgb(rgb)
        phrases = list(phrases)
        unknown = sorted({e.phrase for e in exemplars} - set(phrases))
        if unknown:
            raise ValueError(f"Sam3Model: exemplars for {unknown}, which are not among the phrases {phrases}")
        if not phrases:
            return []
        with torch_threads(), torch.inference_mode():
            features = self.encode_image(rgb)
            self._encode_text(phrases)
            prompts = [
                self._prompt(p, [e for e in exemplars if e.phrase == p], features, rgb.shape[:2]) for p in phrases
            ]
            return self._decode_all(features, prompts, rgb.shape[:2])

    # -- steps ------------------------------------------------------------------------------------------------

    def encode_image(self, rgb: np.ndarray) -> Features:
        """SAM 3's image features of ``rgb``, uint8 (H, W, 3): stretched to ``imgsz`` square, scaled to [-1, 1]."""
        resized = cv2.resize(rgb, (self.imgsz, self.imgsz), interpolation=cv2.INTER_LINEAR)
        image = torch.from_numpy(resized).to(self.device).permute(2, 0, 1)[None].float()
        with torch.inference_mode():
            return self.model.backbone.forward_image((image - 127.5) / 127.5)

    def _encode_text(self, phrases: Sequence[str]) -> None:
        """Encode (in one batch) the phrases not encoded before; an empty phrase is SAM 3's "visual" prompt."""
        new = list(dict.fromkeys(p or VISUAL for p in phrases if (p or VISUAL) not in self._text))
        if not new:
            return
        out = self.model.backbone.forward_text(new)
        for i, text in enumerate(new):
            # clone: a slice would keep the whole batch alive
            self._text[text] = (out["language_features"][:, i : i + 1].clone(), out["language_mask"][i : i + 1].clone())
        LOG.debug("SAM 3: encoded %d phrases (%d kept)", len(new), len(self._text))

    def _prompt(self, phrase: str, exemplars: list[Exemplar], features: Features, hw: tuple[int, int]) -> Tokens:
        """The prompt tokens of one phrase: its text, then the tokens of each of its exemplars."""
        parts = [self._text[phrase or VISUAL]]
        for exemplar in exemplars:
            if exemplar.image is None:
                parts.append(self._box_tokens(features, exemplar, hw))
                continue
            cached = self._exemplars.get(id(exemplar))
            if cached is None or cached[0] is not exemplar:
                own = self.encode_image(np.ascontiguousarray(exemplar.image))
                cached = (exemplar, self._box_tokens(own, exemplar, exemplar.image.shape[:2]))
                self._exemplars[id(exemplar)] = cached
                while len(self._exemplars) > EXEMPLARS_KEPT:
                    del self._exemplars[next(iter(self._exemplars))]
            parts.append(cached[1])
        return torch.cat([t for t, _ in parts], dim=0), torch.cat([m for _, m in parts], dim=1)

    def _box_tokens(self, features: Features, exemplar: Exemplar, hw: tuple[int, int]) -> Tokens:
        """SAM 3's geometry-encoder tokens of ``exemplar``'s boxes on the image whose ``features`` these are."""
        from ultralytics.models.sam.sam3.geometry_encoders import Prompt

        h, w = hw
        xyxy = np.clip(exemplar.xyxy, 0, [w, h, w, h]) / np.array([w, h, w, h], dtype=np.float32)
        cxcywh = np.concatenate([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], axis=1)
        boxes = torch.as_tensor(cxcywh, dtype=torch.float32, device=self.device)[:, None]  # (K, 1, 4)
        labels = torch.as_tensor(exemplar.positive, dtype=torch.long, device=self.device)[:, None]  # (K, 1)
        prompt = Prompt(box_embeddings=boxes, box_labels=labels)
        _, feats, pos, sizes = self._flat(features, batch=1)
        tokens, mask = self.model._encode_prompt(feats, pos, sizes, prompt)
        return tokens, mask

    def _flat(self, features: Features, *, batch: int):
        from ultralytics.models.sam.modules.sam import SAM2Model

        return SAM2Model._prepare_backbone_features(self.model, dict(features), batch=batch)

    def _decode_all(self, features: Features, prompts: list[Tokens], hw: tuple[int, int]) -> list[Instances]:
        """Ground every prompt on the image; prompts of equal length go through the model together (``phrase_batch``
        at most)."""
        results: list[Instances | None] = [None] * len(prompts)
        groups: dict[int, list[int]] = {}
        for i, (tokens, _) in enumerate(prompts):
            groups.setdefault(tokens.shape[0], []).append(i)
        step = self.phrase_batch
        for members in groups.values():
            for start in range(0, len(members), step):
                chunk = members[start : start + step]
                tokens = torch.cat([prompts[i][0] for i in chunk], dim=1)
                mask = torch.cat([prompts[i][1] for i in chunk], dim=0)
                out = self._ground(features, tokens, mask)
                for b, i in enumerate(chunk):
                    results[i] = self._instances(out, b, hw)
        return [r if r is not None else Instances.empty() for r in results]

    def _ground(self, features: Features, prompt: torch.Tensor, prompt_mask: torch.Tensor) -> dict:
        """``SAM3SemanticModel.forward_grounding`` for prompt tokens already made: (T, B, 256), mask (B, T)."""
        model = self.model
        backbone_out, feats, pos, sizes = self._flat(features, batch=prompt.shape[1])
        encoded = model._run_encoder(feats, pos, sizes, prompt, prompt_mask)
        out, hs = model._run_decoder(
            pos_embed=encoded["pos_embed"],
            memory=encoded["encoder_hidden_states"],
            src_mask=encoded["padding_mask"],
            out={},
            prompt=prompt,
            prompt_mask=prompt_mask,
            encoder_out=encoded,
        )
        model._run_segmentation_heads(
            out=out,
            backbone_out=backbone_out,
            encoder_hidden_states=encoded["encoder_hidden_states"],
            prompt=prompt,
            prompt_mask=prompt_mask,
            hs=hs,
        )
        return out

    def _instances(self, out: dict, b: int, hw: tuple[int, int]) -> Instances:
        """Batch item ``b`` of the model's output as instances: scored, floored, NMS'd, masks at the image's size."""
        import torchvision

        h, w = hw
        scores = out["pred_logits"][b, :, 0].sigmoid() * out["presence_logit_dec"][b].sigmoid().reshape(())
        order = torch.nonzero(scores > self.floor).flatten()
        boxes = out["pred_boxes_xyxy"][b, order] * torch.tensor([w, h, w, h], device=scores.device)
        order = order[torchvision.ops.nms(boxes.float(), scores[order].float(), self.nms_iou)]  # best first
        masks, kept = [], []
        for q in order.tolist():
            logits = F.interpolate(out["pred_masks"][b, q][None, None].float(), (h, w), mode="bilinear")[0, 0]
            mask = CropMask.from_full((logits > self.threshold).cpu().numpy())
            if mask.area:  # an empty mask is no object
                masks.append(mask)
                kept.append(q)
        return Instances(
            xyxy=np.array([m.xyxy for m in masks], dtype=np.float32).reshape(-1, 4),
            class_id=np.zeros(len(kept)),
            confidence=scores[kept].float().cpu().numpy(),
            masks=tuple(masks),
        )


def _checked_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or 0 in rgb.shape:
        raise ValueError(f"Sam3Model: expected a uint8 (H, W, 3) RGB image, got {rgb.dtype} {rgb.shape}")
    return np.ascontiguousarray(rgb)
