"""What /metrics exports (Prometheus): :class:`ServiceMetrics` owns the service's one registry, so
the gate (responses by route and status), the renderer (synthesis time, audio seconds), the paced
stream (slow readers cut off) and the reloads (the bundle served) all count into the same place."""

from __future__ import annotations

from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from polyvox.serve.holder import VoiceHolder


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
