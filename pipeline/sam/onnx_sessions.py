"""ONNX Runtime sessions of the SAM exports, with no PyTorch: the numpy side of :mod:`pipeline.sam.onnx_backend`.

Opening a session and running it needs only ``onnxruntime`` and numpy, so the box path of a run whose exports are
already in the cache (:class:`pipeline.sam.segmenter.Segmenter`'s ONNX box path) starts without importing PyTorch
(about 2 s of every run's start on a 2-core CPU). Exporting and checking the graphs stay in
:mod:`pipeline.sam.onnx_backend` and :mod:`pipeline.sam.onnx_export`, which need PyTorch.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from pipeline.sam.profiles import SAM_INPUT
from pipeline.threads import default_threads

logger = logging.getLogger(__name__)

#: Cache names of the exported graphs (:class:`pipeline.sam.onnx_cache.OnnxCache`); a new number is a new export.
ENCODER = f"encoder{SAM_INPUT}"
BOX_DECODER = "boxdecoder2"
PROMPT_DECODER = "promptdecoder1"
POINT_DECODER = "pointdecoder1"
#: The encoder runs on CUDA when onnxruntime has it, else on the CPU; the decoders on the CPU.
ENCODER_PROVIDERS = ["CUDAExecutionProvider", "CPUExecutionProvider"]


def import_ort() -> Any:
    """Import onnxruntime or raise an ImportError that says how to install it."""
    try:
        import onnxruntime
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "The ONNX runtime backend needs the optional dependencies: pip install 'samlabel[onnx]' "
            "(onnx and onnxruntime)."
        ) from e
    return onnxruntime


# ORT's global thread pool is process-wide by nature: it can be set only once, before ORT's environment
# exists, so whether this process's sessions share it is one value for the process, decided by the first
# session (None: not decided yet). The lock makes that first decision once when sessions open concurrently.
_GLOBAL_POOL: list[bool | None] = [None]
_GLOBAL_POOL_LOCK = threading.Lock()


def session_options(threads: int | None = None) -> Any:
    """ORT session options: every optimization, errors-only logging, and threads that do not fight.

    Sessions created without an explicit ``threads`` share one process-wide intra-op pool (as many
    threads as ``pipeline.threads.default_threads()``). With a pool per session, the encoder's threads
    keep spinning after its call while the decoder's start: measured 0.95 s -> 0.88 s per image
    (encoder + 5 boxes) with the shared pool. If the shared pool cannot be set up (ORT's environment
    already exists), each session gets its own pool without spinning.
    """
    ort = import_ort()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only; ORT's shape-merge warnings are harmless
    shared = threads is None and _shared_pool()
    if shared:
        so.use_per_session_threads = False
    else:
        if threads is not None:
            so.intra_op_num_threads = int(threads)
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def _shared_pool() -> bool:
    with _GLOBAL_POOL_LOCK:
        if _GLOBAL_POOL[0] is None:
            try:
                from onnxruntime.capi import _pybind_state

                _pybind_state.set_global_thread_pool_sizes(default_threads(), 1)
                _GLOBAL_POOL[0] = True
            except Exception as e:  # noqa: BLE001 - ORT's errors derive from Exception only; all mean: no pool
                logger.debug("no shared ONNX Runtime thread pool (%s)", e)
                _GLOBAL_POOL[0] = False
        return bool(_GLOBAL_POOL[0])


def open_session(path: Path, *, threads: int | None, providers: list[str]) -> Any:
    """An ``InferenceSession`` on ``path``; ORT's own errors (a corrupt file ...) as RuntimeError."""
    ort = import_ort()
    if not Path(path).is_file():
        raise FileNotFoundError(f"ONNX file not found: {path}")
    available = ort.get_available_providers()
    try:
        return ort.InferenceSession(
            str(path), sess_options=session_options(threads), providers=[p for p in providers if p in available]
        )
    except Exception as e:  # noqa: BLE001 - ORT's errors (InvalidProtobuf, Fail ...) derive from Exception only
        raise RuntimeError(
            f"ONNX Runtime cannot open {Path(path).name} ({type(e).__name__}: {e}); delete it to export it again"
        ) from e
