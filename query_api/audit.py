"""One structured audit line per SQL, Cypher and replay request.

``AuditMiddleware`` writes, when such a request ends (whatever its outcome, refusals and
401s included), one JSON line on the ``kprobe.audit`` logger::

    kprobe audit {"ts": "2026-12-06T07:40:01.123Z", "kind": "sql", "principal": "oncall",
                  "client": "10.0.0.7", "status": 200, "statement_sha256": "9f86d081884c7d65",
                  "rows": 3, "truncated": false, "duration_ms": 12.4}

The statement itself is never logged, only the first 16 hex digits of its SHA-256, so the
log can be kept where statements (account ids in a WHERE) may not; whoever holds a
statement can find its runs. Routes add what only they know with ``note()`` (the parsed
statement, rows); without a note the hash is that of the request body. ``principal`` is the
token's name ("-" when the token was missing or unknown).

Lines go to standard error, or appended to ``KPROBE_API_AUDIT_LOG``, whatever the log level.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOGGER = "kprobe.audit"
AUDITED = {("POST", "/v1/sql"): "sql", ("POST", "/v1/graph/cypher"): "cypher",
           ("POST", "/v1/replays"): "replay"}
_MARK = "_kprobe_audit_handler"

log = logging.getLogger(LOGGER)


def statement_hash(text: str | bytes) -> str:
    data = text.encode("utf-8") if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()[:16]


def note(request: HTTPConnection, *, statement: str | None = None, rows: int | None = None,
         **extra: Any) -> None:
    """Add to this request's audit line: the statement (hashed here), rows answered, and
    other fields (``truncated``, ``job``...)."""
    fields: dict[str, Any] = request.scope.setdefault("state", {}).setdefault("audit", {})
    if statement is not None:
        fields["statement_sha256"] = statement_hash(statement)
    if rows is not None:
        fields["rows"] = rows
    fields.update(extra)


def configure(path: Path | None) -> None:
    """Send audit lines to ``path`` (appended) or standard error; idempotent."""
    for existing in list(log.handlers):
        if getattr(existing, _MARK, None) == str(path):
            return
        if getattr(existing, _MARK, None) is not None:
            log.removeHandler(existing)
            existing.close()
    handler: logging.Handler = (logging.FileHandler(path, encoding="utf-8") if path
                                else logging.StreamHandler(sys.stderr))
    handler.setFormatter(logging.Formatter("kprobe audit %(message)s"))
    setattr(handler, _MARK, str(path))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def write(fields: dict[str, Any]) -> None:
    log.info("%s", json.dumps(fields, separators=(", ", ": "), default=str))


class AuditMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = AUDITED.get((scope.get("method", ""), scope.get("path", ""))) \
            if scope["type"] == "http" else None
        if kind is None:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        body = hashlib.sha256()
        read = False

        async def hashing_receive() -> Message:
            nonlocal read
            message = await receive()
            if message["type"] == "http.request":
                body.update(message.get("body", b""))
                read = True
            return message

        async def status_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, hashing_receive, status_send)
        finally:
            state = scope.get("state") or {}
            noted = dict(state.get("audit") or {})
            client = scope.get("client")
            fields = {
                "ts": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
                .replace("+00:00", "Z"),
                "kind": kind, "principal": state.get("principal", "-"),
                "client": client[0] if client else None, "status": status,
                "statement_sha256": noted.pop("statement_sha256",
                                              body.hexdigest()[:16] if read else None),
                "rows": noted.pop("rows", None), **noted,
                "duration_ms": round((time.perf_counter() - started) * 1000, 1)}
            write(fields)
