"""``samlabel review``: a local web app (FastAPI) over a :class:`~pipeline.review.store.ReviewStore`.

Everything the page does goes through the JSON API below, which scripts can use too. The API keeps no
edit history: ``PUT /api/images/{id}`` replaces an image's whole state (its instances, proposals and reviewed mark)
with what it is sent, guarded by the image's version; undo and redo live in the page, and undoing after
a save is one more ``PUT`` of the earlier state. ``predict`` changes nothing on disk.

Security: the app binds to 127.0.0.1 unless told otherwise, and every request passes the guard
(:mod:`pipeline.review.guard`) first: it answers only requests whose ``Host`` is ``127.0.0.1``,
``localhost``, ``[::1]`` or the ``--host`` given, any port (else 400: DNS rebinding); every request needs
the token the server prints (``?token=`` on the page's first load sets an HttpOnly SameSite=Strict cookie
and redirects to ``/``, so the token leaves the address bar; scripts send ``Authorization: Bearer
<token>``), compared in constant time, else 403. The browser is opened on a
redirect file readable by the user only, never on the tokenized URL (a command line is visible in ``ps``). Clients name images and
instances by id only, never by path; bodies are bounded (413 beyond); writes need a JSON body (415).
"""

from __future__ import annotations

import html
import logging
import math
import mimetypes
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import webbrowser
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from pipeline.config import Settings
from pipeline.errors import SamlabelError
from pipeline.images import load_image
from pipeline.masks import RleError, checked_rle_to_mask, mask_to_rle
from pipeline.options import Runtime
from pipeline.quality import FLAG_MEANINGS
from pipeline.review.guard import LOOPBACK_HOSTS, Guard
from pipeline.review.sam import Candidate, SamSession
from pipeline.review.store import (
    ImageNotFound,
    InstanceEdit,
    ReviewError,
    ReviewStore,
    StoreStopping,
    VersionConflict,
)

LOGGER = logging.getLogger(__name__)

#: Largest request body accepted (a PUT of a few hundred full-image RLEs fits easily).
MAX_BODY = 8 * 1024 * 1024

#: Most clicks one predict request may carry.
MAX_POINTS = 64

DEFAULT_PORT = 8765

#: The name of the thread that loads SAM in the background (:func:`sam_loading`).
SAM_THREAD = "samlabel-review-sam"

STATIC = Path(__file__).parent / "static"
#: The only files the app serves besides the page and the dataset's images: name -> media type.
#: The page's ES modules (``app.js`` the entry), served as they are.
MODULES = ("app.js", "state.js", "api.js", "rle.js", "canvas.js", "queue.js", "actions.js")
ASSETS = {**dict.fromkeys(MODULES, "text/javascript; charset=utf-8"), "app.css": "text/css; charset=utf-8"}

# ----------------------------------------------------------------------------------------- request bodies


class RleBody(BaseModel):
    size: list[int] = Field(min_length=2, max_length=2)
    counts: str


class InstanceBody(BaseModel):
    """Other fields (what ``GET`` returns: ``bbox``, ``flags`` ...) are ignored, so a script can send back what it got."""

    model_config = ConfigDict(populate_by_name=True)

    id: int | None = None
    class_name: str = Field(alias="class")
    rle: RleBody
    box: list[float] | None = Field(default=None, min_length=4, max_length=4)
    proposal: int | None = None  # a new instance: the id of the proposal it accepts


class PutBody(BaseModel):
    version: int
    reviewed: bool | None = None  # None: unchanged
    instances: list[InstanceBody] | None = None  # None: unchanged
    proposals: list[int] | None = None  # the ids of the proposals that stay; None: unchanged


class PredictBody(BaseModel):
    box: list[float] | None = Field(default=None, min_length=4, max_length=4)
    points: list[list[float]] = Field(default_factory=list, max_length=MAX_POINTS)
    instance: int | None = None
    mask: RleBody | None = None
    multimask: bool | None = None


