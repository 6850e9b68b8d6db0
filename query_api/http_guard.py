"""The front door: what every connection and request goes through before any route.

Measured against the server as it was (uvicorn's defaults with httptools): 300 connections
sending a header line a second all stayed open for 20 s and more, idle connections were
never closed, a 200 kB header was accepted, a body was read in full before the token was
looked at, and ``/healthz`` waited behind the request threads. Here:

- ``GuardedH11Protocol`` (``kprobe serve`` runs uvicorn with it): h11 with a header size
  limit (``max_header_bytes``; more is a 400 and the connection closes), a deadline for the
  request line and headers from the moment a connection opens or finishes its previous
  response (``header_timeout_s``; then the connection is closed), and at most
  ``max_connections`` connections (beyond, a new one is closed at once).
- ``FrontDoor`` (ASGI, outermost): ``GET /healthz`` answered right here, on the event loop,
  before anything else; the ``Host`` header checked against the allowed hosts (DNS
  rebinding) on HTTP and WebSocket; with ``--no-auth``, clients other than loopback
  refused; and a request with a body is authenticated *before* its body is read (401 and
  the connection closed), so an anonymous client cannot make the server buffer bodies.
- ``BodyLimitMiddleware`` (``limits.py``) bounds the body's size and the time it takes.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from kprobe.query_api.auth import authenticate, bearer_token
from kprobe.query_api.errors import QueryApiError
from kprobe.query_api.problems import classify, detail_of, problem_response
from kprobe.query_api.settings import ApiSettings, get_settings


def _token_store(connection: HTTPConnection, settings: ApiSettings) -> Any:
    from kprobe.query_api.deps import token_store  # deps imports the routers' objects

    return token_store(connection, settings)

HEALTH = b'{"status":"ok","lake":null}'
_WILDCARD_BINDS = {"", "0.0.0.0", "::", "[::]"}
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_OPEN_PATHS = ("/healthz", "/readyz", "/metrics", "/docs", "/openapi.json")


# -- hosts and origins ----------------------------------------------------------------------
def allowed_hosts(settings: ApiSettings) -> frozenset[str] | None:
    """Host names (no port) the server answers to; None: any."""
    if settings.allowed_hosts:
        if "*" in settings.allowed_hosts:
            return None
        return frozenset(h.lower().strip("[]") for h in settings.allowed_hosts)
    if settings.host in _WILDCARD_BINDS:
        return None
    return frozenset({settings.host.lower().strip("[]"), *_LOOPBACK_NAMES})


def host_name(value: str) -> str:
    """``example.org:8470`` -> ``example.org``; ``[::1]:80`` -> ``::1``."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value


def is_loopback(address: str | None) -> bool:
    if not address:
        return False
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False


def origin_allowed(origin: str | None, settings: ApiSettings) -> bool:
    """A WebSocket ``Origin``: absent (not a browser), a CORS origin, or one of the hosts."""
    if origin is None:
        return True
    if origin in settings.cors_origins:
        return True
    hosts = allowed_hosts(settings)
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    return hosts is None or parts.hostname.lower() in hosts


