"""HQ-SAM on PyTorch with its authors' model code (``segment_anything_hq``), as their ``SamPredictor`` runs it.

HQ-SAM's decoder adds a high-quality output token whose mask is computed from the image embedding
and the encoder's early features (the output of the first global-attention block; TinyViT's first
stage for Light HQ-SAM), which Ultralytics' SAM does not compute, so this backend runs the authors'
modules directly. Preprocessing and upsampling follow the ``segment_anything`` profile
(:mod:`pipeline.sam.profiles`).

The mask of a prompt is combined as ``SamPredictor.predict`` does by default (``hq_token_only=False``):
the sum of SAM's mask logits and the HQ token's. With ``multimask`` each of SAM's three candidates gets
the HQ logits added (the authors' ``multimask_output=True`` returns the one of them with the best
predicted IoU, which is what ``--multimask score`` picks); scores are SAM's predicted IoU of each.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import torch
from torch import nn

from pipeline.sam.profiles import profile_of
from pipeline.sam.prompts import Prompts
from pipeline.threads import torch_threads

HqFeatures = dict[str, torch.Tensor]


class HqEncoder(nn.Module):
    """HQ-SAM's image encoder as a module with one dict output: ``image_embed`` (1, 256, 64, 64) and
    ``interm`` (1, 64, 64, C), the early feature the HQ decoder reads (the others are not used)."""

    def __init__(self, image_encoder: nn.Module) -> None:
        super().__init__()
        self.image_encoder = image_encoder

    def forward(self, image: torch.Tensor) -> HqFeatures:
        embed, interm = self.image_encoder(image)
        return {"image_embed": embed, "interm": interm[0]}


class HqBackend:
    """Encode and decode an HQ-SAM model (``segment_anything_hq.modeling.Sam``); the interface of ``TorchBackend``.

    Attributes:
        name: ``"torch"``.
        arch: ``sam_hq_vit_b`` / ``_l`` / ``_h`` / ``_tiny``.
        profile: the ``segment_anything`` profile.
        device, dtype: where and in what float type the model runs (float32).
        sam2: ``False``.
        threshold: the model's mask logit threshold (0).
    """

    name = "torch"
    sam2 = False

    def __init__(self, model: nn.Module, *, arch: str, device: str | None = None) -> None:
        from ultralytics.utils.torch_utils import select_device

        with torch_threads():  # select_device sets torch's global thread count
            self.device: torch.device = select_device(device or "", verbose=False)
        self.arch = arch
        self.profile = profile_of(arch)
        self.model = model.to(self.device).eval()
        self.dtype = torch.float32
        self.threshold = float(getattr(model, "mask_threshold", 0.0))
        self._encoder = HqEncoder(cast(nn.Module, self.model.image_encoder)).eval()

    @property
    def image_encoder(self) -> nn.Module:
        """(1, 3, 1024, 1024) normalized image -> ``{"image_embed", "interm"}`` (what the ONNX encoder exports)."""
        return self._encoder

    def decoder_parts(self) -> None:
        """None: the HQ decoder is not exported to ONNX (it runs on PyTorch)."""
        return None

    def preprocess(self, rgb: np.ndarray) -> torch.Tensor:
        """uint8 (H, W, 3) RGB -> the (1, 3, 1024, 1024) encoder input (``ResizeLongestSide``, normalize, pad)."""
        return torch.from_numpy(self.profile.preprocess(rgb)).to(self.device)

    def encode(self, image: torch.Tensor) -> HqFeatures:
        """Decoder-ready features of one encoder input."""
        return self._encoder(image)

    def features(self, encoded: HqFeatures) -> HqFeatures:
        """The encoder's output is decoder-ready as it is."""
        return encoded

    def decode(self, features: HqFeatures, prompts: Prompts, *, multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-res logits (N, K, 256, 256) and scores (N, K); K = 3 with ``multimask``, else 1.

        SAM's logits plus the HQ token's (``hq_token_only=False``, the authors' default).
        """
        pe: Any = self.model.prompt_encoder  # segment_anything_hq's modules (untyped)
        md: Any = self.model.mask_decoder
        points = None if prompts.points is None else (prompts.points, prompts.labels)
        sparse, dense = pe(points=points, boxes=prompts.boxes, masks=prompts.masks)
        embed, interm = features["image_embed"], features["interm"]
        common = {
            "image_embeddings": embed,
            "image_pe": pe.get_dense_pe(),
            "sparse_prompt_embeddings": sparse,
            "dense_prompt_embeddings": dense,
        }
        if not multimask:
            return md(**common, multimask_output=False, hq_token_only=False, interm_embeddings=[interm])
        # MaskDecoderHQ.forward keeps only the best candidate; its own steps, with all three kept.
        hq_features = md.embedding_encoder(embed) + md.compress_vit_feat(interm.permute(0, 3, 1, 2))
        masks, iou = md.predict_masks(**common, hq_features=hq_features)
        hq = md.num_mask_tokens - 1
        return masks[:, 1:hq] + masks[:, hq : hq + 1], iou[:, 1:hq]
