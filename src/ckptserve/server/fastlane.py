"""The fast lane: the raw ASGI app in front of FastAPI. It answers the model routes without
FastAPI's routing, dependency injection or pydantic, and enforces the body limit for every route.

It matches the exact paths of the route table's lane routes (`{prefix}/predict`,
`{prefix}/{name}/predict`, `/v2/models/{name}/infer` for each served name) with one dict lookup,
the versioned ones (`/v2/models/{name}/versions/{version}/infer`) by prefix and suffix when that
misses, and calls the same `handle_model_request` the FastAPI routes call, so the behaviour is one
implementation whichever way a request arrives. Everything else goes to the app it wraps.

Under `ckptserve serve` (uvicorn with httptools) the server's connections answer the model routes
themselves, through `route_for` and `answer` here (connection.py): the lane puts itself in the
lifespan state for them. This ASGI path answers them elsewhere (Ray Serve, h11, any ASGI server).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

from .errors import ApiError, Reply, Style, error_reply
from .predict import handle_model_request
from .state import Runtime

if TYPE_CHECKING:
    from fastapi import FastAPI
    from starlette.datastructures import State

    from .routing import Lane

__all__ = ["CLOSE", "LANE_STATE", "FastLane", "over_limit", "read_body", "read_headers",
           "style_of", "too_big"]  # fmt: skip

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The key under which the lane puts itself in the lifespan state, for the server's connections.
LANE_STATE = "ckptserve.lane"
#: The header of a reply after which the connection closes.
CLOSE = (b"connection", b"close")

_NO_BODY = frozenset({"GET", "HEAD", "OPTIONS"})
#: The request headers the lane reads, each to its slot.
_READ = {b"content-length": 0, b"authorization": 1, b"inference-header-content-length": 2,
         b"x-model-version": 3, b"x-session-id": 4}  # fmt: skip


class ClientGone(Exception):
    """The client disconnected before sending its whole body."""


async def read_body(receive: Receive, limit: int, declared: bytes | None) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` (never read to the end)."""
    refused = too_big(declared, limit)
    if refused is not None:
        raise refused
    message = await receive()
    if message["type"] != "http.request":
        raise ClientGone
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise over_limit(limit)
        return body
    chunks = [body]
    total = len(body)
    while True:
        if total > limit:
            raise over_limit(limit)
        message = await receive()
        if message["type"] != "http.request":
            raise ClientGone
        chunk = message.get("body", b"")
        chunks.append(chunk)
        total += len(chunk)
        if not message.get("more_body", False):
            break
    if total > limit:
        raise over_limit(limit)
    return b"".join(chunks)


async def send_reply(send: Send, reply: Reply) -> None:
    await send({"type": "http.response.start", "status": reply.status, "headers": reply.headers})
    await send({"type": "http.response.body", "body": reply.body})


class FastLane:
    """The ASGI app `create_app` returns: model routes straight to `handle_model_request`, body
    limits for all, every other request to `app` (the FastAPI app).

    Args:
        app: the app behind the lane; `app.state` is this app's state.
        runtime: the server's runtime.
        routes: `path -> (lane, model name or None)`, from `routing.lane_paths`.
        templates: `(prefix, suffix, lane, model name)` of the routes with a version segment,
            from `routing.lane_templates`.
    """

    def __init__(
        self,
        app: FastAPI,
        runtime: Runtime,
        routes: dict[str, tuple[Lane, str | None]],
        templates: Sequence[tuple[str, str, Lane, str]] = (),
    ) -> None:
        self.app = app
        self.runtime = runtime
        self.limit = runtime.settings.max_body_bytes
        self.routes = routes
        self.templates = tuple(templates)

    @property
    def state(self) -> State:
        """The wrapped app's state (`state.runtime` is the runtime)."""
        return self.app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http":
            if kind == "lifespan" and "state" in scope:
                scope["state"][LANE_STATE] = self  # for the server's connections (connection.py)
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        found = self.route_for(scope["path"]) if method == "POST" else None
        if found is None and method in _NO_BODY:
            await self.app(scope, receive, send)
            return
        route, version = found or (None, None)
        headers = read_headers(scope["headers"])
        started = time.perf_counter()
        try:
            body = await read_body(receive, self.limit, headers[0])
        except ClientGone:
            return
        except ApiError as exc:
            await send_reply(send, self.refuse(route, exc, started))
            return
        if route is None:
            await self.app(scope, _replay(body, receive), send)
            return
        reply = await self.answer(route, version, body, scope["query_string"], headers)
        await send_reply(send, reply)

    def route_for(self, path: str) -> tuple[tuple[Lane, str | None], str | None] | None:
        """The model route at `path` (for a POST) and the version its path names, or None."""
        route = self.routes.get(path)
        if route is not None:
            return route, None
        for prefix, suffix, lane, name in self.templates:
            if path.startswith(prefix) and path.endswith(suffix):
                segment = path[len(prefix) : len(path) - len(suffix)]
                if segment and "/" not in segment:
                    return (lane, name), segment
        return None

    async def answer(self, route: tuple[Lane, str | None], version: str | None, body: bytes,
                     query: bytes, headers: list[bytes | None]) -> Reply:  # fmt: skip
        """Answer a model request: `headers` from `read_headers`, `version` from the path."""
        _, authorization, header_length, header_version, session = headers
        return await handle_model_request(
            self.runtime,
            route[0],
            route[1],
            body,
            query,
            authorization,
            header_length,
            version or header_version,  # the path's version wins
            session,
        )

    def refuse(self, route: tuple[Lane, str | None] | None, exc: ApiError,
               started: float) -> Reply:  # fmt: skip
        """The reply to a body that is refused before it is read (too big, a bad length): it
        closes the connection, and counts in the model's metrics."""
        reply = error_reply(exc, style_of(route), [CLOSE])
        if route is not None:
            self.runtime.metrics.observe(route[1] or self.runtime.default or "", reply.status,
                                         time.perf_counter() - started)  # fmt: skip
        return reply


def style_of(route: tuple[Lane, str | None] | None) -> Style:
    """How a route's errors are written: OIP's `{"error": ...}`, else `{"detail": ...}`."""
    return "oip" if route is not None and route[0] == "oip" else "detail"


def read_headers(headers: Iterable[tuple[bytes, bytes]]) -> list[bytes | None]:
    """The request headers a model route reads, by slot: content-length, authorization,
    inference-header-content-length, x-model-version, x-session-id (lower-case names, as ASGI
    servers give them)."""
    found: list[bytes | None] = [None, None, None, None, None]
    read = _READ.get
    for key, value in headers:  # one dict lookup a header, the cheapest scan
        slot = read(key)
        if slot is not None:
            found[slot] = value
    return found


def over_limit(limit: int) -> ApiError:
    """The 413 for a body that passed `limit` while it was read."""
    return ApiError(413, f"request body is over the {limit}-byte limit")


def too_big(declared: bytes | None, limit: int) -> ApiError | None:
    """Why a body of the declared Content-Length is refused before it is read, or None."""
    if declared is None:
        return None
    try:
        size = int(declared)
    except ValueError:
        return ApiError(400, "Content-Length is not an integer")
    if size > limit:
        return ApiError(413, f"request body of {size} bytes is over the {limit}-byte limit")
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the already-read body to the app, then defers to the client."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
