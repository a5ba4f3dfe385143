"""Errors as JSON: every 4xx names the problem; a real bug is logged and answered with a 500
that carries no traceback.

Body shape, for every error: ``{"error": {"kind": …, "message": …, …details}}``.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("ragvid.service")


class ServiceError(Exception):
    """A request the service refuses: HTTP ``status``, a short ``kind`` (the errors metric's
    label) and a message that says what was wrong and what to send instead."""

    def __init__(self, status: int, kind: str, message: str, **detail: Any):
        super().__init__(message)
        self.status, self.kind, self.message, self.detail = status, kind, message, detail

    def body(self) -> dict[str, Any]:
        return {"error": {"kind": self.kind, "message": self.message, **self.detail}}


def unknown_index(name: str, available: list[str]) -> ServiceError:
    return ServiceError(
        404,
        "unknown_index",
        f"no index '{name}' is served here. Available: {available or 'none'}",
        available=available,
    )


def _where(loc: tuple) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) or "body"


def _validation_body(exc: RequestValidationError) -> dict[str, Any]:
    errors = []
    for e in exc.errors():
        if e.get("type") == "json_invalid":
            ctx = e.get("ctx") or {}
            return {
                "error": {
                    "kind": "malformed_json",
                    "message": "the request body is not valid JSON "
                    f"({ctx.get('error', 'parse error')}) — send a JSON object",
                }
            }
        # the offending input is left out: it may be a megabyte of vector
        errors.append({"field": _where(tuple(e.get("loc", ()))), "problem": e.get("msg", "")})
    text = "; ".join(f"{e['field']}: {e['problem']}" for e in errors[:5])
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    return {
        "error": {
            "kind": "validation",
            "message": f"invalid request: {text}{more}",
            "fields": errors[:50],
        }
    }


def install(app: FastAPI, count_error) -> None:
    """Exception handlers on ``app``; ``count_error(kind)`` feeds the errors metric."""

    @app.exception_handler(ServiceError)
    async def _service(request: Request, exc: ServiceError):
        count_error(exc.kind)
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        body = _validation_body(exc)
        count_error(body["error"]["kind"])
        return JSONResponse(body, status_code=422 if body["error"]["kind"] == "validation" else 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http")
        count_error(kind)
        message = exc.detail if isinstance(exc.detail, str) else "request refused"
        if exc.status_code == 404:
            message = f"no such endpoint: {request.method} {request.url.path} (see GET /api)"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        return JSONResponse(
            {"error": {"kind": kind, "message": message}},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        ref = uuid.uuid4().hex[:12]
        log.exception("internal error %s on %s %s", ref, request.method, request.url.path)
        count_error("internal")
        return JSONResponse(
            {
                "error": {
                    "kind": "internal",
                    "message": f"internal error (reference {ref}; the server log has the details)",
                    "reference": ref,
                }
            },
            status_code=500,
        )
