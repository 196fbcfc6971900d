"""The server's connections (connection.py): a model request is answered on the connection, in
one write, and HTTP behaves as under uvicorn's own cycle: keep-alive, `Connection: close`,
HTTP/1.0, pipelining, `Expect: 100-continue`, body limits, a client gone, the concurrency limit."""

from __future__ import annotations

import functools
import json
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from serverkit import InProcessServer, seeded, state, torch_script, wait_for

from ckptserve import publish
from ckptserve.server import ModelSpec, Settings, create_app
from ckptserve.server.connection import HttpToolsConnection

LIMIT = 4096
BODY = json.dumps(state()).encode()
OIP = json.dumps({"inputs": [{"name": "state", "shape": [1, 4], "datatype": "FP32",
                              "data": [0.1] * 4}]}).encode()  # fmt: skip


def post(path: str, body: bytes, *extra: bytes, version: bytes = b"1.1") -> bytes:
    head = [b"POST " + path.encode() + b" HTTP/" + version, b"host: test",
            b"content-type: application/json", b"content-length: %d" % len(body), *extra]  # fmt: skip
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def read_response(sock: socket.socket, buffer: bytearray) -> tuple[int, dict[bytes, bytes], bytes]:
    """One response from `sock` (content-length framed); what follows stays in `buffer`."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response; got {bytes(buffer)!r}"
        buffer += chunk
    head, _, _ = bytes(buffer).partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = dict(line.lower().split(b": ", 1) for line in lines[1:])
    length = int(headers[b"content-length"])
    start = len(head) + 4
    while len(buffer) < start + length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside a body"
        buffer += chunk
    body = bytes(buffer[start : start + length])
    del buffer[: start + length]
    return status, headers, body


def closed(sock: socket.socket, timeout: float = 10) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


class _Recording:
    """A transport that counts the writes of the connection it is given to."""

    def __init__(self, real: Any, writes: list[bytes]) -> None:
        self._real = real
        self._writes = writes

    def write(self, data: bytes) -> None:
        self._writes.append(bytes(data))
        self._real.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class RecordingConnection(HttpToolsConnection):
    writes: list[bytes] = []

    def connection_made(self, transport: Any) -> None:
        super().connection_made(_Recording(transport, RecordingConnection.writes))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessServer]:
    directory = tmp_path_factory.mktemp("connection") / "models"
    publish(torch_script(seeded(0)), directory)
    settings = Settings(models=[ModelSpec(name="actor", path=str(directory))],
                        max_body_bytes=LIMIT)  # fmt: skip
    live = InProcessServer(create_app(settings),
                           http=functools.partial(RecordingConnection, timeout_headers=0))  # fmt: skip
    try:
        wait_for(lambda: live.client.get("/readyz").status_code == 200, 30, "readiness")
        yield live
    finally:
        live.stop()


@pytest.fixture
def sock(server: InProcessServer) -> Iterator[socket.socket]:
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        yield s


def test_a_model_request_is_answered_in_one_write(server: InProcessServer,
                                                  sock: socket.socket) -> None:  # fmt: skip
    """Status line, uvicorn's date and server headers, the model's headers and the body: one
    write, where uvicorn's cycle writes the head and the body apart."""
    RecordingConnection.writes.clear()
    sock.sendall(post("/rl/predict", BODY))
    status, headers, body = read_response(sock, bytearray())
    assert status == 200, body
    assert len(RecordingConnection.writes) == 1, RecordingConnection.writes
    written = RecordingConnection.writes[0]
    assert written.startswith(b"HTTP/1.1 200 OK\r\n") and written.endswith(body), written
    assert {b"date", b"server", b"content-type", b"x-model-version", b"x-replica",
            b"x-request-id"} <= headers.keys(), headers  # fmt: skip
    assert headers[b"x-model-version"].endswith(json.loads(body)["sha256"][:12].encode()), headers


