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

import hmac
import io
import logging
import os
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
from fastapi import Depends, FastAPI, File, Form, Header, HTTPException, UploadFile
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.routing import Match

from polyvox.config import ServeSection
from polyvox.runtime.bundle import BundleMeta, load_bundle
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
    onnx: object | None = None  # OnnxAcoustic when the bundle has ONNX graphs and the runtime is onnx


class VoiceHolder:
    """The voice being served, swapped as one reference when the bundle changes."""

    def __init__(self, folder: Path, runtime: str = "torch"):
        self.folder = folder
        self.runtime = runtime
        self._lock = threading.Lock()
        self.current: Loaded | None = None
        self.reloads = 0

    def _stamp(self) -> str | None:
        try:
            return (self.folder / "bundle.json").read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def reload(self, force: bool = False) -> bool:
        """Load the bundle if it changed (or ``force``); True when a new voice is being served."""
        stamp = self._stamp()
        if stamp is None or (not force and self.current is not None and stamp == self.current.stamp):
            return False
        voice, meta = load_bundle(self.folder)  # fully loaded before anyone sees it
        onnx = None
        if self.runtime == "onnx" and meta.onnx and voice.mode == "weighted":
            from polyvox.runtime.onnx import OnnxAcoustic

            onnx = OnnxAcoustic(voice, self.folder / "onnx", threads=torch.get_num_threads())
        if self._stamp() != stamp:  # replaced while we read it: the next poll takes the newer one
            return False
        with self._lock:
            self.current = Loaded(voice, meta, stamp, onnx)
            self.reloads += 1
        log.info("serving %s version %s", self.folder, meta.version)
        return True

    def get(self) -> Loaded:
        with self._lock:
            if self.current is None:
                raise HTTPException(503, f"no voice to serve yet: {self.folder} holds no bundle (promote one)")
            return self.current


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

    def exposition(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


def render(loaded: Loaded, request: SynthesisRequest, pause_seconds: float, metrics: ServiceMetrics) -> Iterator[np.ndarray]:
    """The audio of ``request``, sentence by sentence with the pause between them: what a whole
    response concatenates and a streamed one sends as it comes."""
    voice = loaded.voice
    pause = np.zeros(int(pause_seconds * voice.sample_rate), dtype=np.float32)
    for index, sentence in enumerate(request.sentences):
        if index:
            yield pause
        started = time.perf_counter()
        try:
            with torch.no_grad():
                if loaded.onnx is not None and request.by_name_only:
                    wave, _ = loaded.onnx.synthesize(sentence, request.speaker)
                else:
                    wave, _ = voice.synthesize(sentence, speaker=request.speaker, reference_audio=request.reference,
                                               image=request.picture)
        except ValueError as exc:  # e.g. nothing pronounceable in the sentence
            raise HTTPException(422, str(exc)) from None
        metrics.synthesised(time.perf_counter() - started, len(wave) / voice.sample_rate)
        yield wave


def _route(app: FastAPI, scope) -> str:
    """The route template a request matches (``synthesize``), never the raw path: a label per
    route, however many paths clients make up."""
    for route in app.router.routes:
        if route.matches(scope)[0] == Match.FULL:
            return getattr(route, "path", "").strip("/") or "root"
    return "unmatched"


def create_app(bundle: Path, settings: ServeSection, token: str | None = None, poll: bool = True) -> FastAPI:
    """The service over ``bundle``; ``token``: a bearer token required on POST (None: open)."""
    holder = VoiceHolder(Path(bundle), settings.runtime)
    holder.reload()
    metrics = ServiceMetrics()
    metrics.serving(holder)
    stop = threading.Event()

    def poller() -> None:
        while not stop.wait(settings.reload_seconds):
            try:
                if holder.reload():
                    metrics.serving(holder)
            except (OSError, ValueError, RuntimeError, KeyError) as exc:  # a half-written bundle: keep serving the old one
                log.warning("bundle %s not reloaded: %s", bundle, exc)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        if poll:
            threading.Thread(target=poller, name="bundle-poller", daemon=True).start()
        yield
        stop.set()

    app = FastAPI(title="polyvox", version="1", description=__doc__.split("\n\n")[0], lifespan=lifespan)
    # Two uploads at their limit, the text at its limit (4 bytes a character at most) and form overhead:
    # a request declaring more is refused before its body is read (Starlette would spool it all first).
    body_limit = int(2 * settings.max_upload_mb * 2**20 + 4 * settings.max_text_chars + 2**16)

    @app.middleware("http")
    async def limit_and_count(request, call_next):
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > body_limit):
            response = JSONResponse({"detail": f"request body of {declared} bytes is over the {body_limit}-byte limit "
                                               f"(serve.max_upload_mb, serve.max_text_chars)"}, status_code=413)
        else:
            response = await call_next(request)
        metrics.response(_route(app, request.scope), response.status_code)
        return response

    @app.exception_handler(RequestError)
    async def refused(_request, exc: RequestError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    def authorised(authorization: Annotated[str | None, Header()] = None) -> None:
        if token is None:
            return
        expected = f"Bearer {token}"
        if authorization is None or not hmac.compare_digest(authorization.encode(), expected.encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    def read(upload: UploadFile | None) -> bytes | None:
        """An upload's bytes, one past the limit at most (so that an oversized one shows)."""
        return None if upload is None else upload.file.read(int(settings.max_upload_mb * 2**20) + 1)

    @app.get("/healthz")
    def healthz() -> dict:
        loaded = holder.current
        return {"status": "ok" if loaded else "no-voice", "version": loaded.meta.version if loaded else None}

    @app.get("/voices")
    def voices() -> dict:
        loaded = holder.get()
        return {"version": loaded.meta.version, "data_version": loaded.meta.data_version,
                "runtime": "onnx" if loaded.onnx is not None else "torch",
                "speakers": loaded.voice.speakers, "takes_image": loaded.voice.takes_images,
                "takes_reference_audio": True, "sample_rate": loaded.voice.sample_rate,
                "max_text_chars": settings.max_text_chars}

    @app.get("/metrics")
    def prometheus() -> Response:
        return metrics.exposition()

    @app.post("/reload", dependencies=[Depends(authorised)])
    def reload_now() -> dict:
        changed = holder.reload(force=True)
        metrics.serving(holder)
        return {"reloaded": changed, "version": holder.get().meta.version}

    @app.post("/synthesize", dependencies=[Depends(authorised)],
              responses={200: {"content": {"audio/wav": {}}, "description": "16-bit mono WAV"}})
    def synthesize(text: Annotated[str, Form(min_length=1)],
                   speaker: Annotated[str | None, Form()] = None,
                   stream: Annotated[bool, Form()] = False,
                   reference_audio: Annotated[UploadFile | None, File()] = None,
                   image: Annotated[UploadFile | None, File()] = None) -> Response:
        loaded = holder.get()  # this request keeps this voice even if a reload happens meanwhile
        request = parse(loaded.voice, settings, text, speaker, stream, read(reference_audio), read(image))
        rate = loaded.voice.sample_rate
        headers = {"X-Polyvox-Version": str(loaded.meta.version)}
        pieces = render(loaded, request, settings.sentence_pause, metrics)
        if request.stream:
            return StreamingResponse(_prepend(streaming_wav_header(rate), map(pcm16, pieces)), media_type="audio/wav",
                                     headers=headers)
        return Response(wav_bytes(np.concatenate(list(pieces)), rate), media_type="audio/wav", headers=headers)

    app.state.holder = holder
    return app


def _prepend(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest


def serve(bundle: Path, settings: ServeSection, host: str | None = None, port: int | None = None) -> None:
    """Run the service with uvicorn (blocking)."""
    import uvicorn

    token = os.environ.get("POLYVOX_TOKEN") or None
    app = create_app(bundle, settings, token=token)
    host = host or settings.host
    if host not in ("127.0.0.1", "localhost", "::1") and token is None:
        log.warning("serving on %s without POLYVOX_TOKEN: anyone who can reach it can synthesise", host)
    uvicorn.run(app, host=host, port=port if port is not None else settings.port, log_level="info")

