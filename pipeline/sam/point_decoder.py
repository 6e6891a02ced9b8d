"""SAM's mask decoder for point prompts (with or without a box) and no mask input, sharing the image-side work.

The prompts of a point grid (the automatic mask generator) or of review clicks have no mask input, so their
dense prompt is SAM's one learned no-mask vector, the same at every position for every prompt: as for boxes
(:mod:`pipeline.sam.box_decoder`), the image embedding is the same for every prompt until the first
image-to-token attention. :class:`PointDecoder` is :class:`pipeline.sam.box_decoder.BoxDecoder` with

* the sparse tokens of points and box corners as :class:`pipeline.sam.prompt_decoder.PromptDecoder` makes
  them (labels: -1 SAM's padding point, 0 / 1 negative / positive, 2 / 3 the box's corners);
* every mask token's logits and score, so one graph answers single-mask (token 0) and multimask
  (tokens 1-3) prompts as ``MaskDecoder.forward`` slices them. The four masks share the upscaled image
  features; only the last (pixels x C/8) @ (C/8 x 4) product is per token.

Against the prompt decoder's graph (which repeats the image embedding per prompt and always runs the mask
downscaling, on an all-zero mask when there is none) it does the same arithmetic less often, in another
order: logits agree with Ultralytics' decoder to ~1e-5 (``tests/test_sam_point_decoder.py``).
"""

from __future__ import annotations

import torch

from pipeline.sam.box_decoder import BoxDecoder
from pipeline.sam.prompt_decoder import embed_points


class PointDecoder(BoxDecoder):
    """(embedding (1, C, h, w), point_coords (N, P, 2) in encoder-input pixels, point_labels (N, P) float)
    -> (logits (N, 4, 4h, 4w), scores (N, 4)) for every mask token, token 0 (the single mask) first.

    A prompt without a box ends with SAM's padding point (label -1), as
    :meth:`pipeline.sam.prompts.Prompts.as_points` with ``pad=True`` gives it. Built from the ``prompt_encoder``
    and ``mask_decoder`` of a SAM-1 family model; their weights are used as they are, not copied.
    """

    def forward(
        self, embedding: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pe, md = self.prompt_encoder, self.mask_decoder
        sparse = embed_points(pe, point_coords, point_labels)  # (N, P, C)
        queries, keys = self._transformer(embedding, sparse)
        n, (h, w) = sparse.shape[0], embedding.shape[-2:]

        mlps = md.output_hypernetworks_mlps
        hyper = torch.stack([mlp(queries[:, 1 + i]) for i, mlp in enumerate(mlps)], dim=2)  # (N, C/8, K)
        k = hyper.shape[2]
        m = (self._upscaled(keys) @ hyper).reshape(n, h, w, 2, 2, 2, 2, k)  # (N, i, j, a, b, c, d, K)
        logits = m.permute(0, 7, 1, 3, 5, 2, 4, 6).reshape(n, k, 4 * h, 4 * w)  # rows 4i+2a+c, cols 4j+2b+d
        return logits, md.iou_prediction_head(queries[:, 0])


__all__ = ["PointDecoder"]
