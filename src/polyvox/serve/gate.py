"""What a request must pass before any route's code runs: the names a service without a token
answers to (:func:`allowed_hosts`), the bearer token and the declared body size, checked before
FastAPI reads the body, and the body's size and pace as it arrives (:class:`Gate`, an ASGI middleware
that also counts every response by route); and the pace of the request head (:func:`bounded_protocol`,
uvicorn's h11 with the deadlines it lacks). A client that sends too much, too slowly or from the wrong
place is refused here."""

from __future__ import annotations

import asyncio
import hmac

from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse, Response
from starlette.routing import Match

from polyvox.config import ServeSection
from polyvox.serve.metrics import ServiceMetrics

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


def route_label(app: FastAPI, scope) -> str:
    """The route template a request matches (``synthesize``), never the raw path: a label per
    route, however many paths clients make up."""
    for route in app.router.routes:
        if route.matches(scope)[0] == Match.FULL:
            return getattr(route, "path", "").strip("/") or "root"
    return "unmatched"


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
