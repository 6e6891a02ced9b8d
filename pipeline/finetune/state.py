"""The files beside a fine-tune's output: the curve (``<stem>.finetune.json``), the resume state, the lock.

``models/my_sam.pt`` gets ``models/my_sam.finetune.json`` (the curve and summary, rewritten after
every epoch) and ``models/my_sam.finetune-state.pt`` (what a resume needs: the trained weights,
optimizer, schedule, random generator, best so far, and the fingerprint of the data and settings).
Every file is written atomically, the checkpoint before the state, so a kill at any moment leaves
either the previous epoch's state or this one's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline import fsio
from pipeline.errors import SamlabelError

#: Layout version of the resume state; another version is not resumed.
STATE_VERSION = 1


@dataclass(frozen=True)
class Paths:
    """Where a fine-tune writes, all beside ``out``."""

    out: Path

    @property
    def curve(self) -> Path:
        return self.out.with_name(f"{self.out.stem}.finetune.json")

    @property
    def state(self) -> Path:
        return self.out.with_name(f"{self.out.stem}.finetune-state.pt")

    @property
    def lock(self) -> Path:
        return self.out.with_name(f".{self.out.name}.finetune.lock")


def fingerprint(parts: dict) -> str:
    """A hash of ``parts`` (data digest, weights hash, architecture, options)."""
    return hashlib.sha256(json.dumps({"version": STATE_VERSION, **parts}, sort_keys=True).encode()).hexdigest()


def differences(old: dict, new: dict) -> list[str]:
    """What differs between two fingerprint ``parts``: ``data``, ``weights``, ``arch`` or ``option name``."""
    out = [k for k in ("data", "weights", "arch") if old.get(k) != new.get(k)]
    old_opts, new_opts = old.get("options", {}), new.get("options", {})
    out += [
        f"--{k.replace('_', '-')}" for k in sorted(set(old_opts) | set(new_opts)) if old_opts.get(k) != new_opts.get(k)
    ]
    return out


def load_state(paths: Paths, parts: dict, *, overwrite: bool) -> dict | None:
    """The resume state of the same fine-tune, None to start afresh.

    Raises:
        SamlabelError: ``out`` or its state belong to another fine-tune (other data, weights or options)
            or to no fine-tune at all, and ``overwrite`` is False.
    """
    if overwrite:
        return None
    if not paths.state.is_file():
        if paths.out.exists():
            raise SamlabelError(
                f"{paths.out} exists and no fine-tune state is beside it; choose another --out or pass --overwrite"
            )
        return None
    try:
        state = torch.load(paths.state, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:
        raise SamlabelError(
            f"{paths.state}: unreadable fine-tune state ({e}); pass --overwrite to start over"
        ) from None
    if state.get("version") != STATE_VERSION or state.get("fingerprint") != fingerprint(parts):
        what = differences(state.get("parts", {}), parts) or ["the samlabel version"]
        raise SamlabelError(
            f"{paths.out} is from a fine-tune with other {', '.join(what)}; refusing to mix them. Rerun with the "
            "same dataset, weights and options to continue it, pass --overwrite to start over, or choose another --out"
        )
    if not state.get("finished") and not paths.out.is_file():
        raise SamlabelError(f"{paths.out} is missing but its fine-tune state is there; pass --overwrite to start over")
    return state


def save_state(paths: Paths, state: dict) -> None:
    with fsio.atomic_path(paths.state) as tmp:
        torch.save(state, tmp)


def save_checkpoint(path: Path, state_dict: dict[str, torch.Tensor]) -> None:
    """The full model state dict, as the released SAM weights are stored (a plain ``torch.save`` of it)."""
    with fsio.atomic_path(path) as tmp:
        torch.save(state_dict, tmp)


def save_curve(paths: Paths, result: dict) -> None:
    fsio.write_text(paths.curve, json.dumps(result, indent=2) + "\n")


def clear(paths: Paths) -> None:
    """Remove what an earlier fine-tune to ``out`` wrote (``--overwrite``)."""
    for p in (paths.out, paths.curve, paths.state):
        p.unlink(missing_ok=True)


@contextlib.contextmanager
def locked(paths: Paths) -> Iterator[None]:
    """Hold the lock beside ``out`` for the block; a second fine-tune to the same file is refused."""
    paths.lock.parent.mkdir(parents=True, exist_ok=True)
    with fsio.exclusive_lock(paths.lock, busy=f"another samlabel finetune is writing {paths.out}; wait for it to end"):
        yield
