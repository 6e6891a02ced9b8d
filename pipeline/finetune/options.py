"""Fine-tuning options: one frozen dataclass; each field carries its CLI help, so the flags cannot drift."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import SamlabelError

#: What ``--train`` can name: the mask decoder alone, or it and the prompt encoder.
TRAIN_PARTS = ("decoder", "decoder+prompt")


def _opt(default: Any, help: str, choices: tuple | None = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class FinetuneOptions:
    """What a fine-tune does; every field is part of its fingerprint (a resume needs the same values)."""

    epochs: int = _opt(30, "passes over the training objects (fewer when validation stops improving)")
    lr: float = _opt(3e-4, "AdamW learning rate (after a linear warm-up over the first 50 steps; cosine decay)")
    batch: int = _opt(2, "objects per optimizer step")
    clicks: int = _opt(1, "rounds of corrective clicks after the box prompt, each from the previous error")
    train: str = _opt("decoder", "what is trained; the image encoder stays frozen", TRAIN_PARTS)
    patience: int = _opt(8, "stop after this many epochs without a better validation IoU (0: never)")
    val_fraction: float = _opt(0.2, "share of the training images that validate when the dataset has no valid split")
    box_jitter: float = _opt(0.05, "std of each box edge's shift, as a fraction of the box side (SAM: 0.1)")
    weight_decay: float = _opt(0.01, "AdamW weight decay")
    seed: int = _opt(0, "seed of the shuffling, box jitter and click sampling")

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (self.batch >= 1, "batch must be >= 1"),
            (self.clicks >= 0, "clicks must be >= 0"),
            (self.train in TRAIN_PARTS, f"train must be one of {', '.join(TRAIN_PARTS)}"),
            (self.patience >= 0, "patience must be >= 0 (0 turns early stopping off)"),
            (0 <= self.val_fraction < 1, "val_fraction must be in [0, 1)"),
            (0 <= self.box_jitter <= 0.5, "box_jitter must be in [0, 0.5]"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
        ]
        bad = [msg for ok, msg in checks if not ok]
        if bad:
            raise SamlabelError(f"fine-tune options: {'; '.join(bad)} (got {dataclasses.asdict(self)})")

    @classmethod
    def make(cls, options: FinetuneOptions | None = None, **overrides: Any) -> FinetuneOptions:
        """``options`` (or the defaults) with ``overrides`` applied; ``None`` values are ignored.

        Raises:
            SamlabelError: an unknown option name, with the known ones.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise SamlabelError(f"unknown fine-tune option(s) {unknown}; known: {sorted(names)}")
        return dataclasses.replace(options or cls(), **{k: v for k, v in overrides.items() if v is not None})
