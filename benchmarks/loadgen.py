"""A light HTTP/1.1 load generator that records every response: a closed loop of N keep-alive
connections (like wrk), each sending the next request when the previous response is complete.

    python benchmarks/loadgen.py URL BODY.json --connections 64 --duration 30 --out rows.json
        [--stop-file PATH]   (stop early, within ~20 ms, once PATH exists)

Writes `{"rows": [[sent_ns, received_ns, status, "X-Model-Version"], ...]}` (CLOCK_MONOTONIC, the
same clock `time.monotonic_ns()` reads in every process). Used where per-request timing matters
(latency over time around checkpoint swaps, freshness after a publish); wrk gives the headline
numbers elsewhere. Run it pinned to the load CPU (`taskset -c 0`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from typing import Any
from urllib.parse import urlsplit

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None  # type: ignore[assignment]

_now = time.monotonic_ns


class Connection(asyncio.Protocol):
    def __init__(
        self, request: bytes, rows: list[tuple[int, int, int, str]], until: list[int]
    ) -> None:
        self.request = request
        self.rows = rows
        self.until = until
        self.buffer = b""
        self.sent = 0
        self.closed = asyncio.get_running_loop().create_future()
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        self.sent = _now()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1").split("\r\n")
            length, tag = 0, ""
            for line in head[1:]:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key == "content-length":
                    length = int(value)
                elif key == "x-model-version":
                    tag = value.strip()
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            now = _now()
            self.rows.append((self.sent, now, int(head[0].split()[1]), tag))
            if now < self.until[0]:
                self._send()
            elif self.transport is not None:
                self.transport.close()
                return

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def _watch_stop_file(path: str, until: list[int]) -> None:
    while _now() < until[0]:
        if os.path.exists(path):
            until[0] = _now()
            return
        await asyncio.sleep(0.02)


async def run(
    url: str, body: bytes, connections: int, duration: float, stop_file: str | None = None
) -> list[tuple[int, int, int, str]]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = (
        f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    rows: list[tuple[int, int, int, str]] = []
    until = [_now() + int(duration * 1e9)]  # shared by the connections; a stop file moves it
    loop = asyncio.get_running_loop()
    conns = []
    for _ in range(connections):
        _, proto = await loop.create_connection(
            lambda: Connection(request, rows, until), host, port
        )
        conns.append(proto)
    watcher = asyncio.ensure_future(_watch_stop_file(stop_file, until)) if stop_file else None
    await asyncio.wait_for(asyncio.gather(*(c.closed for c in conns)), duration + 30)
    if watcher is not None:
        watcher.cancel()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("url")
    p.add_argument("body")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--out", required=True)
    p.add_argument("--stop-file", help="stop early once this file exists")
    args = p.parse_args()
    body = open(args.body, "rb").read()  # noqa: SIM115
    main_ = run(args.url, body, args.connections, args.duration, args.stop_file)
    rows = uvloop.run(main_) if uvloop is not None else asyncio.run(main_)
    with open(args.out, "w") as f:
        json.dump({"rows": rows}, f)


if __name__ == "__main__":
    main()
