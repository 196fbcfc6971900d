"""What the route modules share: the runtime of a request, a Reply as a Response, and JSON that
any file name can go into."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import Reply
from ..names import text_safe
from ..state import Runtime

__all__ = ["JSONText", "runtime_of", "to_response"]


class JSONText(JSONResponse):
    """A JSON response whose strings may hold any file name: one that is not UTF-8 is written
    with `\\xNN` for its odd bytes instead of failing the response."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return super().render(text_safe(content))


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def to_response(reply: Reply) -> Response:
    response = Response(reply.body, status_code=reply.status)
    response.raw_headers = list(reply.headers)
    return response
