"""A real S3-compatible server on loopback for the object-storage tests: moto's server app on
127.0.0.1 and a free port, in a thread, behind a middleware that records every request it
answers (method, key, status), so a test can say what reached the store and what did not."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import BaseWSGIServer, make_server


@dataclass(frozen=True, slots=True)
class Seen:
    """One request the store answered."""

    method: str
    path: str  # /bucket/key
    status: int
    if_none_match: str | None


class Store:
    """moto's S3 on 127.0.0.1: `start()` (again after `stop()`, on the same port: its objects
    live in this process and survive), `seen` lists what it answered."""

    def __init__(self) -> None:
        self.app = DomainDispatcherApplication(create_backend_app)
        self.seen: list[Seen] = []
        self.port = 0
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        method, path = environ["REQUEST_METHOD"], unquote(environ.get("PATH_INFO", ""))
        etag = environ.get("HTTP_IF_NONE_MATCH")

        def start(status: str, headers: Any, *rest: Any) -> Any:
            self.seen.append(Seen(method, path, int(status.split()[0]), etag))
            return start_response(status, headers, *rest)

        return self.app(environ, start)  # type: ignore[no-any-return]

    def start(self) -> None:
        self._server = make_server(
            "127.0.0.1", self.port, self._wsgi, threaded=True, request_handler=MotoRequestHandler
        )
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(10)

    def requests(self, method: str, path: str) -> list[Seen]:
        """What the store answered for `method` on `/bucket/key` so far."""
        return [s for s in self.seen if s.method == method and s.path == path]
