"""Read a checkpoint's state dict safely, and say what keeps it from fitting a model (every SAM family's loader)."""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from pipeline.errors import SamlabelError


def mismatches(state: Mapping[str, object], expected: Mapping[str, torch.Tensor], *, arch: str) -> list[str]:
    """What keeps ``state`` from loading into a model whose state dict is ``expected``, in the model's key order.

    Each item is ``missing key 'k'``, ``key 'k' has shape (a, b), <arch> expects (c, d)`` or
    ``unexpected key 'k'`` (the last ones after the others, in the checkpoint's order).
    """
    problems = []
    for key, tensor in expected.items():
        if key not in state:
            problems.append(f"missing key {key!r}")
        elif tuple(getattr(state[key], "shape", ())) != tuple(tensor.shape):
            got = tuple(getattr(state[key], "shape", ()))
            problems.append(f"key {key!r} has shape {got}, {arch} expects {tuple(tensor.shape)}")
    problems.extend(f"unexpected key {key!r}" for key in state if key not in expected)
    return problems


def read_state_dict(path: Path, *, flag: str) -> Mapping[str, object]:
    """The state dict in ``path``, on the CPU, read with ``weights_only=True``: tensors and plain containers only.

    Never a full unpickle (Ultralytics' ``torch_load`` does one): a pickle runs code when it is opened, and a
    dataset's ``state.json`` names the file that ``samlabel review`` loads. Released SAM and SAM2 weights and
    ``samlabel finetune``'s output are plain state dicts, which this reads.
    """
    try:
        with open(path, "rb") as f:
            state = torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f" (it refers to {found.group(1)})" if found else ""
        raise SamlabelError(
            f"{flag} {path}: holds Python objects besides tensors{what}, which samlabel does not load: opening them "
            "could run code. Save the model's weights alone, torch.save(model.state_dict(), PATH), and pass that"
        ) from None
    except Exception as e:  # noqa: BLE001 - a bad file surfaces as many exception types (zip, torch)
        raise SamlabelError(f"{flag} {path}: cannot load it as SAM weights ({type(e).__name__}: {e})") from None
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]
    if not isinstance(state, Mapping):
        raise SamlabelError(f"{flag} {path}: cannot load it as SAM weights (it holds a {type(state).__name__}, "
                            "not a state dict)")  # fmt: skip
    return state
