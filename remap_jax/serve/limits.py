"""A byte cap on request bodies, enforced while the body streams (ASGI middleware).

A declared `Content-Length` over the cap is refused before any byte is read; a body without one (chunked) is
counted as it arrives and refused the moment it passes the cap, so a client cannot make the server buffer or
spool more than `max_bytes`. Either way the client gets 413 with a JSON error and the server keeps serving.
"""

from __future__ import annotations

import json

__all__ = ["BodyTooLarge", "BodyLimit"]


class BodyTooLarge(Exception):
    """The request body passed the byte cap (raised from `receive` while the handler reads the body)."""

    def __init__(self, limit: int, seen: int | None = None):
        declared = "" if seen is None else f" (at least {seen} bytes)"
        super().__init__(f"request body: larger than the limit of {limit} bytes{declared}; "
                         f"expected an image of at most {limit} bytes")
        self.limit = limit


class BodyLimit:
    """ASGI middleware: HTTP request bodies of more than `max_bytes` end in 413.

    The streamed case raises `BodyTooLarge` out of `receive`; the app's exception handler (installed by
    `remap_jax.serve.app`) answers it with the same JSON error as the declared case.
    """

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = int(max_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared < 0 or declared > self.max_bytes:
                    seen = declared if declared > 0 else None
                    return await _refuse(send, BodyTooLarge(self.max_bytes, seen))
        seen = 0
        limit = self.max_bytes

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit, seen)
            return message

        await self.app(scope, counted_receive, send)


async def _refuse(send, error: BodyTooLarge) -> None:
    body = json.dumps({"error": {"code": "too_large", "message": str(error)}}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
