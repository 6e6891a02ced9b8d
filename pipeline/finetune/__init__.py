"""Fine-tune SAM on a dataset's own masks: ``finetune(dataset, out, segmenter=...)`` / ``samlabel finetune``.

Modules: ``data`` (samples, low-res targets, embedding cache), ``prompts`` (box jitter, corrective
clicks), ``loss`` (focal + dice + IoU MSE), ``model`` (the SAM model as training sees it), ``loop``
(one epoch, validation), ``state`` (checkpoint, curve and resume files), ``run`` (``finetune``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline.finetune.options import FinetuneOptions

if TYPE_CHECKING:
    from pipeline.finetune.run import finetune, format_table

__all__ = ["FinetuneOptions", "finetune", "format_table"]


def __getattr__(name: str) -> Any:
    """``finetune`` and ``format_table`` are imported on first use: every ``samlabel`` command builds the
    finetune options' parser (``FinetuneOptions``), and only ``finetune`` needs PyTorch, SciPy and the loop."""
    if name in ("finetune", "format_table"):
        from pipeline.finetune import run

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
