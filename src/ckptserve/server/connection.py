"""The server's HTTP connections: uvicorn's httptools protocol with a deadline for a request's
headers, answering the model routes on the connection itself.

uvicorn has no deadline for receiving headers: its keep-alive timer restarts on every byte and is
not armed before a first request, and `limit_concurrency` acts only once headers are parsed, so
clients that trickle header bytes hold their descriptors forever. The protocol class here closes
a connection whose request headers are not complete `timeout_headers` seconds after it opened (or
after the first byte of a later request on it); uvicorn accepts a protocol class for that.

A model request (a POST to a route of the fast lane, which puts itself in the lifespan state)
costs about as much in uvicorn's ASGI cycle (the scope, the cycle and its event, the ASGI
messages, the check of every response header, two writes) as in ckptserve: the connection answers
it through the lane's `route_for` and `answer` and writes the reply in one write. uvicorn keeps
what it does for every request: parsing, keep-alive and its timer, `limit_concurrency`, pipelined
requests (they wait for the answer before), graceful shutdown, a client gone meanwhile. What is
rare goes through uvicorn's cycle to the same lane: `Expect: 100-continue`, an upgrade, a
percent-encoded path, a request pipelined behind another, one past the concurrency limit.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import http
import time
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .errors import Reply, error_reply
from .fastlane import CLOSE, LANE_STATE, FastLane, over_limit, read_headers, style_of, too_big

__all__ = ["HttpToolsConnection", "http_protocol"]


class _HeaderDeadline:
    """Mixed in before uvicorn's HTTP protocol class. Cheap on the hot path: a request whose
    headers arrive in one read costs one attribute comparison. No deadline when it is 0."""

    # From the protocol class this is mixed into.
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    cycle: Any

    def __init__(self, *args: Any, timeout_headers: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timeout_headers = timeout_headers
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm()

    def data_received(self, data: bytes) -> None:
        before = self.cycle
        super().data_received(data)  # type: ignore[misc]
        if self.cycle is not before:  # a request's headers are complete
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
        elif self._deadline is None and (before is None or before.response_complete):
            self._arm()  # the first bytes of the next request on a kept-alive connection

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm(self) -> None:
        if self._timeout_headers > 0:
            self._deadline = self.loop.call_later(self._timeout_headers, self._headers_late)

    def _headers_late(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()


class _NoEvent:
    """What uvicorn sets when a connection is lost: an answered request waits on nothing."""

    def set(self) -> None:
        pass


class _Answered:
    """A model request answered on its connection, where uvicorn keeps its RequestResponseCycle:
    the fields of a cycle that uvicorn's protocol reads and sets (`response_complete`,
    `keep_alive`, `disconnected`, `message_event`), and the request."""

    __slots__ = ("body", "disconnected", "headers", "http_version", "keep_alive", "query",
                 "response_complete", "route", "started", "version")  # fmt: skip
    message_event = _NoEvent()

    def __init__(self, route: Any, version: str | None, query: bytes,
                 headers: list[bytes | None], http_version: str) -> None:  # fmt: skip
        self.route = route
        self.version = version
        self.query = query
        self.headers = headers
        self.http_version = http_version
        self.keep_alive = False  # set by the connection (uvicorn's shutdown clears it too)
        self.body = bytearray()
        self.disconnected = False
        self.response_complete = False
        self.started = time.perf_counter()


@functools.cache
def _status_line(status: int) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {status} {phrase}\r\n".encode()


class HttpToolsConnection(_HeaderDeadline, HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for a request's headers, answering the
    model routes on the connection (the module docstring says what stays with uvicorn)."""

    _lane: FastLane | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        lane = self.app_state.get(LANE_STATE)
        self._lane = lane if isinstance(lane, FastLane) else None

    def on_headers_complete(self) -> None:
        lane = self._lane
        previous = self.cycle
        limit = self.limit_concurrency
        if (
            lane is None
            or self.parser.get_method() != b"POST"
            or self.expect_100_continue
            or self.parser.should_upgrade()
            or (previous is not None and not previous.response_complete)
            or (limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit))
        ):
            super().on_headers_complete()
            return
        url = httptools.parse_url(self.url)
        path = url.path.decode("ascii")
        found = lane.route_for(self.root_path + path) if "%" not in path else None
        if found is None:
            super().on_headers_complete()
            return
        headers = read_headers(self.headers)
        version = self.parser.get_http_version()
        cycle = _Answered(found[0], found[1], url.query or b"", headers, version)
        cycle.keep_alive = version != "1.0" and self.parser.should_keep_alive()  # as uvicorn
        self.cycle = cycle
        refused = too_big(headers[0], lane.limit)
        if refused is not None:
            self._reply(cycle, lane.refuse(cycle.route, refused, cycle.started))

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if type(cycle) is not _Answered:
            super().on_body(body)
            return
        if cycle.response_complete:  # refused: the rest of its body is dropped
            return
        cycle.body += body
        lane = self._lane
        assert lane is not None
        if len(cycle.body) > lane.limit:
            self._reply(cycle, lane.refuse(cycle.route, over_limit(lane.limit), cycle.started))

    def on_message_complete(self) -> None:
        cycle = self.cycle
        if type(cycle) is not _Answered:
            super().on_message_complete()
            return
        if cycle.response_complete:
            return
        answering = self._answer(cycle)
        if getattr(self.config, "reset_contextvars", False):  # as uvicorn starts its tasks
            task = self.loop.create_task(answering, context=contextvars.Context())
        else:
            task = self.loop.create_task(answering)
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    async def _answer(self, cycle: _Answered) -> None:
        lane = self._lane
        assert lane is not None
        try:
            reply = await lane.answer(cycle.route, cycle.version, bytes(cycle.body), cycle.query,
                                      cycle.headers)  # fmt: skip
        except Exception as exc:  # handle_model_request answers every error: a bug if here
            reply = error_reply(exc, style_of(cycle.route), [CLOSE])
        self._reply(cycle, reply)

    def _reply(self, cycle: _Answered, reply: Reply) -> None:
        """Write `reply` in one write (uvicorn's default headers first), then do what uvicorn
        does after a response: close, or start a pipelined request or the keep-alive timer."""
        if cycle.disconnected:
            return
        closing = CLOSE in reply.headers
        keep_alive = cycle.keep_alive and not closing
        parts = [_status_line(reply.status)]
        for name, value in (*self.server_state.default_headers, *reply.headers):
            parts += (name, b": ", value, b"\r\n")
        if not keep_alive and not closing:
            parts.append(b"connection: close\r\n")
        parts += (b"\r\n", reply.body)
        self.transport.write(b"".join(parts))
        cycle.response_complete = True
        if self.access_log:
            client = "%s:%d - " % self.client if self.client else ""  # noqa: UP031 (uvicorn's form)
            path = self.url.decode("ascii", "replace")
            self.access_logger.info('%s"POST %s HTTP/%s" %d', client, path, cycle.http_version,
                                    reply.status)  # fmt: skip
        if not keep_alive:
            self.transport.close()
        self.on_response_complete()


def http_protocol(timeout_headers: float) -> Any:
    """The `http=` argument for uvicorn: the httptools protocol (uvicorn[standard] has it) that
    answers model routes on the connection, with a header deadline (none when `timeout_headers`
    is 0). A partial of a module-level class, so it
    pickles into `--workers` processes."""
    return functools.partial(HttpToolsConnection, timeout_headers=timeout_headers)