# ----------------------------------------------------------------------------------------- response bodies


class Counts(BaseModel):
    """Images over the whole dataset: all, reviewed, with a flagged instance, per flag, class and split."""

    images: int
    reviewed: int
    flagged_images: int
    flags: dict[str, int]
    classes: dict[str, int]
    splits: dict[str, int]
    proposals: int  # proposals waiting, and the images that have any
    proposal_images: int


class Meta(BaseModel):
    """``GET /api/meta``: the dataset, its classes (with their colours), the flags and SAM's state."""

    dataset: str
    names: list[str]
    colors: list[str]
    flags: list[str]  # flag names, in ``pipeline.quality.FLAGS`` order
    flag_meanings: dict[str, str]  # the same flags, each with what it means (``pipeline.quality.FLAG_MEANINGS``)
    counts: Counts
    sam: Literal["loading", "ready", "unavailable"]
    sam_error: str | None


class QueueItem(BaseModel):
    """One image of ``GET /api/images`` (:meth:`ReviewStore.images`)."""

    id: str
    file_name: str
    split: str
    instances: int
    flags: list[str]
    flagged: int
    classes: list[str]
    reviewed: bool
    proposals: int


class InstanceOut(BaseModel):
    """One instance of ``GET /api/images/{id}`` (:meth:`ReviewStore.image`)."""

    model_config = ConfigDict(populate_by_name=True)

    id: int
    class_name: str = Field(alias="class")
    class_id: int
    rle: RleBody
    bbox: list[int]  # the mask's tight box, COCO xywh
    box: list[float]  # the prompt box, xyxy
    mask_score: float | None
    confidence: float | None
    flags: list[str]
    signals: dict[str, int | float]
    edited: bool
    source: str | None  # "review" (edited), "proposal" (an accepted proposal) or null


class ProposalOut(BaseModel):
    """One proposal of ``GET /api/images/{id}``: a mask no instance accounts for (``--propose``), no class yet."""

    id: int
    rle: RleBody
    bbox: list[int]  # the mask's tight box, COCO xywh
    box: list[float]  # the same, xyxy
    mask_score: float | None
    signals: dict[str, int | float]


class ImageOut(BaseModel):
    """``GET /api/images/{id}``: one image with its instances."""

    id: str
    file_name: str
    split: str
    width: int
    height: int
    version: int
    reviewed: bool
    instances: list[InstanceOut]
    proposals: list[ProposalOut]


class CandidateOut(BaseModel):
    """One of SAM's candidate masks with its scores."""

    rle: RleBody
    mask_score: float | None
    stability_score: float | None


class Prediction(CandidateOut):
    """``POST /api/images/{id}/predict``: the best candidate's fields, which one it is, and all of them."""

    chosen: int
    candidates: list[CandidateOut]
    multimask: bool
    seconds: float


class Saved(BaseModel):
    """``PUT /api/images/{id}``: the image's version after the save."""

    version: int


# ----------------------------------------------------------------------------------------- the SAM side


class Predictions:
    """SAM's recent candidates by (image id, RLE counts): the logits that refine each one at the next click,
    and the score that a save keeps when the mask it is sent is one of them."""

    def __init__(self, *, logits: int = 96, scores: int = 4096) -> None:
        self._logits: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._scores: OrderedDict[tuple[str, str], tuple[float, float]] = OrderedDict()
        self._caps = (logits, scores)
        self._lock = threading.Lock()

    def put(self, iid: str, counts: str, candidate: Candidate) -> None:
        with self._lock:
            for cache, value, cap in (
                (self._logits, candidate.logits, self._caps[0]),
                (self._scores, (candidate.score, candidate.stability), self._caps[1]),
            ):
                cache[(iid, counts)] = value
                cache.move_to_end((iid, counts))
                while len(cache) > cap:
                    cache.popitem(last=False)

    def logits(self, iid: str, counts: str) -> Any:
        with self._lock:
            return self._logits.get((iid, counts))

    def scores(self, iid: str, counts: str) -> tuple[float, float] | None:
        with self._lock:
            return self._scores.get((iid, counts))


