"""The one place where errors become HTTP statuses.

Input problems raise `ApiError` with their status; library errors are mapped by `status_for`.
Both the fast lane and FastAPI's exception handlers turn them into a response with `error_reply`.
"""

from __future__ import annotations

import logging
from typing import Literal

import orjson

from ..errors import CheckpointError, ModelNotAvailable, PathNotAllowed
from .names import printable

__all__ = ["ApiError", "Reply", "error_reply", "status_for"]

log = logging.getLogger("ckptserve.server")

Style = Literal["detail", "oip"]
Headers = list[tuple[bytes, bytes]]
JSON = b"application/json"
RETRY_AFTER = b"1"


class ApiError(Exception):
    """A request that cannot be answered with a 2xx: its status, message and extra headers."""

    def __init__(self, status: int, detail: str, headers: Headers | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or []


class Reply:
    """A finished response: status, headers (bytes pairs, content-length included) and body."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, body: bytes, headers: Headers) -> None:
        self.status = status
        self.body = body
        self.headers = headers


def status_for(exc: BaseException) -> tuple[int, Headers]:
    """The HTTP status (and headers) for an exception: the table lives here and only here."""
    if isinstance(exc, ApiError):
        return exc.status, exc.headers
    if isinstance(exc, ModelNotAvailable):
        return 503, [(b"retry-after", RETRY_AFTER)]
    if isinstance(exc, PathNotAllowed):
        return 400, []
    if isinstance(exc, FileNotFoundError):
        return 404, []
    if isinstance(exc, CheckpointError):  # pinning a file that fails to load or validate
        return 422, []
    return 500, []


def error_reply(exc: BaseException, style: Style = "detail", extra: Headers | None = None) -> Reply:
    """Render an exception as a JSON error response (`{"detail": ...}`, or `{"error": ...}` for OIP)."""
    status, headers = status_for(exc)
    if status >= 500 and not isinstance(exc, (ApiError, ModelNotAvailable)):
        log.error("request failed", exc_info=exc)
        message = f"internal error: {type(exc).__name__}"
    else:
        message = str(exc) if not isinstance(exc, FileNotFoundError) else _not_found(exc)
        message = printable(message)  # it may name a file
    body = orjson.dumps({"error": message} if style == "oip" else {"detail": message})
    return Reply(status, body, [*headers, *(extra or []), *json_headers(body)])


def _not_found(exc: FileNotFoundError) -> str:
    return f"{exc.filename or exc} does not exist" if exc.filename else str(exc)


def json_headers(body: bytes) -> Headers:
    return [(b"content-type", JSON), (b"content-length", str(len(body)).encode())]
