"""What the ONNX decoder tests share: their tolerances and random prompts in encoder-input pixels."""

from __future__ import annotations

import torch

from pipeline.sam.prompts import Prompts

#: Largest difference allowed between two computations of the same decoder (float rounding, any CPU; the
#: box decoder, built the same way as the point decoder, differs from the reference by ~3e-6).
LOGITS_ATOL = 5e-5
SCORES_ATOL = 5e-6


def random_prompts(n: int, p: int, *, boxes: bool, seed: int) -> Prompts:
    """``n`` prompts of ``p`` points (labels 0 / 1) each, with a box when ``boxes``, from a generator seeded ``seed``."""
    g = torch.Generator().manual_seed(seed)
    xy0 = torch.rand(n, 2, generator=g) * 600
    return Prompts(
        boxes=torch.cat([xy0, xy0 + 20 + torch.rand(n, 2, generator=g) * 400], dim=1) if boxes else None,
        points=torch.rand(n, p, 2, generator=g) * 1000,
        labels=torch.randint(0, 2, (n, p), generator=g, dtype=torch.int32),
    )
