"""Request bodies over ``max_bytes`` are refused with a 413 JSON error — by the declared
``Content-Length`` before anything is read, and by counting for chunked bodies."""

from __future__ import annotations

from collections.abc import Callable

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ragvid.service.errors import ServiceError


def too_large(limit: int, size: int | None = None) -> ServiceError:
    got = f" ({size} bytes)" if size is not None else ""
    return ServiceError(
        413,
        "body_too_large",
        f"request body too large{got}: at most {limit} bytes are accepted (--max-body-bytes)",
        max_bytes=limit,
    )


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int, on_error: Callable[[str], None]):
        self.app, self.max_bytes, self.on_error = app, max_bytes, on_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            err = too_large(self.max_bytes, int(declared))
            self.on_error(err.kind)
            await JSONResponse(err.body(), status_code=413)(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise too_large(self.max_bytes)  # answered by the ServiceError handler
            return message

        await self.app(scope, counted, send)