def test_answers_match_the_asgi_lane(server: InProcessServer, sock: socket.socket) -> None:
    """The same request answered on the connection and through the ASGI app (an HTTP/1.1
    request with `Expect: 100-continue` goes to uvicorn's cycle): the same fields and action."""
    buffer = bytearray()
    sock.sendall(post("/rl/predict", BODY))
    status, _, direct = read_response(sock, buffer)
    sock.sendall(post("/rl/predict", BODY, b"expect: 100-continue")[: -len(BODY)])
    assert sock.recv(64).startswith(b"HTTP/1.1 100 Continue"), "no 100 Continue"
    sock.sendall(BODY)
    status_asgi, _, through_asgi = read_response(sock, buffer)
    assert (status, status_asgi) == (200, 200), (direct, through_asgi)
    a, b = json.loads(direct), json.loads(through_asgi)
    assert a.keys() == b.keys() and a["action"] == b["action"], (a, b)


def test_keep_alive_close_and_http_1_0(server: InProcessServer) -> None:
    """Requests on one kept-alive connection are all answered; `Connection: close` and an
    HTTP/1.0 request are answered, then the server closes the connection."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        buffer = bytearray()
        for _ in range(3):
            assert read_response_after(s, buffer, post("/rl/predict", BODY))[0] == 200
        status, headers, _ = read_response_after(s, buffer, post("/rl/predict", BODY,
                                                                  b"connection: close"))  # fmt: skip
        assert status == 200 and headers[b"connection"] == b"close", headers
        assert closed(s)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        status, headers, _ = read_response_after(s, bytearray(),
                                                 post("/rl/predict", BODY, version=b"1.0"))  # fmt: skip
        assert status == 200 and headers[b"connection"] == b"close", headers
        assert closed(s)


def read_response_after(sock: socket.socket, buffer: bytearray,
                        request: bytes) -> tuple[int, dict[bytes, bytes], bytes]:  # fmt: skip
    sock.sendall(request)
    return read_response(sock, buffer)


def test_pipelined_requests_are_answered_in_order(sock: socket.socket) -> None:
    """Three requests in one send (a predict, a health check, an OIP infer): three answers, in
    the order asked."""
    sock.sendall(post("/rl/predict", BODY) + b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n"
                 + post("/v2/models/actor/infer", OIP))  # fmt: skip
    buffer = bytearray()
    first, second, third = (read_response(sock, buffer) for _ in range(3))
    assert first[0] == 200 and b"action" in first[2], first
    assert second[0] == 200 and b"action" not in second[2], second
    assert third[0] == 200 and b'"outputs"' in third[2], third


def test_versioned_oip_route_and_client_errors_keep_the_connection(sock: socket.socket) -> None:
    """The versioned OIP path is a model route too; a malformed body is a JSON 400 and the
    connection stays open for the next request."""
    buffer = bytearray()
    status, _, body = read_response_after(sock, buffer, post("/rl/predict", b"{not json"))
    assert status == 400 and b"malformed JSON" in body, body
    live = read_response_after(sock, buffer, post("/rl/predict", BODY))[2]
    version = json.loads(live)["version"]
    status, _, body = read_response_after(
        sock, buffer, post(f"/v2/models/actor/versions/{version}/infer", OIP)
    )
    assert status == 200, body
    status, _, body = read_response_after(
        sock, buffer, post("/v2/models/actor/versions/" + "0" * 12 + "/infer", OIP)
    )
    assert status == 409 and b"not resident" in body, body


def test_a_declared_body_over_the_limit_is_refused_before_it_is_sent(sock: socket.socket) -> None:
    """Content-Length over the limit: 413 at once (the body never sent), then the connection
    closes; a Content-Length that is not a number: 400."""
    head = post("/rl/predict", b"x" * (LIMIT + 1))[: -(LIMIT + 1)]
    sock.sendall(head)
    status, headers, body = read_response(sock, bytearray())
    assert status == 413 and headers[b"connection"] == b"close", body
    assert b"over the 4096-byte limit" in body and closed(sock)


def test_a_streamed_body_over_the_limit_is_cut_off(server: InProcessServer) -> None:
    """A chunked body that passes the limit: 413 once it does, and the connection closes."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(b"POST /rl/predict HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n")
        chunk = b"x" * 1024
        buffer = bytearray()
        for _ in range(8):
            try:
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:  # closed by the server: the reply is waiting
                break
        status, _, body = read_response(s, buffer)
        assert status == 413 and b"request body is over the 4096-byte limit" in body, body
        assert closed(s)


