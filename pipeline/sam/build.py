"""Load a SAM checkpoint into the Ultralytics architecture it was trained for.

Ultralytics picks the architecture from the end of the file name (``mobile_sam.pt``, ``sam2.1_t.pt``
...). Here ``arch`` can name it instead, so any file name works (``my_finetuned.pt`` with
``arch="mobile_sam"``), and the checkpoint is compared with the architecture before it is loaded:
one that does not fit fails with one line naming the first key that differs.

This module uses Ultralytics' model *builders* (``ultralytics.models.sam.build``) and, for HQ-SAM, the
authors' ``segment_anything_hq.sam_model_registry`` (the optional extra ``samlabel[hq]``); MedSAM is
SAM ViT-B's architecture. Everything that runs a model goes through :mod:`pipeline.sam.torch_backend`
(and :mod:`pipeline.sam.hq_backend`); how each family is run is its profile (:mod:`pipeline.sam.profiles`).
"""

from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING
from unittest import mock

from pipeline.errors import SamlabelError
from pipeline.sam.profiles import EXTRA_ARCHS, SAM1_ARCHS
from pipeline.weights import is_sam3_file

if TYPE_CHECKING:
    import torch

#: One line for a missing ``segment-anything-hq`` (or the ``timm`` its TinyViT needs).
HQ_MISSING = (
    "--sam-arch {arch} (HQ-SAM) needs the optional package segment-anything-hq: pip install 'samlabel[hq]' ({e})"
)


@lru_cache(maxsize=1)
def sam_archs() -> tuple[str, ...]:
    """The architectures: the keys of Ultralytics' ``sam_model_map`` without ``.pt``, then MedSAM and HQ-SAM.

    ``("sam_h", "sam_l", "sam_b", "mobile_sam", "sam2_t", ..., "sam2.1_l", "medsam", "sam_hq_vit_b", ...)``
    with Ultralytics 8.4.
    """
    from ultralytics.models.sam.build import sam_model_map

    return tuple(name.removesuffix(".pt") for name in sam_model_map) + tuple(EXTRA_ARCHS)


def _file_names(arch: str) -> tuple[str, ...]:
    """The file-name endings that say ``arch`` (``sam_b.pt``; ``medsam_vit_b.pth``; ``sam_hq_vit_b.pth`` ...)."""
    return EXTRA_ARCHS[arch][2] if arch in EXTRA_ARCHS else (f"{arch}.pt",)


def resolve_arch(path: str | Path, arch: str | None = None, *, flag: str = "--segmenter") -> str:
    """``arch`` checked against :func:`sam_archs`, or the architecture the file name ends with (``sam3`` for any
    name that starts with ``sam3``: :func:`pipeline.weights.is_sam3_file`).

    Raises:
        SamlabelError: ``arch`` is not an architecture, or it is ``None`` and the file name ends with none.
    """
    known = _known_without_ultralytics(path, arch)
    if known is not None:
        return known
    choices = sam_archs()
    if arch is not None:
        if arch not in choices:
            raise SamlabelError(f"--sam-arch {arch}: expected one of {', '.join(choices)}")
        return arch
    name = Path(path).name
    if is_sam3_file(name):  # SAM 3's interactive head, as Ultralytics' SAM() reads any name with "sam3" in it
        return "sam3"
    matches = [(len(end), a) for a in choices for end in _file_names(a) if name.endswith(end)]
    if not matches:
        ends = ", ".join(end for a in choices for end in _file_names(a)[:1])
        raise SamlabelError(
            f"{flag} {path}: the file name does not say which SAM architecture it holds (it ends with none of "
            f"{ends}); pass --sam-arch, one of {', '.join(choices)}"
        )
    return max(matches)[1]


def _known_without_ultralytics(path: str | Path, arch: str | None) -> str | None:
    """What :func:`resolve_arch` answers for the SAM-1 family (:data:`pipeline.sam.profiles.SAM1_ARCHS`) and the
    architectures samlabel adds, found without importing Ultralytics (and so PyTorch); ``None`` when only
    Ultralytics' ``sam_model_map`` can tell (SAM2 ..., or a name that says nothing)."""
    static = SAM1_ARCHS + tuple(EXTRA_ARCHS)
    if arch is not None:
        return arch if arch in static else None
    name = Path(path).name
    if is_sam3_file(name):
        return "sam3"
    matches = [(len(end), a) for a in static for end in _file_names(a) if name.endswith(end)]
    return max(matches)[1] if matches else None


