"""Whether the server can listen where it is asked to: checked before anything starts, so a taken
port is one line for `ckptserve serve` and `ckptserve demo`, not a traceback after models load."""

from __future__ import annotations

import errno
import socket

__all__ = ["port_problem"]


def port_problem(host: str, port: int) -> str | None:
    """Why a server could not listen on host:port, or None: `serve` and `demo` ask before they
    start anything, so a taken port is one line, not a traceback after the models load."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return f"cannot resolve host {host!r}: {exc.strerror}"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            where = f"cannot listen on {host}:{port}"
            if exc.errno == errno.EADDRINUSE:
                return f"{where}: address already in use (pick another with --port)"
            return f"{where}: {exc.strerror}"
    return None