def test_a_client_gone_before_the_answer_leaves_the_server_serving(server: InProcessServer) -> None:
    """Headers and half a body, then the client leaves: nothing breaks, the next one is served."""
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
            s.sendall(post("/rl/predict", BODY)[:-5])
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
            s.sendall(post("/rl/predict", BODY))
            s.shutdown(socket.SHUT_WR)  # gone as soon as it asked
    assert server.client.post("/rl/predict", json=state()).status_code == 200


def test_metrics_count_requests_answered_on_the_connection(tmp_path: Path) -> None:
    """Each model request answered on the connection counts once in `/metrics` (a server of
    its own: the shared one may still be answering an earlier test's clients)."""
    directory = tmp_path / "models"
    publish(torch_script(seeded(0)), directory)
    live = InProcessServer(create_app(Settings(models=[ModelSpec(name="actor",
                                                                 path=str(directory))])))  # fmt: skip

    def count() -> float:
        text = live.client.get("/metrics").text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("ckptserve_requests_total{") and 'code="200"' in line)  # fmt: skip

    try:
        wait_for(lambda: live.client.get("/readyz").status_code == 200, 30, "readiness")
        before = count()
        buffer = bytearray()
        with socket.create_connection(("127.0.0.1", live.port), timeout=30) as sock:
            for _ in range(3):
                assert read_response_after(sock, buffer, post("/rl/predict", BODY))[0] == 200
        assert count() - before == 3
    finally:
        live.stop()


def test_past_the_concurrency_limit_uvicorn_answers_503(tmp_path: Path) -> None:
    """`limit_concurrency` applies to model requests as to any: past it, uvicorn's 503."""
    directory = tmp_path / "models"
    publish(torch_script(seeded(0)), directory)
    app = create_app(Settings(models=[ModelSpec(name="actor", path=str(directory))]))
    live = InProcessServer(app, limit_concurrency=1)
    try:
        deadline = time.monotonic() + 30
        while live.runtime.models["actor"].registry.current is None:
            assert time.monotonic() < deadline, "no model loaded"
            time.sleep(0.05)
        with socket.create_connection(("127.0.0.1", live.port), timeout=30) as s:
            status, _, body = read_response_after(s, bytearray(), post("/rl/predict", BODY))
        assert status == 503 and body == b"Service Unavailable", body
    finally:
        live.stop()


def test_the_access_log_names_requests_answered_on_the_connection(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With uvicorn's access log on, a model request is logged as uvicorn logs the others."""
    directory = tmp_path / "models"
    publish(torch_script(seeded(0)), directory)
    app = create_app(Settings(models=[ModelSpec(name="actor", path=str(directory))]))
    caplog.set_level(logging.INFO, logger="uvicorn.access")
    live = InProcessServer(app, access_log=True)
    try:
        wait_for(lambda: live.client.get("/readyz").status_code == 200, 30, "readiness")
        with socket.create_connection(("127.0.0.1", live.port), timeout=30) as s:
            status = read_response_after(s, bytearray(), post("/rl/predict?x=1", BODY,
                                                               version=b"1.0"))[0]  # fmt: skip
        assert status == 200
        wait_for(lambda: any("/rl/predict" in r.getMessage() for r in caplog.records), 10, "log")
        line = next(r.getMessage() for r in caplog.records if "/rl/predict" in r.getMessage())
        assert '"POST /rl/predict?x=1 HTTP/1.0" 200' in line, line
    finally:
        live.stop()
