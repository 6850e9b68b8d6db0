"""The console (``console/``, React): its built files served at ``/``, the API under ``/v1``.

``/assets/*`` are the build's hashed files (cached for good); any other ``GET`` of a path
outside the API (``/``, ``/transactions/PAY-1``, ``/replays/<job>``, ``/live``) answers the
console's ``index.html``, whose router shows the page: links are deep. Nothing is loaded
from another origin, and every console answer says so in its Content-Security-Policy
(scripts, styles, images, fonts and connections from this server only; no frames, no
plugins), so it works air-gapped and an injected script cannot phone home.

The console is built by ``make setup`` (``npm ci && npm run build`` in ``console/``); where
it is missing, ``/`` says how to build it (503) instead of a blank page.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

CSP = "; ".join((
    "default-src 'none'", "script-src 'self'", "style-src 'self'", "img-src 'self'",
    "font-src 'self'", "connect-src 'self'", "manifest-src 'self'", "base-uri 'none'",
    "form-action 'self'", "frame-ancestors 'none'", "object-src 'none'"))
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}
# paths the console never answers: the API, its docs and the probes
API_PREFIXES = ("/v1/", "/v1", "/docs", "/openapi.json", "/healthz", "/readyz", "/metrics")
_REPO_DIST = Path(__file__).resolve().parent.parent / "console" / "dist"


def console_dir() -> Path:
    """The built console of the source tree (``ApiSettings.console_dir`` overrides it)."""
    return _REPO_DIST


class _Assets(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        if response.status_code == 200:  # names carry a content hash
            response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
        return response


def is_console_path(path: str) -> bool:
    return not any(path == p or path.startswith(p.rstrip("/") + "/") for p in API_PREFIXES)


def install(app: FastAPI, directory: Path | None = None) -> None:
    """Serve the console from ``directory`` (None: ``console_dir()``): ``/assets`` and, for
    every other GET outside the API that no route answers, ``index.html``."""
    dist = directory or console_dir()
    index = dist / "index.html"
    if (dist / "assets").is_dir():
        app.mount("/assets", _Assets(directory=dist / "assets"), name="console-assets")
    not_found = app.router.default

    async def fallback(scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or scope.get("method") not in ("GET", "HEAD") or \
                not is_console_path(path):
            await not_found(scope, receive, send)
            return
        response: Response
        if index.is_file():
            response = FileResponse(index, media_type="text/html",
                                    headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"})
        else:
            response = HTMLResponse(
                "<!doctype html><title>kprobe console</title><p>The console is not built: "
                "run <code>make setup</code> (or <code>npm ci &amp;&amp; npm run build</code> "
                "in console/). The API is at <a href=\"/docs\">/docs</a>.</p>",
                status_code=503, headers=SECURITY_HEADERS)
        await response(scope, receive, send)

    app.router.default = fallback
