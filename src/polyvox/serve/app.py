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

What a request may be is decided in :mod:`polyvox.serve.request` (no web framework there); this
module reads bodies, renders (one path for whole and streamed responses) and counts.
"""

from __future__ import annotations

import asyncio
import hmac
import io
import logging
import os
import re
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import soundfile as sf
import torch
from fastapi import FastAPI, File, Form, HTTPException, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.routing import Match

from polyvox.config import ServeSection
from polyvox.fileio import recover_folder, remove_staging
from polyvox.lock import writer_active
from polyvox.runtime.bundle import BundleMeta, FileCheck, load_bundle
from polyvox.serve.memory import Trimmer, limit_arenas
from polyvox.serve.request import RequestError, SynthesisRequest, parse

log = logging.getLogger(__name__)


def wav_bytes(wave: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, wave, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def streaming_wav_header(rate: int) -> bytes:
    """A 16-bit mono WAV header whose sizes say 'until the end of the stream' (0xFFFFFFFF)."""
    return (b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVE" + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
            + b"data" + struct.pack("<I", 0xFFFFFFFF))


def pcm16(wave: np.ndarray) -> bytes:
    return (np.clip(wave, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


@dataclass
class Loaded:
    voice: object
    meta: BundleMeta
    stamp: str  # bundle.json's content: a new version or rebuild changes it
    onnx: object | None = None  # OnnxAcoustic/OnnxConverter when the bundle has ONNX graphs and the runtime is onnx


class VoiceHolder:
    """The voice being served, swapped as one reference when the bundle changes."""

    def __init__(self, folder: Path, runtime: str = "torch"):
        self.folder = folder
        self.runtime = runtime
        self._lock = threading.Lock()
        self.current: Loaded | None = None
        self.reloads = 0
        self.reload_error: str | None = None  # why the last reload failed; None once one succeeds
        self.reload_failures = 0
        self.damage: list[str] = []  # what is wrong with the bundle's files on disk (the loaded voice serves on)
        self._files = FileCheck()

    def _stamp(self) -> str | None:
        # A promote killed mid-swap left the old bundle aside: serve it. But a live promote passes
        # through that same state between its two renames: while a writer holds the workspace, its
        # swap is its own (renaming the old folder back would undo it).
        if not writer_active(self.folder.parent.parent):
            recover_folder(self.folder)
        try:
            return (self.folder / "bundle.json").read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def reload(self, force: bool = False) -> bool:
        """Load the bundle if it changed (or ``force``); True when a new voice is being served."""
        stamp = self._stamp()
        if stamp is None:
            self.damage = [] if self.current is None else ["bundle.json: missing"]
            if force:
                raise FileNotFoundError("bundle.json is missing from the bundle folder: nothing to reload "
                                        "(the loaded voice is still served)")
            return False
        if not force and self.current is not None and stamp == self.current.stamp:
            self.damage = self._files.damage(self.folder, self.current.meta)
            return False
        damage = self._files.damage(self.folder, BundleMeta.read(self.folder))
        if damage:  # a bundle whose files are not what bundle.json lists is never loaded
            raise ValueError(f"the bundle's files do not match bundle.json: {'; '.join(damage[:5])}")
        voice, meta = load_bundle(self.folder)  # fully loaded before anyone sees it
        onnx = None
        if self.runtime == "onnx" and meta.onnx and voice.mode == "weighted":
            from polyvox.runtime.onnx import onnx_runtime

            onnx = onnx_runtime(voice, self.folder / "onnx", threads=torch.get_num_threads())
        if self._stamp() != stamp:  # replaced while we read it: the next poll takes the newer one
            return False
        with self._lock:
            self.current = Loaded(voice, meta, stamp, onnx)
            self.reloads += 1
            self.damage = []
        log.info("serving %s version %s", self.folder, meta.version)
        return True

    def try_reload(self, force: bool = False) -> bool:
        """:meth:`reload`, surviving any bundle: a half-written one, or an ONNX graph onnxruntime
        refuses with its own error types. The old voice stays served; why the reload failed is kept
        for /healthz and /metrics until one succeeds."""
        before = list(self.damage)
        try:
            changed = self.reload(force)
            if self.damage and self.damage != before:
                log.warning("bundle %s is damaged (still serving the loaded voice): %s", self.folder,
                            "; ".join(self.damage))
        except Exception as exc:  # noqa: BLE001 - recorded and reported, never swallowed
            self.reload_failures += 1
            log.warning("bundle %s not reloaded (still serving the previous voice): %s: %s", self.folder,
                        type(exc).__name__, exc)
            self.reload_error = f"{type(exc).__name__}: {_no_paths(str(exc), self.folder)[:300]}"
            return False
        self.reload_error = None
        return changed

    def get(self) -> Loaded:
        with self._lock:
            if self.current is None:
                raise HTTPException(503, f"no voice to serve yet: {self.folder} holds no bundle (promote one)")
            return self.current


def _no_paths(text: str, folder: Path) -> str:
    """``text`` for anyone who asks (/healthz): paths inside the bundle relative to it, any other
    absolute path by its last part (the service log keeps the whole message)."""
    text = text.replace(str(folder.resolve()), "<bundle>").replace(str(folder), "<bundle>")
    return re.sub(r"(?<![\w<>])/(?:[^\s/:'\"]+/)*([^\s/:'\"]+)", r"…/\1", text)


class ServiceMetrics:
    """Every figure /metrics exports, in one place: each response counted once, by route and status
    (the middleware), synthesis time and audio seconds (the renderer), the bundle served (reloads)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("polyvox_requests", "HTTP requests", ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("polyvox_synthesis_seconds", "Time to synthesise one sentence", registry=self.registry,
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30))
        self.audio = Counter("polyvox_audio_seconds", "Seconds of audio synthesised", registry=self.registry)
        self.version = Gauge("polyvox_bundle_info", "The bundle being served", ["version", "data_version"],
                             registry=self.registry)
        self.reloads = Gauge("polyvox_reloads", "Bundles loaded since start", registry=self.registry)
        self.reload_failures = Gauge("polyvox_reload_failures", "Reloads that failed since start (the old voice "
                                     "is served meanwhile)", registry=self.registry)
        self.busy = Counter("polyvox_refused_busy", "Syntheses refused with 503: every slot was taken",
                            registry=self.registry)
        self.slow_readers = Counter("polyvox_slow_readers_cut_off", "Streams ended because the client read slower "
                                    "than real time (serve.stream_grace_seconds)", registry=self.registry)

    def response(self, endpoint: str, status: int) -> None:
        self.requests.labels(endpoint, str(status)).inc()

    def synthesised(self, seconds: float, audio_seconds: float) -> None:
        self.latency.observe(seconds)
        self.audio.inc(audio_seconds)

    def serving(self, holder: VoiceHolder) -> None:
        self.version.clear()
        if holder.current is not None:
            meta = holder.current.meta
            self.version.labels(str(meta.version), str(meta.data_version)).set(1)
        self.reloads.set(holder.reloads)
        self.reload_failures.set(holder.reload_failures)

    def exposition(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


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


class Gate:
    """The service's door, before FastAPI reads a byte: the bearer token of a protected route is
    checked before its body; a body is counted as it arrives and refused past ``limit`` (a chunked
    upload declares no length, and FastAPI would spool it whole before any check); every response
    is counted once, by route template (``route_of``)."""

    def __init__(self, app, *, limit: int, token: str | None, protected: tuple[str, ...], metrics: ServiceMetrics,
                 route_of, hosts: frozenset[str] | None = None, body_seconds: float | None = None):
        self.app, self.limit, self.token, self.protected = app, limit, token, protected
        self.metrics, self.route_of, self.hosts, self.body_seconds = metrics, route_of, hosts, body_seconds

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = [500]

        async def send_counted(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send_counted)
                return
            received, body_done = 0, False

            async def receive_counted():
                nonlocal received, body_done
                if body_done:  # the body is whole: what is left is waiting for a disconnect, with no deadline
                    return await receive()
                try:
                    message = await asyncio.wait_for(receive(), timeout=self.body_seconds)
                except asyncio.TimeoutError:
                    raise HTTPException(408, f"the request body stopped arriving for {self.body_seconds:g} s "
                                             "(serve.body_seconds)") from None
                if message["type"] == "http.request":
                    body_done = not message.get("more_body", False)
                    received += len(message.get("body", b""))
                    if received > self.limit:
                        raise HTTPException(413, f"request body over the {self.limit}-byte limit "
                                                 "(serve.max_upload_mb, serve.max_text_chars)")
                return message

            await self.app(scope, receive_counted, send_counted)
        finally:
            self.metrics.response(self.route_of(scope), status[0])

    def _refusal(self, scope) -> Response | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.hosts is not None:  # no token: only requests addressed to us, no POST from another site's page
            host = _hostname(headers.get("host", ""))
            if host not in self.hosts:
                return JSONResponse({"detail": f"Host {_shown(host)} is not served here (serve.allowed_hosts; "
                                               "or set POLYVOX_TOKEN)"}, status_code=421)
            origin = headers.get("origin")
            if scope["method"] == "POST" and origin is not None and _hostname(origin.partition("://")[2]) not in self.hosts:
                return JSONResponse({"detail": f"a POST from a page of origin {_shown(origin)} is refused "
                                               "(serve.allowed_hosts; or set POLYVOX_TOKEN)"}, status_code=403)
        if self.token is not None and scope["method"] == "POST" and scope["path"] in self.protected:
            given = headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
                return JSONResponse({"detail": "missing or wrong bearer token"}, status_code=401,
                                    headers={"WWW-Authenticate": "Bearer"})
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return JSONResponse({"detail": f"request body of {declared} bytes is over the {self.limit}-byte limit "
                                           f"(serve.max_upload_mb, serve.max_text_chars)"}, status_code=413)
        return None


def _problem(error: dict) -> dict:
    field = ".".join(str(part) for part in error.get("loc", ()) if part not in ("body", "query", "header"))
    if field == "text" and error.get("type") in ("missing", "string_too_short"):
        return {"field": "text", "problem": "text is empty: send the words to speak as the form field `text`"}
    if error.get("type") == "string_type":
        return {"field": field, "problem": f"{field} must be a form field holding text, not a file"}
    return {"field": field, "problem": str(error.get("msg", "invalid"))[:200]}


LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def _hostname(authority: str) -> str:
    """``example.org:8000`` → ``example.org``; ``[::1]:8000`` → ``::1``; lower case."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        return authority[1:].partition("]")[0]
    return authority.rpartition(":")[0] if authority.count(":") == 1 else authority


def _shown(value: str, limit: int = 80) -> str:
    """Client input echoed in a reply: quoted and cut at ``limit`` characters."""
    return repr(value[:limit] + ("…" if len(value) > limit else ""))


def allowed_hosts(settings: ServeSection, host: str | None = None) -> frozenset[str]:
    """The names a service without a token answers to: localhost, the bound host (unless it is a
    wildcard) and ``serve.allowed_hosts``."""
    bound = set() if (host or settings.host) in ("0.0.0.0", "::", "") else {(host or settings.host).lower()}
    return LOCAL_NAMES | frozenset(bound) | frozenset(name.lower() for name in settings.allowed_hosts)


def _route(app: FastAPI, scope) -> str:
    """The route template a request matches (``synthesize``), never the raw path: a label per
    route, however many paths clients make up."""
    for route in app.router.routes:
        if route.matches(scope)[0] == Match.FULL:
            return getattr(route, "path", "").strip("/") or "root"
    return "unmatched"


def create_app(bundle: Path, settings: ServeSection, token: str | None = None, poll: bool = True,
               host: str | None = None) -> FastAPI:
    """The service over ``bundle``; ``token``: a bearer token required on POST (None: open to requests
    addressed to :func:`allowed_hosts` of ``host``, the bound host, default ``serve.host``)."""
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
                       route_of=lambda scope: _route(app, scope),
                       hosts=None if token is not None else allowed_hosts(settings, host),
                       body_seconds=settings.body_seconds)
    slots = threading.BoundedSemaphore(settings.max_concurrent)
    trimmer = Trimmer()

    @app.exception_handler(RequestError)
    async def refused(_request, exc: RequestError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, exc: RequestValidationError) -> JSONResponse:
        """The field and the rule it broke, never the value sent (an upload's internals, a huge string)."""
        return JSONResponse({"detail": [_problem(error) for error in exc.errors()]}, status_code=422)

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


class SlowReader(Exception):
    """A streaming client took a sentence slower than real time (plus ``serve.stream_grace_seconds``)."""


class PacedStream(Response):
    """A streamed WAV whose synthesis never waits for its reader.

    A worker thread renders the sentences into a queue as fast as it can and releases the
    synthesis slot when it is done (or past ``serve.request_seconds``): a client that never reads
    holds no slot. The event loop sends each sentence as it comes, and a sentence the client does
    not take within its audio's length plus ``grace`` seconds ends the connection: a reader slower
    than real time is cut off (uvicorn closes the socket when the app raises after the headers).
    A client that goes away stops the rendering at the next sentence."""

    media_type = "audio/wav"

    def __init__(self, pieces: Iterator[np.ndarray], rate: int, release, grace: float, headers: dict[str, str],
                 cut_off=lambda: None):
        self.status_code, self.background = 200, None
        self.init_headers(headers)  # no body attribute: no Content-Length, the stream's length is open
        self.pieces, self.rate, self.release, self.grace, self.cut_off = pieces, rate, release, grace, cut_off

    async def __call__(self, scope, receive, send) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()

        def produce() -> None:
            try:
                for wave in self.pieces:
                    loop.call_soon_threadsafe(queue.put_nowait, wave)
                    if stop.is_set():
                        break
            except Exception as exc:  # noqa: BLE001 - reported to the sender, which logs and ends the stream
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                self.release()
                loop.call_soon_threadsafe(queue.put_nowait, None)

        async def watch_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            stop.set()

        producer = loop.run_in_executor(None, produce)
        watcher = asyncio.ensure_future(watch_disconnect())
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            await self._send(send, streaming_wav_header(self.rate), 0.0)
            while (item := await queue.get()) is not None:
                if isinstance(item, Exception):
                    detail = item.detail if isinstance(item, HTTPException) else f"{type(item).__name__}: {item}"
                    log.warning("stream ended early: %s", detail)
                    break
                await self._send(send, pcm16(item), len(item) / self.rate)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            stop.set()
            watcher.cancel()
            await asyncio.shield(producer)  # the slot is released by the producer, whatever happened here

    async def _send(self, send, chunk: bytes, seconds: float) -> None:
        try:
            await asyncio.wait_for(send({"type": "http.response.body", "body": chunk, "more_body": True}),
                                   timeout=seconds + self.grace)
        except asyncio.TimeoutError:
            self.cut_off()
            log.warning("streaming client cut off: it did not take %.1f s of audio within %.1f s", seconds,
                        seconds + self.grace)
            raise SlowReader(f"the client reads slower than real time (serve.stream_grace_seconds {self.grace})") \
                from None


ERRORS = {
    401: {"description": "POLYVOX_TOKEN is set and the request has no `Authorization: Bearer <token>` matching it"},
    413: {"description": "The body, an upload, the text or a sentence is over its limit (the reply names which)"},
    415: {"description": "An upload is not audio or not a picture polyvox reads"},
    422: {"description": "A field breaks a rule: empty text, an unknown speaker, text in a script the voice "
                         "cannot read, length_scale out of range (the reply names the field and the rule)"},
    503: {"description": "Every synthesis slot is taken (Retry-After: 1), or the request ran past "
                         "serve.request_seconds"},
}


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


class _SlowReadersLoggedOnce(logging.Filter):
    """uvicorn logs a traceback for an app that raises after its headers were sent, which is how a
    slow reader is disconnected; :class:`PacedStream` has said so in one line already."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], SlowReader))


def serve(bundle: Path, settings: ServeSection, host: str | None = None, port: int | None = None) -> None:
    """Run the service with uvicorn (blocking)."""
    import uvicorn

    logging.getLogger("uvicorn.error").addFilter(_SlowReadersLoggedOnce())
    if "MALLOC_ARENA_MAX" not in os.environ:  # before the request threads exist (polyvox.serve.memory)
        limit_arenas(2)

    token = os.environ.get("POLYVOX_TOKEN") or None
    host = host or settings.host
    app = create_app(bundle, settings, token=token, host=host)
    if host not in ("127.0.0.1", "localhost", "::1") and token is None:
        log.warning("serving on %s without POLYVOX_TOKEN: anyone who can reach it can synthesise", host)
    uvicorn.run(app, host=host, port=port if port is not None else settings.port, log_level="info",
                http=bounded_protocol(settings.body_seconds), timeout_keep_alive=settings.idle_seconds)


def bounded_protocol(head_seconds: float):
    """uvicorn's h11 protocol with two deadlines it lacks: a connection that never sends a byte is
    closed after ``timeout_keep_alive`` like an idle kept-alive one, and a request head (the next
    one on a kept-alive connection too) must be complete within ``head_seconds``: headers trickled
    a byte at a time no longer hold a connection forever."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class BoundedH11Protocol(H11Protocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)
            self._head = self.loop.call_later(head_seconds, self._head_overdue)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._head.cancel()
                self._head = self.loop.call_later(head_seconds, self._head_overdue)

        def connection_lost(self, exc) -> None:
            self._head.cancel()
            super().connection_lost(exc)

        def _head_overdue(self) -> None:
            if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
                self.transport.close()  # still waiting for a request head

    return BoundedH11Protocol

