"""Request body limits: a body over ``max_request_bytes`` is refused with 413 problem+json
before any route sees it, whether it announced its length or streams it chunked; one that
has not arrived in full within ``body_timeout_s`` gets 408 and the connection is closed
(measured before: a body trickled at 2 bytes/s kept its connection open indefinitely)."""

from __future__ import annotations

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kprobe.query_api.problems import problem_response


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float = 30.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(scope, receive, send)
            return
        # Read the (bounded) body up front, then hand it to the app as one message.
        chunks: list[bytes] = []
        size = 0
        with anyio.move_on_after(self.timeout_s) as late:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.max_bytes:
                    await self._refuse(scope, receive, send)
                    return
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
        if late.cancelled_caught:
            response = problem_response(
                408, "request-timeout", "Request timeout",
                f"the request body did not arrive within {self.timeout_s:g} s",
                instance=scope.get("path"), headers={"Connection": "close"})
            await response(scope, receive, send)
            return
        body = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem_response(
            413, "payload-too-large", "Request too large",
            f"request body over the limit of {self.max_bytes} bytes",
            instance=scope.get("path"), headers={"Connection": "close"})
        await response(scope, receive, send)