class SamSlot:
    """The SAM session, loaded in the background so the page opens at once (``predict`` answers 503 meanwhile)."""

    def __init__(self, session: Any = None, *, loader: Callable[[], Any] | None = None, error: str | None = None):
        self.session, self.error = session, error
        self.ready = threading.Event()
        if loader is None:
            self.ready.set()
            if session is None and error is None:
                self.error = "no SAM model was given"
            return

        def load() -> None:
            try:
                self.session = loader()
            except SamlabelError as e:
                self.error = str(e)
                LOGGER.warning("SAM not available, clicks and new objects are off: %s", e)
            except Exception as e:  # noqa: BLE001 - any failure to build a model must leave the app usable
                self.error = f"{type(e).__name__}: {e}"
                LOGGER.warning("SAM not available, clicks and new objects are off: %s", self.error)
            finally:
                self.ready.set()

        threading.Thread(target=load, name=SAM_THREAD, daemon=True).start()

    def status(self) -> str:
        if not self.ready.is_set():
            return "loading"
        return "ready" if self.session is not None else "unavailable"

    def get(self) -> Any:
        if not self.ready.is_set():
            raise _Unavailable("SAM is still loading; try again in a moment")
        if self.session is None:
            raise _Unavailable(f"SAM is not available: {self.error}")
        return self.session


class _Unavailable(Exception):
    pass


def sam_loading() -> bool:
    """Whether a SAM model is still being loaded in the background.

    Such a thread is inside torch's C++ code most of the time; at interpreter exit CPython (3.11 to 3.13)
    ends a daemon thread that wakes up with ``pthread_exit``, whose unwinding through those frames calls
    ``std::terminate`` (the process aborts: "terminate called without an active exception"). The
    command line therefore ends the process with ``os._exit`` once the dataset is closed, when this is True.
    """
    return any(t.name == SAM_THREAD and t.is_alive() for t in threading.enumerate())


# ----------------------------------------------------------------------------------------- the app


