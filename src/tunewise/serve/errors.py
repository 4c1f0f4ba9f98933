"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with the matching HTTP status.

Every failure a client can see goes through `APIError` or one of the handlers installed by `install_handlers`,
so the official `openai` client raises its usual classes (`AuthenticationError` for 401, `NotFoundError` for
404, `RateLimitError` for 429, `BadRequestError` for 400, ...) and a client never has to parse a FastAPI
`{"detail": ...}` body.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

# OpenAI's `type` for each status it documents; anything else is a server error.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "timeout_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    504: "timeout_error",
}


class APIError(Exception):
    """An error the API reports to its client (status code, OpenAI error object, extra headers)."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(
    message: str, type: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """The OpenAI error object.

    >>> error_body("no such model", param="model", code="model_not_found")["error"]["code"]
    'model_not_found'
    """
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _param(loc: tuple | list) -> str | None:
    """`("body", "messages", 0, "role")` -> `messages[0].role`; the request part ("body", "query") is dropped.

    >>> _param(("body", "messages", 0, "role"))
    'messages[0].role'
    >>> _param(("body",)) is None
    True
    """
    parts = list(loc[1:]) if loc and loc[0] in ("body", "query", "path", "header") else list(loc)
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or None


def install_handlers(app: Any) -> None:
    """Render APIError, request-validation errors, HTTP errors (unknown route, wrong method) and any unexpected
    exception in OpenAI's shape. A bug answers 500 and is logged with its traceback; the server keeps running."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    async def api_error(request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    async def validation_error(request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = first.get("loc", ())
        param = _param(loc)
        if first.get("type") == "json_invalid":
            message = (
                f"the request body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}"
            )
            param = None
        elif loc == ("body",) and first.get("type") == "missing":
            message = "the request needs a JSON body"
        else:
            message = "; ".join(f"{_param(e.get('loc', ())) or 'body'}: {e.get('msg')}" for e in errors[:5])
        return JSONResponse(error_body(message, "invalid_request_error", param), status_code=400)

    async def http_error(request, exc: StarletteHTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"unknown URL {request.method} {request.url.path}"
        code = "request_too_large" if exc.status_code == 413 else None
        return JSONResponse(
            error_body(detail, _TYPES.get(exc.status_code, "api_error"), code=code),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    async def unexpected(request, exc: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse(
            error_body(f"internal server error ({type(exc).__name__}); see the server log", "server_error"),
            status_code=500,
        )

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)


class BodySizeLimit:
    """ASGI middleware: a request body over the limit is answered 413 before the app reads it (checked on
    Content-Length, and counted for chunked bodies that have none).

    `max_bytes` holds for every path except those starting with a prefix in `overrides` (a file upload may be
    larger than a chat request).
    """

    def __init__(self, app: Any, max_bytes: int, overrides: dict[str, int] | None = None):
        self.app = app
        self.max_bytes = max_bytes
        self.overrides = overrides or {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        limit = next((v for k, v in self.overrides.items() if path.startswith(k)), self.max_bytes)
        message = f"request body too large (limit {limit} bytes)"
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return await _send_413(send, message)
        seen = 0

        async def counted_receive():
            # A chunked body has no Content-Length: count it. FastAPI lets an HTTPException raised while it
            # reads the body through (anything else would become a 400), and `install_handlers` renders it.
            nonlocal seen
            event = await receive()
            if event["type"] == "http.request":
                seen += len(event.get("body", b""))
                if seen > limit:
                    from fastapi import HTTPException

                    raise HTTPException(413, detail=message)
            return event

        await self.app(scope, counted_receive, send)


async def _send_413(send: Any, message: str) -> None:
    import json

    body = json.dumps(error_body(message, "invalid_request_error", code="request_too_large")).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})
