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
"""

from __future__ import annotations

import hmac
import io
import logging
import os
import re
import struct
import threading
import time
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

from polyvox.config import ServeSection
from polyvox.runtime.bundle import load_bundle

log = logging.getLogger(__name__)

SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+")
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/bmp", "image/gif")


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in SENTENCE_END.split(text.strip()) if s.strip()]


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
    meta: dict
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
        if self.runtime == "onnx" and meta.get("onnx") and voice.mode == "weighted":
            from polyvox.runtime.onnx import OnnxAcoustic

            onnx = OnnxAcoustic(voice, self.folder / "onnx", threads=torch.get_num_threads())
        if self._stamp() != stamp:  # replaced while we read it: the next poll takes the newer one
            return False
        with self._lock:
            self.current = Loaded(voice, meta, stamp, onnx)
            self.reloads += 1
        log.info("serving %s version %s", self.folder, meta.get("version"))
        return True

    def get(self) -> Loaded:
        with self._lock:
            if self.current is None:
                raise HTTPException(503, f"no voice to serve yet: {self.folder} holds no bundle (promote one)")
            return self.current


def create_app(bundle: Path, settings: ServeSection, token: str | None = None, poll: bool = True) -> FastAPI:
    """The service over ``bundle``; ``token``: a bearer token required on POST (None: open)."""
    holder = VoiceHolder(Path(bundle), settings.runtime)
    holder.reload()
    metrics = CollectorRegistry()
    requests = Counter("polyvox_requests", "HTTP requests", ["endpoint", "status"], registry=metrics)
    latency = Histogram("polyvox_synthesis_seconds", "Time to synthesise one request", registry=metrics,
                        buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30))
    audio_out = Counter("polyvox_audio_seconds", "Seconds of audio synthesised", registry=metrics)
    version = Gauge("polyvox_bundle_info", "The bundle being served", ["version", "data_version"], registry=metrics)
    reloads = Gauge("polyvox_reloads", "Bundles loaded since start", registry=metrics)
    stop = threading.Event()

    def refresh_info() -> None:
        version.clear()
        if holder.current is not None:
            meta = holder.current.meta
            version.labels(str(meta.get("version")), str(meta.get("data_version"))).set(1)
        reloads.set(holder.reloads)

    refresh_info()

    def poller() -> None:
        while not stop.wait(settings.reload_seconds):
            try:
                if holder.reload():
                    refresh_info()
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
    async def refuse_oversized_bodies(request, call_next):
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > body_limit):
            requests.labels(request.url.path.strip("/") or "root", "413").inc()
            return JSONResponse({"detail": f"request body of {declared} bytes is over the {body_limit}-byte limit "
                                           f"(serve.max_upload_mb, serve.max_text_chars)"}, status_code=413)
        return await call_next(request)

    def authorised(authorization: Annotated[str | None, Header()] = None) -> None:
        if token is None:
            return
        expected = f"Bearer {token}"
        if authorization is None or not hmac.compare_digest(authorization.encode(), expected.encode()):
            requests.labels("synthesize", "401").inc()
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    def read_upload(upload: UploadFile | None, kind: str) -> bytes | None:
        if upload is None:
            return None
        limit = int(settings.max_upload_mb * 2**20)
        data = upload.file.read(limit + 1)
        if len(data) > limit:
            raise HTTPException(413, f"{kind} upload is larger than {settings.max_upload_mb} MB")
        if not data:
            raise HTTPException(422, f"{kind} upload is empty")
        return data

    def decode_audio(data: bytes) -> tuple[np.ndarray, int]:
        try:
            signal, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
            raise HTTPException(415, f"reference_audio is not audio soundfile can read (WAV, FLAC, OGG): {exc}") from None
        if signal.shape[0] < rate // 10 or not np.isfinite(signal).all():
            raise HTTPException(422, "reference_audio must hold at least 0.1 s of finite samples")
        return signal.mean(axis=1), rate

    def decode_image(data: bytes, size: int) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(data)) as picture:
                picture = picture.convert("RGB").resize((size, size), Image.BICUBIC)
                return np.asarray(picture, dtype=np.float32).transpose(2, 0, 1) / 255.0
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            raise HTTPException(415, f"image is not a picture Pillow can read (PNG, JPEG, WebP): {exc}") from None

    @app.get("/healthz")
    def healthz() -> dict:
        loaded = holder.current
        requests.labels("healthz", "200").inc()
        return {"status": "ok" if loaded else "no-voice", "version": loaded.meta.get("version") if loaded else None}

    @app.get("/voices")
    def voices() -> dict:
        loaded = holder.get()
        requests.labels("voices", "200").inc()
        return {"version": loaded.meta.get("version"), "data_version": loaded.meta.get("data_version"),
                "runtime": "onnx" if loaded.onnx is not None else "torch",
                "speakers": loaded.voice.speakers, "takes_image": loaded.voice.takes_images,
                "takes_reference_audio": True, "sample_rate": loaded.voice.sample_rate,
                "max_text_chars": settings.max_text_chars}

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(generate_latest(metrics), media_type=CONTENT_TYPE_LATEST)

    @app.post("/reload", dependencies=[Depends(authorised)])
    def reload_now() -> dict:
        changed = holder.reload(force=True)
        refresh_info()
        return {"reloaded": changed, "version": holder.get().meta.get("version")}

    @app.post("/synthesize", dependencies=[Depends(authorised)],
              responses={200: {"content": {"audio/wav": {}}, "description": "16-bit mono WAV"}})
    def synthesize(text: Annotated[str, Form(min_length=1)],
                   speaker: Annotated[str | None, Form()] = None,
                   stream: Annotated[bool, Form()] = False,
                   reference_audio: Annotated[UploadFile | None, File()] = None,
                   image: Annotated[UploadFile | None, File()] = None) -> Response:
        loaded = holder.get()  # this request keeps this voice even if a reload happens meanwhile
        voice = loaded.voice
        if len(text) > settings.max_text_chars:
            requests.labels("synthesize", "413").inc()
            raise HTTPException(413, f"text is {len(text)} characters; the limit is {settings.max_text_chars}")
        sentences = split_sentences(text)
        if not sentences:
            raise HTTPException(422, "text holds nothing to say")
        for sentence in sentences:  # refuse before a stream starts, when a 4xx can still be sent
            try:
                voice.members[0].synthesizer.tokens(sentence)
            except ValueError:
                raise HTTPException(422, f"nothing pronounceable in the sentence {sentence[:80]!r}") from None
        speaker = speaker or None
        if speaker is not None and speaker not in voice.speakers:
            requests.labels("synthesize", "422").inc()
            raise HTTPException(422, f"unknown speaker {speaker!r}; known: {voice.speakers}")
        audio_bytes = read_upload(reference_audio, "reference_audio")
        reference = decode_audio(audio_bytes) if audio_bytes is not None else None
        image_bytes = read_upload(image, "image")
        if image_bytes is not None and not voice.takes_images:
            raise HTTPException(422, "this voice takes no image conditioning")
        picture = decode_image(image_bytes, voice.members[0].synthesizer.image_size) if image_bytes is not None else None
        rate = voice.sample_rate
        pause = np.zeros(int(settings.sentence_pause * rate), dtype=np.float32)

        def render(sentence: str) -> np.ndarray:
            started = time.perf_counter()
            try:
                with torch.no_grad():
                    if loaded.onnx is not None and speaker is not None and reference is None and picture is None:
                        wave, _ = loaded.onnx.synthesize(sentence, speaker)
                    else:
                        wave, _ = voice.synthesize(sentence, speaker=speaker, reference_audio=reference, image=picture)
            except ValueError as exc:  # e.g. nothing pronounceable in the sentence
                raise HTTPException(422, str(exc)) from None
            latency.observe(time.perf_counter() - started)
            audio_out.inc(len(wave) / rate)
            return wave

        if stream:
            def chunks():
                yield streaming_wav_header(rate)
                for index, sentence in enumerate(sentences):
                    if index:
                        yield pcm16(pause)
                    yield pcm16(render(sentence))

            requests.labels("synthesize", "200").inc()
            return StreamingResponse(chunks(), media_type="audio/wav",
                                     headers={"X-Polyvox-Version": str(loaded.meta.get("version"))})
        pieces = []
        for index, sentence in enumerate(sentences):
            if index:
                pieces.append(pause)
            pieces.append(render(sentence))
        requests.labels("synthesize", "200").inc()
        return Response(wav_bytes(np.concatenate(pieces), rate), media_type="audio/wav",
                        headers={"X-Polyvox-Version": str(loaded.meta.get("version"))})

    app.state.holder = holder
    return app


def serve(bundle: Path, settings: ServeSection, host: str | None = None, port: int | None = None) -> None:
    """Run the service with uvicorn (blocking)."""
    import uvicorn

    token = os.environ.get("POLYVOX_TOKEN") or None
    app = create_app(bundle, settings, token=token)
    host = host or settings.host
    if host not in ("127.0.0.1", "localhost", "::1") and token is None:
        log.warning("serving on %s without POLYVOX_TOKEN: anyone who can reach it can synthesise", host)
    uvicorn.run(app, host=host, port=port if port is not None else settings.port, log_level="info")