def create_app(
    store: ReviewStore,
    *,
    token: str,
    sam: Any = None,
    sam_loader: Callable[[], Any] | None = None,
    sam_error: str | None = None,
    cookie: str = "samlabel_review",
    max_body: int = MAX_BODY,
    hosts: tuple[str, ...] | None = LOOPBACK_HOSTS,
) -> Guard:
    """The review app around ``store``, behind the token guard (an ASGI app for uvicorn or TestClient).

    Args:
        store: the opened dataset.
        token: the secret every request must carry.
        sam: a ready SAM session (:class:`~pipeline.review.sam.SamSession` or an object with its methods).
        sam_loader: builds one in the background instead (the page works without SAM until it is ready).
        sam_error: why there is no SAM (shown in the page) when neither is given.
        cookie: the name of the token cookie (one per port: cookies do not tell ports apart).
        max_body: the largest request body in bytes (413 beyond).
        hosts: the host names (``[...]`` around IPv6 addresses) a request's ``Host`` header may give, any
            port; None allows any (a server on every interface).
    """
    slot = SamSlot(sam, loader=sam_loader, error=sam_error)
    predictions = Predictions()
    embedder = ThreadPoolExecutor(1, thread_name_prefix="samlabel-review-embed")
    page = (STATIC / "index.html").read_bytes()
    app = FastAPI(title="samlabel review", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ImageNotFound)
    async def _not_found(_request: Request, e: ImageNotFound) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=404)

    @app.exception_handler(VersionConflict)
    async def _conflict(_request: Request, e: VersionConflict) -> JSONResponse:
        return JSONResponse({"detail": str(e), "version": e.current}, status_code=409)

    @app.exception_handler(ReviewError)
    async def _bad(_request: Request, e: ReviewError) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=400)

    @app.exception_handler(StoreStopping)
    async def _stopping(_request: Request, e: StoreStopping) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=503)

    @app.exception_handler(_Unavailable)
    async def _unavailable(_request: Request, e: _Unavailable) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=503)

    @app.get("/")
    def index() -> Response:
        return Response(page, media_type="text/html; charset=utf-8")

    @app.get("/static/{name}")
    def asset(name: str) -> Response:
        media = ASSETS.get(name)
        if media is None:
            return JSONResponse({"detail": "not found"}, status_code=404)
        return Response((STATIC / name).read_bytes(), media_type=media)

    @app.get("/api/meta", response_model=Meta)
    def meta() -> dict:
        from pipeline.report.thumbs import class_color

        return {
            "dataset": store.out.name,
            "names": store.names,
            "colors": [class_color(i) for i in range(len(store.names))],
            "flags": list(FLAG_MEANINGS),
            "flag_meanings": FLAG_MEANINGS,
            "counts": store.counts(),
            "sam": slot.status(),
            "sam_error": slot.error,
        }

    @app.get("/api/images", response_model=list[QueueItem])
    def images(
        flag: str | None = None,
        split: str | None = None,
        reviewed: bool | None = None,
        class_name: str | None = None,
        sort: Literal["queue", "proposals"] = "queue",
    ) -> list[dict]:
        return store.images(flag=flag, class_name=class_name, split=split, reviewed=reviewed, sort=sort)

    @app.get("/api/images/{iid}", response_model=ImageOut)
    def image(iid: str) -> dict:
        out = store.image(iid)
        if slot.status() == "ready":  # encode it now, so the first click finds the embedding ready
            embedder.submit(_embed, slot.session, store, iid)
        return out

    @app.get("/api/images/{iid}/image")
    def image_file(iid: str) -> Response:
        path = store.image_path(iid)
        media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FileResponse(path, media_type=media, headers={"cache-control": "private, no-cache"})

    @app.post("/api/images/{iid}/predict", response_model=Prediction)
    def predict(iid: str, body: PredictBody) -> dict:
        hw = store.hw(iid)
        session = slot.get()
        box, points, labels = _prompts(body, hw)
        mask, counts = None, None
        if body.mask is not None:
            try:
                mask = checked_rle_to_mask(body.mask.model_dump(), hw)
            except RleError as e:
                raise ReviewError(f"mask: {e}") from None
            counts = body.mask.counts
        elif body.instance is not None:
            mask = store.instance_mask(iid, body.instance)
            counts = mask_to_rle(mask, hw)["counts"]
        mask_input = None
        if mask is not None and mask.area:
            mask_input = predictions.logits(iid, counts)
            if mask_input is None:
                mask_input = session.mask_input(mask, hw)
        multimask = body.multimask if body.multimask is not None else len(body.points) <= 1
        started = time.perf_counter()
        _embed(session, store, iid)
        candidates = session.predict(
            iid, box=box, points=points, point_labels=labels, mask_input=mask_input, multimask=multimask
        )
        answers = []
        for c in candidates:
            rle = mask_to_rle(c.mask, hw)
            predictions.put(iid, rle["counts"], c)
            answers.append({"rle": rle, "mask_score": _num(c.score), "stability_score": _num(c.stability)})
        best = int(np.argmax([c.score for c in candidates]))
        return {
            **answers[best],
            "chosen": best,
            "candidates": answers,
            "multimask": multimask,
            "seconds": round(time.perf_counter() - started, 4),
        }

    @app.put("/api/images/{iid}", response_model=Saved)
    def put(iid: str, body: PutBody) -> dict:
        if body.instances is None:
            current = store.image(iid)["instances"]
            edits = [InstanceEdit(i["id"], i["class"], i["rle"]) for i in current]
        else:
            edits = [
                InstanceEdit(
                    i.id, i.class_name, i.rle.model_dump(), i.box if i.box is None else list(i.box), i.proposal
                )
                for i in body.instances
            ]
        reviewed = body.reviewed if body.reviewed is not None else store.reviewed(iid)
        version = store.save(
            iid,
            version=body.version,
            reviewed=reviewed,
            instances=edits,
            known_mask=lambda counts: predictions.scores(iid, counts),
            proposals=body.proposals,
        )
        return {"version": version}

    return Guard(app, token=token, cookie=cookie, max_body=max_body, hosts=hosts, on_close=embedder.shutdown)


