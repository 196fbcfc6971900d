"""The fast lane: the raw ASGI app in front of FastAPI. It answers the model routes without
FastAPI's routing, dependency injection or pydantic, and enforces the body limit for every route.

It matches the exact paths of the route table's lane routes (`{prefix}/predict`,
`{prefix}/{name}/predict`, `/v2/models/{name}/infer` for each served name) with one dict lookup,
the versioned ones (`/v2/models/{name}/versions/{version}/infer`) by prefix and suffix when that
misses, and calls the same `handle_model_request` the FastAPI routes call, so the behaviour is one
implementation whichever way a request arrives. Everything else goes to the app it wraps.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

from .errors import ApiError, Reply, Style, error_reply
from .predict import handle_model_request
from .state import Runtime

if TYPE_CHECKING:
    from fastapi import FastAPI
    from starlette.datastructures import State

    from .routing import Lane

__all__ = ["FastLane", "read_body"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_NO_BODY = frozenset({"GET", "HEAD", "OPTIONS"})
#: The request headers the lane reads, each to its slot.
_READ = {b"content-length": 0, b"authorization": 1, b"inference-header-content-length": 2,
         b"x-model-version": 3, b"x-session-id": 4}  # fmt: skip


class ClientGone(Exception):
    """The client disconnected before sending its whole body."""


async def read_body(receive: Receive, limit: int, declared: bytes | None) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` (never read to the end)."""
    if declared is not None:
        try:
            if int(declared) > limit:
                raise ApiError(
                    413, f"request body of {int(declared)} bytes is over the {limit}-byte limit"
                )
        except ValueError:
            raise ApiError(400, "Content-Length is not an integer") from None
    message = await receive()
    if message["type"] != "http.request":
        raise ClientGone
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise ApiError(413, f"request body is over the {limit}-byte limit")
        return body
    chunks = [body]
    total = len(body)
    while True:
        if total > limit:
            raise ApiError(413, f"request body is over the {limit}-byte limit")
        message = await receive()
        if message["type"] != "http.request":
            raise ClientGone
        chunk = message.get("body", b"")
        chunks.append(chunk)
        total += len(chunk)
        if not message.get("more_body", False):
            break
    if total > limit:
        raise ApiError(413, f"request body is over the {limit}-byte limit")
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
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        version: bytes | str | None = None
        route = self.routes.get(scope["path"]) if method == "POST" else None
        if route is None and method == "POST" and self.templates:
            route, version = self._versioned(scope["path"])
        if route is None and method in _NO_BODY:
            await self.app(scope, receive, send)
            return
        found: list[bytes | None] = [None, None, None, None, None]  # one slot per _READ entry
        read = _READ.get
        for key, value in scope["headers"]:  # one dict lookup a header, the cheapest scan
            slot = read(key)
            if slot is not None:
                found[slot] = value
        length, authorization, header_length, header_version, session = found
        version = version or header_version  # the path's version wins
        style: Style = "oip" if route is not None and route[0] == "oip" else "detail"
        started = time.perf_counter()
        try:
            body = await read_body(receive, self.limit, length)
        except ClientGone:
            return
        except ApiError as exc:
            reply = error_reply(exc, style, [(b"connection", b"close")])
            if route is not None:
                self.runtime.metrics.observe(route[1] or self.runtime.default or "", reply.status,
                                             time.perf_counter() - started)  # fmt: skip
            await send_reply(send, reply)
            return
        if route is None:
            await self.app(scope, _replay(body, receive), send)
            return
        reply = await handle_model_request(
            self.runtime,
            route[0],
            route[1],
            body,
            scope["query_string"],
            authorization,
            header_length,
            version,
            session,
        )
        await send_reply(send, reply)

    def _versioned(self, path: str) -> tuple[tuple[Lane, str | None] | None, str | None]:
        for prefix, suffix, lane, name in self.templates:
            if path.startswith(prefix) and path.endswith(suffix):
                segment = path[len(prefix) : len(path) - len(suffix)]
                if segment and "/" not in segment:
                    return (lane, name), segment
        return None, None


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