# -- the ASGI front door --------------------------------------------------------------------
class FrontDoor:
    def __init__(self, app: ASGIApp, settings: ApiSettings) -> None:
        self.app = app
        self.settings = settings
        self.hosts = allowed_hosts(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        headers = _headers(scope)
        refusal = self._oversized(scope)
        if refusal is None and scope["type"] == "http" and path == "/healthz" and \
                scope["method"] in ("GET", "HEAD"):
            await _health(scope, send)
            return
        refusal = refusal or self._refusal(scope, headers)
        if refusal is not None:
            status, slug, title, detail = refusal
            response = problem_response(status, slug, title, detail, instance=path,
                                        headers={"Connection": "close"})
            if scope["type"] == "websocket":
                await send({"type": "websocket.http.response.start", "status": status,
                            "headers": response.raw_headers})
                await send({"type": "websocket.http.response.body", "body": response.body})
                return
            await response(scope, receive, send)
            return
        if scope["type"] == "http" and _has_body(scope["method"], headers) and \
                not path.startswith(_OPEN_PATHS):
            denied = self._unauthenticated(scope, headers)
            if denied is not None:
                await denied(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _oversized(self, scope: Scope) -> tuple[int, str, str, str] | None:
        size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") + \
            sum(len(k) + len(v) + 4 for k, v in scope.get("headers") or [])
        if size > self.settings.max_header_bytes:
            # h11 bounds what it buffers; a header block that arrived in one read is
            # measured here, before any route
            return (431, "headers-too-large", "Request headers too large",
                    f"request line and headers of {size} bytes, over the limit of "
                    f"{self.settings.max_header_bytes}")
        return None

    def _refusal(self, scope: Scope, headers: dict[bytes, bytes]
                 ) -> tuple[int, str, str, str] | None:
        if self.hosts is not None:
            host = host_name(headers.get(b"host", b"").decode("latin-1"))
            if host not in self.hosts:
                return (421, "host-not-allowed", "Host not allowed",
                        f"Host {host!r} is not one this server answers to "
                        "(KPROBE_API_ALLOWED_HOSTS)")
        if self.settings.auth_disabled:
            client = scope.get("client")
            if not is_loopback(client[0] if client else None):
                return (403, "loopback-only", "Forbidden",
                        "this server runs without tokens (--no-auth) and answers loopback "
                        "clients only")
        if scope["type"] == "websocket":
            origin = headers.get(b"origin")
            if not origin_allowed(origin.decode("latin-1") if origin else None,
                                  self.settings):
                return (403, "origin-not-allowed", "Origin not allowed",
                        f"WebSocket Origin {origin.decode('latin-1')!r} is not allowed "
                        "(KPROBE_API_CORS_ORIGINS or KPROBE_API_ALLOWED_HOSTS)"
                        if origin else "WebSocket Origin not allowed")
        return None

    def _unauthenticated(self, scope: Scope, headers: dict[bytes, bytes]) -> Any:
        """A 401 (or 503) response for a request whose token is missing or unknown, before
        its body is read; None to go on. Scopes are the routes' business."""
        if self.settings.auth_disabled:
            return None
        token = bearer_token(headers.get(b"authorization", b"").decode("latin-1") or None)
        try:
            store = _token_store(HTTPConnection(scope), self.settings)
            if store is not None and (token is None or store.lookup(token) is None):
                authenticate(store, token, "read")  # raises the 401 with its challenge
        except QueryApiError as err:
            status, slug, title, extra = classify(err)
            return problem_response(status, slug, title, detail_of(err),
                                    instance=scope.get("path"),
                                    headers={**extra, "Connection": "close"})
        return None


def _headers(scope: Scope) -> dict[bytes, bytes]:
    return {k.lower(): v for k, v in scope.get("headers") or []}


def _has_body(method: str, headers: dict[bytes, bytes]) -> bool:
    if method in ("GET", "HEAD", "OPTIONS"):
        return b"content-length" in headers and headers[b"content-length"] != b"0" or \
            b"transfer-encoding" in headers
    return True


async def _health(scope: Scope, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(HEALTH)).encode())]})
    await send({"type": "http.response.body",
                "body": b"" if scope["method"] == "HEAD" else HEALTH})


# -- the HTTP protocol ----------------------------------------------------------------------
class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline and a connection cap (settings from
    ``KPROBE_API_*``, as the app reads them)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = get_settings()
        self.header_timeout_s = settings.header_timeout_s
        self.max_connections = settings.max_connections
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self.logger.warning("closing a connection: %d open (max_connections)",
                                len(self.connections))
            transport.abort()
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._header_timer is not None and self.conn.their_state is not _IDLE:
            self._header_timer.cancel()  # the request line and headers are in
            self._header_timer = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.conn.their_state is _IDLE and not self.transport.is_closing():
            self.transport.abort()


def _idle_state() -> Any:
    import h11

    return h11.IDLE


_IDLE = _idle_state()


def describe(settings: ApiSettings) -> str:
    hosts = allowed_hosts(settings)
    return json.dumps(sorted(hosts) if hosts is not None else "*")