def _embed(session: Any, store: ReviewStore, iid: str) -> None:
    session.embed(iid, lambda: load_image(store.image_path(iid)).rgb)


def _prompts(body: PredictBody, hw: tuple[int, int]) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """The request's box (4,) and points (P, 2) with labels (P,), checked: coordinates at most one image
    size outside the image (``1e39`` is a finite float, but not a float32, and no pixel)."""
    if body.box is None and not body.points:
        raise ReviewError("predict needs a box, points, or both")
    reach = max(hw)
    near = lambda v: math.isfinite(v) and -reach <= v <= 2 * reach  # noqa: E731
    box = None
    if body.box is not None:
        if not all(near(v) for v in body.box) or not (body.box[0] < body.box[2] and body.box[1] < body.box[3]):
            raise ReviewError(
                f"box {body.box} is not [x_min, y_min, x_max, y_max] with x_min < x_max, y_min < y_max "
                f"in pixels of the {hw[1]} x {hw[0]} image"
            )
        box = np.asarray(body.box, dtype=np.float32)
    if not body.points:
        return box, None, None
    if any(len(p) != 3 or not all(near(v) for v in p[:2]) or p[2] not in (0, 1) for p in body.points):
        raise ReviewError(
            f"points: expected [[x, y, 1 (positive) or 0 (negative)], ...] in pixels of the {hw[1]} x {hw[0]} image"
        )
    arr = np.asarray(body.points, dtype=np.float32)
    return box, arr[:, :2], arr[:, 2].astype(np.int32)


def _num(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), 6)


# ----------------------------------------------------------------------------------------- serving