def load_sam(path: str | Path, arch: str | None = None, *, flag: str = "--segmenter") -> torch.nn.Module:
    """The SAM / SAM2 / SAM 3 (interactive) model of checkpoint ``path``, in eval mode on the CPU.

    Args:
        path: a state dict saved with ``torch.save`` (or a dict holding one under ``"model"``), as
            Ultralytics' and Meta's releases are.
        arch: one of :func:`sam_archs`; ``None`` takes it from the file name, as Ultralytics does.
        flag: the option that set ``path``, named in errors.

    Raises:
        SamlabelError: no architecture (see :func:`resolve_arch`), an unreadable file, or a state dict
            that does not fit the architecture (the message names the first key that differs).
    """
    from pipeline.sam.checkpoint import mismatches, read_state_dict

    arch = resolve_arch(path, arch, flag=flag)
    if arch == "sam3":  # its keys are mapped from Meta's checkpoint layout and its sizes read from the tensors
        from pipeline.concepts.sam3_build import load_interactive_sam3

        return load_interactive_sam3(path, flag=flag)
    state = read_state_dict(Path(path), flag=flag)
    model = build_arch(arch)
    expected = model.state_dict()
    if not any(key in expected for key in state):
        first = ", ".join(repr(k) for k in list(state)[:3])
        raise SamlabelError(f"{flag} {path}: not SAM weights (no {arch} key among its {len(state)} keys: {first} ...)")
    problems = mismatches(state, expected, arch=arch)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise SamlabelError(
            f"{flag} {path}: the checkpoint does not fit {arch}: {problems[0]}{more} "
            "(is it another SAM size? pass the right --sam-arch)"
        )
    model.load_state_dict(state)
    return model.eval()


# Ultralytics' builders read SAM2.1's extra layers from the checkpoint's *name* and then load (or download) it.
# ``build_arch`` hands them the released name and skips their loading by swapping ``_load_checkpoint`` for the
# duration of the call; the swap changes a module attribute, so it is done by one thread at a time.
_BUILD_LOCK = threading.Lock()


def build_arch(arch: str) -> torch.nn.Module:
    """A randomly initialised ``arch`` model built by its authors' builder; nothing is read or downloaded.

    Ultralytics' builders for its architectures and MedSAM (SAM ViT-B), SAM 3's interactive model at Meta's sizes
    (:func:`pipeline.concepts.sam3_build.build_interactive_sam3`), ``segment_anything_hq``'s
    ``sam_model_registry`` for HQ-SAM. The initialisation draws from a forked RNG, so the caller's
    global random state is left as it was.

    Raises:
        SamlabelError: an HQ-SAM architecture without the ``segment-anything-hq`` package.
    """
    import torch

    kind, _, key = EXTRA_ARCHS[arch][1].partition(":") if arch in EXTRA_ARCHS else ("ultralytics", "", arch)
    if kind == "sam3":
        from pipeline.concepts.sam3_build import build_interactive_sam3

        with torch.random.fork_rng(devices=[]):
            return build_interactive_sam3()
    if kind == "sam_hq":
        registry = hq_registry(arch)
        with torch.random.fork_rng(devices=[]):
            return registry[key]()
    from ultralytics.models.sam import build as sam_build

    builder = sam_build.sam_model_map[f"{key}.pt"]
    with (
        _BUILD_LOCK,
        mock.patch.object(sam_build, "_load_checkpoint", lambda model, _checkpoint: model),
        torch.random.fork_rng(devices=[]),
    ):
        return builder(f"{key}.pt")


def hq_registry(arch: str):
    """``segment_anything_hq.sam_model_registry``, or a one-line SamlabelError saying how to install it."""
    import warnings

    try:
        with warnings.catch_warnings():  # timm's notice about the import path segment_anything_hq uses
            warnings.simplefilter("ignore", FutureWarning)
            from segment_anything_hq import sam_model_registry
    except ImportError as e:
        raise SamlabelError(HQ_MISSING.format(arch=arch, e=e)) from None
    return sam_model_registry
