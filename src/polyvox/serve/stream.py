"""The paced stream: ``stream=true``'s response, a WAV with an open-ended header sent sentence by
sentence (:class:`PacedStream`). Synthesis runs ahead in a worker thread and never waits for the
reader, so a client that reads slowly or not at all holds no synthesis slot; one slower than real
time is cut off (:class:`SlowReader`), and uvicorn's traceback for that is kept out of the log."""

from __future__ import annotations

import asyncio
import logging
import struct
import threading
from collections.abc import Iterator

import numpy as np
from fastapi import HTTPException
from fastapi.responses import Response

log = logging.getLogger(__name__)


def streaming_wav_header(rate: int) -> bytes:
    """A 16-bit mono WAV header whose sizes say 'until the end of the stream' (0xFFFFFFFF)."""
    return (b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVE" + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
            + b"data" + struct.pack("<I", 0xFFFFFFFF))


def pcm16(wave: np.ndarray) -> bytes:
    return (np.clip(wave, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


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


class SlowReadersLoggedOnce(logging.Filter):
    """uvicorn logs a traceback for an app that raises after its headers were sent, which is how a
    slow reader is disconnected; :class:`PacedStream` has said so in one line already."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], SlowReader))
