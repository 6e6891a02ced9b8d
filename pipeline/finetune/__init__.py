"""Fine-tune SAM on a dataset's own masks: ``finetune(dataset, out, segmenter=...)`` / ``samlabel finetune``.

Modules: ``data`` (samples, low-res targets, embedding cache), ``prompts`` (box jitter, corrective
clicks), ``loss`` (focal + dice + IoU MSE), ``model`` (the SAM model as training sees it), ``loop``
(one epoch, validation), ``state`` (checkpoint, curve and resume files), ``run`` (``finetune``).
"""

from __future__ import annotations

from pipeline.finetune.options import FinetuneOptions
from pipeline.finetune.run import finetune, format_table

__all__ = ["FinetuneOptions", "finetune", "format_table"]
