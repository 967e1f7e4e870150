"""The HTTP synthesis service (FastAPI): the champion's bundle behind a small, strict contract.

    POST /synthesize   form fields: text, speaker?, stream?; files: reference_audio?, image? → audio/wav
    GET  /voices       speakers, conditioning, sample rate, bundle version
    GET  /healthz      liveness + the version being served
    GET  /metrics      Prometheus text format
    POST /reload       load the bundle again now (it is also polled every ``reload_seconds``)

Reloading loads the new bundle completely, then swaps one reference: a request holds the voice
it started with, so no request fails or mixes versions during a switch. Bad input is a 4xx with
a message, never a 5xx: empty or too long text (422/413), an unknown speaker (422), an upload too
large (413) or not decodable as audio/an image (415), a missing or wrong bearer token (401) when
``POLYVOX_TOKEN`` is set. Long text is split into sentences; ``stream=true`` sends each sentence's
audio as soon as it is synthesised (a WAV with an open-ended header).

What a request may be is decided in :mod:`polyvox.serve.request` (no web framework there); the
voice served and its reloads in :mod:`polyvox.serve.holder`; the host, token and body checks
before any route in :mod:`polyvox.serve.gate`; a streamed response in :mod:`polyvox.serve.stream`.
This module wires them, reads bodies, renders (one path for whole and streamed responses) and
counts (:mod:`polyvox.serve.metrics`).
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

import numpy as np
import soundfile as sf
import torch
from fastapi import FastAPI, File, Form, HTTPException, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from polyvox.config import ServeSection
from polyvox.fileio import remove_staging
from polyvox.lock import writer_active
from polyvox.serve.gate import Gate, allowed_hosts, bounded_protocol, route_label
from polyvox.serve.holder import Loaded, VoiceHolder
from polyvox.serve.memory import Trimmer, limit_arenas
from polyvox.serve.metrics import ServiceMetrics
from polyvox.serve.request import RequestError, SynthesisRequest, parse
from polyvox.serve.stream import PacedStream, SlowReadersLoggedOnce

log = logging.getLogger(__name__)


def wav_bytes(wave: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, wave, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def render(loaded: Loaded, request: SynthesisRequest, pause_seconds: float, metrics: ServiceMetrics,
           deadline: float) -> Iterator[np.ndarray]:
    """The audio of ``request``, sentence by sentence with the pause between them: what a whole
    response concatenates and a streamed one sends as it comes. Past ``deadline`` (monotonic) no
    sentence starts: a whole response is refused (503), a stream ends where it is."""
    voice = loaded.voice
    pause = np.zeros(int(pause_seconds * voice.sample_rate), dtype=np.float32)
    for index, sentence in enumerate(request.sentences):
        if time.monotonic() > deadline:
            log.warning("request over serve.request_seconds after %d of %d sentences", index, len(request.sentences))
            if request.stream:
                return
            raise HTTPException(503, f"synthesis took longer than serve.request_seconds after {index} of "
                                     f"{len(request.sentences)} sentences; send less text", headers={"Retry-After": "5"})
        if index:
            yield pause
        started = time.perf_counter()
        try:
            with torch.no_grad():
                if loaded.onnx is not None and request.by_name_only:
                    wave, _ = loaded.onnx.synthesize(sentence, request.speaker, request.length_scale)
                else:
                    wave, _ = voice.synthesize(sentence, speaker=request.speaker, reference_audio=request.reference,
                                               image=request.picture, length_scale=request.length_scale)
        except ValueError as exc:  # e.g. nothing pronounceable in the sentence
            raise HTTPException(422, str(exc)) from None
        metrics.synthesised(time.perf_counter() - started, len(wave) / voice.sample_rate)
        yield wave


def _problem(error: dict) -> dict:
    field = ".".join(str(part) for part in error.get("loc", ()) if part not in ("body", "query", "header"))
    if field == "text" and error.get("type") in ("missing", "string_too_short"):
        return {"field": "text", "problem": "text is empty: send the words to speak as the form field `text`"}
    if error.get("type") == "string_type":
        return {"field": field, "problem": f"{field} must be a form field holding text, not a file"}
    return {"field": field, "problem": str(error.get("msg", "invalid"))[:200]}


ERRORS = {
    401: {"description": "POLYVOX_TOKEN is set and the request has no `Authorization: Bearer <token>` matching it"},
    413: {"description": "The body, an upload, the text or a sentence is over its limit (the reply names which)"},
    415: {"description": "An upload is not audio or not a picture polyvox reads"},
    422: {"description": "A field breaks a rule: empty text, an unknown speaker, text in a script the voice "
                         "cannot read, length_scale out of range (the reply names the field and the rule)"},
    503: {"description": "Every synthesis slot is taken (Retry-After: 1), or the request ran past "
                         "serve.request_seconds"},
}


async def _refused(_request, exc: RequestError) -> JSONResponse:
    return JSONResponse({"detail": exc.detail}, status_code=exc.status)


async def _invalid(_request, exc: RequestValidationError) -> JSONResponse:
    """The field and the rule it broke, never the value sent (an upload's internals, a huge string)."""
    return JSONResponse({"detail": [_problem(error) for error in exc.errors()]}, status_code=422)


def create_app(bundle: Path, settings: ServeSection, token: str | None = None, poll: bool = True,
               host: str | None = None) -> FastAPI:
    """The service over ``bundle``; ``token``: a bearer token required on POST (None: open to requests
    addressed to :func:`polyvox.serve.gate.allowed_hosts` of ``host``, the bound host, default ``serve.host``)."""
    holder = VoiceHolder(Path(bundle), settings.runtime)
    if not writer_active(Path(bundle).parent.parent):
        for stale in remove_staging(Path(bundle)):  # a download killed mid-way (a promote's, a rollback's)
            log.info("removed %s, the staging folder of a killed download", stale)
    holder.reload()
    metrics = ServiceMetrics()
    metrics.serving(holder)
    stop = threading.Event()

    def poller() -> None:
        while not stop.wait(settings.reload_seconds):
            holder.try_reload()
            metrics.serving(holder)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        if poll:
            threading.Thread(target=poller, name="bundle-poller", daemon=True).start()
        yield
        stop.set()

    # /docs from Swagger UI files that ship in a package (fastapi-offline's static folder), not from a
    # CDN: the page works on a machine with no network, like the rest of polyvox.
    app = FastAPI(title="polyvox", version="1", description=__doc__.split("\n\n")[0], lifespan=lifespan,
                  docs_url=None, redoc_url=None)
    mount_docs(app)
    # Two uploads at their limit, the text at its limit (4 bytes a character at most) and form overhead.
    body_limit = int(2 * settings.max_upload_mb * 2**20 + 4 * settings.max_text_chars + 2**16)
    app.add_middleware(Gate, limit=body_limit, token=token, protected=("/synthesize", "/reload"), metrics=metrics,
                       route_of=lambda scope: route_label(app, scope),
                       hosts=None if token is not None else allowed_hosts(settings, host),
                       body_seconds=settings.body_seconds)
    slots = threading.BoundedSemaphore(settings.max_concurrent)
    trimmer = Trimmer()
    app.add_exception_handler(RequestError, _refused)
    app.add_exception_handler(RequestValidationError, _invalid)

    def read(upload: UploadFile | None) -> bytes | None:
        """An upload's bytes, one past the limit at most (so that an oversized one shows)."""
        return None if upload is None else upload.file.read(int(settings.max_upload_mb * 2**20) + 1)

    # The cheap endpoints are async: they answer on the event loop, never queued behind syntheses
    # in the thread pool.
    @app.get("/healthz", summary="Liveness and the loaded voice",
             description="`ok`, `degraded` (a file of the bundle is damaged: `damage` lists them; the loaded voice "
                         "still serves) or `no-voice`; the version served and the last reload error.")
    async def healthz() -> dict:
        loaded = holder.current
        status = "no-voice" if not loaded else "degraded" if holder.damage else "ok"
        return {"status": status, "version": loaded.meta.version if loaded else None,
                "reload_error": holder.reload_error, "damage": holder.damage}

    @app.get("/voices", summary="What the voice can do",
             description="Its speakers, whether it takes a speaker image or reference audio, its sample rate, the "
                         "runtime (onnx or torch) and the text limit.")
    async def voices() -> dict:
        loaded = holder.get()
        return {"version": loaded.meta.version, "data_version": loaded.meta.data_version,
                "runtime": "onnx" if loaded.onnx is not None else "torch",
                "speakers": loaded.voice.speakers, "takes_image": loaded.voice.takes_images,
                "takes_reference_audio": True, "sample_rate": loaded.voice.sample_rate,
                "max_text_chars": settings.max_text_chars}

    @app.get("/metrics", summary="Prometheus metrics", description="Requests by route and status, latency, "
             "busy refusals, slow readers, the version served.")
    async def prometheus() -> Response:
        return metrics.exposition()

    @app.post("/reload", summary="Load the bundle again now",
              description="Reads the bundle folder again (the poller does so by itself when bundle.json changes).",
              responses={401: ERRORS[401], 503: {"description": "The bundle did not load; the loaded voice still "
                                                                "serves"}})
    def reload_now() -> dict:
        changed = holder.try_reload(force=True)
        metrics.serving(holder)
        if holder.reload_error is not None:
            raise HTTPException(503, f"the bundle did not load (the loaded voice is still served): "
                                     f"{holder.reload_error}")
        return {"reloaded": changed, "version": holder.get().meta.version}

    @app.post("/synthesize", summary="Text to speech",
              description="A multipart form: `text` (sentences are rendered one after another), optionally "
                          "`speaker` (a name from /voices), `reference_audio` (a recording of the voice to imitate), "
                          "`image` (a picture of the speaker), `length_scale` (slower above 1) and `stream` "
                          "(sentences sent as they are rendered).",
              responses={200: {"content": {"audio/wav": {}}, "description": "16-bit mono WAV"}, **ERRORS})
    def synthesize(text: Annotated[str, Form()] = "",
                   speaker: Annotated[str | None, Form()] = None,
                   stream: Annotated[bool, Form()] = False,
                   length_scale: Annotated[float, Form(description="durations × this: 1 is the voice's pace, "
                                                                   "1.2 is 20 % slower (0.25..4)")] = 1.0,
                   reference_audio: Annotated[UploadFile | None, File()] = None,
                   image: Annotated[UploadFile | None, File()] = None) -> Response:
        deadline = time.monotonic() + settings.request_seconds
        loaded = holder.get()  # this request keeps this voice even if a reload happens meanwhile
        # Checked here (headers only), decoded under the slot: in-flight decoding is bounded by
        # serve.max_concurrent, whatever the number of uploads in flight.
        request = parse(loaded.voice, settings, text, speaker, stream, read(reference_audio), read(image),
                        decode=False, length_scale=length_scale)
        if not slots.acquire(timeout=0.25):
            metrics.busy.inc()
            raise HTTPException(503, f"every synthesis slot is taken (serve.max_concurrent {settings.max_concurrent}); "
                                     "retry shortly", headers={"Retry-After": "1"})
        uploads = request.reference_bytes is not None or request.image_bytes is not None
        # an upload's decoding and reference encoder allocated and freed tens of MB: give them back
        release = _once(_then(slots.release, trimmer.after_request) if uploads else slots.release)
        try:
            request = request.decode(settings)
        except BaseException:
            release()
            raise
        rate = loaded.voice.sample_rate
        headers = {"X-Polyvox-Version": str(loaded.meta.version)}
        pieces = render(loaded, request, settings.sentence_pause, metrics, deadline)
        if request.stream:  # the slot is held while synthesis runs, never while a client reads
            return PacedStream(pieces, rate, release, settings.stream_grace_seconds, headers, metrics.slow_readers.inc)
        try:
            return Response(wav_bytes(np.concatenate(list(pieces)), rate), media_type="audio/wav", headers=headers)
        finally:
            release()

    app.state.holder = holder
    return app


def mount_docs(app: FastAPI) -> None:
    """/docs: Swagger UI 5 (it reads FastAPI's OpenAPI 3.1; the 4.x of swagger-ui-bundle does not)
    from fastapi-offline's static files, served by this app under /docs-assets."""
    from importlib.resources import files

    from fastapi.openapi.docs import get_swagger_ui_html
    from starlette.staticfiles import StaticFiles

    app.mount("/docs-assets", StaticFiles(directory=str(files("fastapi_offline") / "static")), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return get_swagger_ui_html(openapi_url="/openapi.json", title="polyvox — API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon.png")


def _then(first, second):
    def call() -> None:
        first()
        second()
    return call


def _once(function):
    """``function`` made safe to call more than once (a slot released by the stream's end and by the
    response's background task alike)."""
    done = threading.Lock()

    def call() -> None:
        if done.acquire(blocking=False):
            function()
    return call


def serve(bundle: Path, settings: ServeSection, host: str | None = None, port: int | None = None) -> None:
    """Run the service with uvicorn (blocking)."""
    import uvicorn

    logging.getLogger("uvicorn.error").addFilter(SlowReadersLoggedOnce())
    if "MALLOC_ARENA_MAX" not in os.environ:  # before the request threads exist (polyvox.serve.memory)
        limit_arenas(2)

    token = os.environ.get("POLYVOX_TOKEN") or None
    host = host or settings.host
    app = create_app(bundle, settings, token=token, host=host)
    if host not in ("127.0.0.1", "localhost", "::1") and token is None:
        log.warning("serving on %s without POLYVOX_TOKEN: anyone who can reach it can synthesise", host)
    uvicorn.run(app, host=host, port=port if port is not None else settings.port, log_level="info",
                http=bounded_protocol(settings.body_seconds), timeout_keep_alive=settings.idle_seconds)
