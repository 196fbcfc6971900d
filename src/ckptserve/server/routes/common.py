"""What the route modules share: the runtime of a request and a Reply as a Response."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ..errors import Reply
from ..state import Runtime

__all__ = ["runtime_of", "to_response"]


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def to_response(reply: Reply) -> Response:
    response = Response(reply.body, status_code=reply.status)
    response.raw_headers = list(reply.headers)
    return response
