"""The demo's child processes: each started in a process group of its own and tied to the runner
(it dies with it), stopped together (SIGTERM to each group, SIGKILL after a deadline), with
SIGTERM to the runner turned into a stop like Ctrl-C."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

__all__ = ["Child", "Stop", "signals_ignored", "signals_stop", "stop_children"]

STOP_DEADLINE = 5.0
_PR_SET_PDEATHSIG = 1  # prctl(2): the signal a child gets when its parent dies


class Stop(Exception):
    """SIGTERM arrived: stop like Ctrl-C."""


def _die_with_parent_hook() -> Callable[[], None] | None:
    """On Linux, a pre-exec hook that has the kernel SIGTERM the child if the runner dies, even
    by SIGKILL (then no `finally` runs): the demo must not leave a trainer or a server behind."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    parent = os.getpid()

    def hook() -> None:  # runs in the child between fork and exec: no allocation-heavy work
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the runner died before prctl took effect
            os._exit(1)

    return hook


@dataclass
class Child:
    name: str
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.log, "wb") as out:
            # A new session: Ctrl-C in the terminal reaches only the runner, which stops the
            # whole group (the child and anything it started) in order.
            self.proc = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, start_new_session=True, preexec_fn=_die_with_parent_hook(),
            )  # fmt: skip

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(f"    {line}" for line in text.splitlines()[-lines:])


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_children(children: Sequence[Child], deadline: float = STOP_DEADLINE) -> None:
    """SIGTERM every child's process group, SIGKILL what is left after `deadline` seconds."""
    started = [c for c in children if c.proc is not None]
    for child in started:
        _signal_group(child.pid, signal.SIGTERM)
    end = time.monotonic() + deadline
    for child in started:
        assert child.proc is not None
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.proc.wait(timeout=max(0.0, end - time.monotonic()))
    for child in started:
        assert child.proc is not None
        if _group_alive(child.pid):
            _signal_group(child.pid, signal.SIGKILL)
        if child.proc.poll() is None:
            child.proc.kill()
        child.proc.wait()
    # Grandchildren that outlived their leader still carry its process group id.
    end = time.monotonic() + deadline
    while any(_group_alive(c.pid) for c in started) and time.monotonic() < end:
        time.sleep(0.05)


@contextlib.contextmanager
def signals_stop() -> Iterator[None]:
    """Inside: SIGTERM raises Stop and Ctrl-C KeyboardInterrupt, also when the shell that
    started us ignored SIGINT (a background job of a script), which Python would inherit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise Stop

    handlers = {signal.SIGTERM: on_term, signal.SIGINT: signal.default_int_handler}
    previous = {s: signal.signal(s, h) for s, h in handlers.items()}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """Inside: a second Ctrl-C (or SIGTERM) cannot interrupt the shutdown half-way."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