def serve(
    out: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    open_browser: bool = True,
    segmenter: str | None = None,
    sam_arch: str | None = None,
    device: str | None = None,
    runtime: Runtime | None = None,
    sam: Any = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the review app for the dataset at ``out`` until interrupted (Ctrl-C, SIGTERM).

    Holds the dataset's run lock all along, so ``samlabel label`` / ``convert`` into it wait their turn.

    Args:
        out: the dataset folder (a finished samlabel run).
        host: the address to listen on; anything but a loopback address is reachable from the network.
        port: the port; 0 picks a free one (the URL passed to ``on_ready`` has the real one).
        open_browser: open the page in a browser when this machine has a display.
        segmenter, sam_arch, device, runtime: the SAM model for clicks and new objects; by default the
            dataset's own (its run's ``--segmenter``, ``--device``, ``--runtime``).
        sam: a ready SAM session instead (tests).
        on_ready: called with the page's URL (token included) once the server listens.

    Raises:
        SamlabelError: not a finished samlabel dataset, another run holds it, or the port is taken.
    """
    import uvicorn

    from pipeline.run.state import locked

    out = Path(out)
    if not out.is_dir():
        raise SamlabelError(f"{out}: no such folder; give the dataset folder samlabel wrote")
    with locked(out):
        store = ReviewStore(out)
        loader = None
        if sam is None:
            loader = sam_loader(store.settings, segmenter=segmenter, sam_arch=sam_arch, device=device, runtime=runtime)
        sock = _bind(host, port)
        real_port = sock.getsockname()[1]
        token = secrets.token_urlsafe(32)
        wide = host in ("0.0.0.0", "::", "")
        hosts = None if wide else (*LOOPBACK_HOSTS, f"[{host}]" if ":" in host else host)
        app = create_app(
            store, token=token, sam=sam, sam_loader=loader, cookie=f"samlabel_review_{real_port}", hosts=hosts
        )
        if not _loopback(host):
            LOGGER.warning(
                "listening on %s: anyone on the network who has the token can view and edit this dataset", host
            )
        shown = "127.0.0.1" if wide else host
        url = f"http://{f'[{shown}]' if ':' in shown else shown}:{real_port}/?token={token}"
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=5)
        server = _make_server(config, store)
        if on_ready is not None:
            on_ready(url)
        opener = None
        if open_browser and _has_display():
            opener = _redirect_file(url)
            threading.Timer(0.5, webbrowser.open, [opener.as_uri()]).start()
        previous = _stop_signals()
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:  # uvicorn re-raises the signal it shut down on: here it is the way to stop
            pass
        finally:
            if opener is not None:
                shutil.rmtree(opener.parent, ignore_errors=True)
            app.close()
            sock.close()
            store.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _redirect_file(url: str) -> Path:
    """A page that sends the browser to ``url``, in a new private folder (0700) and readable by the user only
    (0600): the browser is started on this file, so the token is not on its command line (as Jupyter does)."""
    folder = Path(tempfile.mkdtemp(prefix="samlabel-review-"))
    path = folder / "open.html"
    href = html.escape(url, quote=True)
    text = (
        '<!doctype html>\n<html><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="0;url={href}"><title>samlabel review</title></head>\n'
        f'<body><p>Opening <a href="{href}">samlabel review</a> ...</p></body></html>\n'
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def _make_server(config, store: ReviewStore):
    """uvicorn's server, whose stop first lets the save in progress commit (however long it takes; a second
    Ctrl-C stops waiting), so that its client gets the real answer; saves that come after are refused (503)."""
    import asyncio

    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets=None) -> None:
            while not self.force_exit and not await asyncio.to_thread(store.stop_saving, 0.1):
                pass
            await super().shutdown(sockets)

    return Server(config)


def sam_loader(
    settings: Settings,
    *,
    segmenter: str | None = None,
    sam_arch: str | None = None,
    device: str | None = None,
    runtime: Runtime | None = None,
) -> Callable[[], SamSession]:
    """What builds review's SAM session: the options given, else the dataset's own (its ``state.json`` settings).

    The dataset's weights file is untrusted like the rest of the dataset: it is read as a plain state dict
    (``pipeline.sam.build``; never unpickled), and one that is not says to pass ``--segmenter``. The dataset's
    ``cache_dir`` is not used (ONNX exports would be written wherever it names): the default cache is.
    """
    weights, dev, rt = segmenter or settings.segmenter, device or settings.device, runtime or settings.runtime
    arch = sam_arch or (getattr(settings, "sam_arch", None) if segmenter is None else None)

    def load() -> SamSession:
        try:
            return SamSession.load(weights, arch=arch, device=dev, runtime=rt)
        except SamlabelError as e:
            if segmenter is not None:
                raise
            raise SamlabelError(
                f"the dataset's segmenter (from its .samlabel/state.json) cannot be used: {e}. "
                "Pass --segmenter with SAM weights you trust (e.g. mobile_sam.pt)"
            ) from None

    return load


def _stop_signals() -> dict:
    """Make SIGTERM end the server like Ctrl-C does (uvicorn shuts down gracefully, then re-raises the
    signal: with the default SIGTERM action the process would die before report.html is rebuilt)."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def stop(_signum, _frame):
        raise KeyboardInterrupt

    return {signal.SIGTERM: signal.signal(signal.SIGTERM, stop)}


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise SamlabelError(
            f"cannot listen on {host}:{port} ({e.strerror or e}); pass --port 0 for any free port, or another --port"
        ) from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def _has_display() -> bool:
    """A browser can open here (not a bare SSH session, where ``webbrowser`` would start a text browser)."""
    return sys.platform in ("darwin", "win32") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
